#!/usr/bin/env python3
"""The steps of tools/gpu_check.sh, after it has set up the Python path: every
CUDA code path of the recipe on a tiny prepared corpus, in one process where
it can (decoding, streaming, export, pretrained.py run in-process; training
runs under torchrun and the loss benchmark in its own subprocesses).

Usage (from tools/gpu_check.sh; the current directory is the prepared corpus):

  tools/gpu_check.py --device cuda --exp-dir exp/gpu_check
  tools/gpu_check.py --device cpu --guard true   # the CPU dry-run, under the
                                                  # device-mismatch guard

Steps, each timed and reported ok/FAIL in a final table; a failed step does
not stop the others:
  loss backend X   each RNN-T loss backend of shared/rnnt_loss.py (fast_rnnt,
                   triton, torch) against the pure-PyTorch reference on the
                   device: simple, pruned and full losses and their gradients
  learn DTYPE      float32, then float16 with its GradScaler: the recipe's model
                   trained in-process by train.py's own step on a few fixed
                   batches; every parameter must change, every gradient stay
                   finite, the grad scale stay >= 1, and the loss on those batches
                   fall below --learn-max-ratio of its start (overfitting them)
  train            torchrun --standalone --nproc-per-node 1 train.py --use-fp16 1,
                   past the averaging period; prints the training throughput
  decode           decode.py, every method, simulated streaming, averaged model
  streaming        streaming_decode.py, real chunk-by-chunk streaming, its methods
  export           export.py: pretrained.pt, cpu_jit.pt, ONNX (+ int8)
  pretrained       pretrained.py on one test recording, every method it offers
  loss             benchmarks/loss_benchmark.py: pruned path vs fast_rnnt's full loss
  pytest           the tests marked cuda (skipped without a GPU)
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from shared.utils import HelpFormatter, str2bool  # noqa: E402
from tools.gpu_check_steps import (  # noqa: E402
    Report,
    compare_loss_backend,
    cuda_tests,
    decode,
    export,
    learn,
    loss_benchmark,
    pretrained,
    streaming,
    train,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda: the GPU check; cpu: the dry-run of the same steps.")
    parser.add_argument("--exp-dir", type=Path, default=Path("exp/gpu_check"),
                        help="Where the run writes (relative to the prepared corpus).")
    parser.add_argument("--lang-dir", type=Path, default=Path("data/lang_bpe_100"),
                        help="BPE model and LG graph of the prepared corpus.")
    parser.add_argument("--num-epochs", type=int, default=2,
                        help="Training epochs (decoding averages epochs 1..N).")
    parser.add_argument("--max-duration", type=float, default=20.0,
                        help="Seconds of audio per training batch.")
    parser.add_argument("--average-period", type=int, default=4,
                        help="train.py --average-period (the run must get past it).")
    parser.add_argument("--guard", type=str2bool, default=False,
                        help="Run decoding, streaming and pretrained.py under the "
                        "device-mismatch guard (shared/device_guard.py; --device cpu only).")
    parser.add_argument("--loss-benchmark-args", default="",
                        help="Extra options of benchmarks/loss_benchmark.py.")
    parser.add_argument("--learn-steps", type=int, default=30,
                        help="Optimizer steps of each learn step, over its fixed batches.")
    parser.add_argument("--learn-batches", type=int, default=2,
                        help="Number of fixed training batches the learn steps overfit.")
    parser.add_argument("--learn-batch-seconds", type=float, default=30.0,
                        help="Seconds of audio per fixed batch (at least; float16's "
                        "overflows showed from about 10 s per batch).")
    parser.add_argument("--learn-max-ratio", type=float, default=0.7,
                        help="The learn steps pass if the loss on the fixed batches ends "
                        "below this fraction of where it started.")
    parser.add_argument("--learn-lr", type=float, default=0.003,
                        help="train.py --initial-lr of the learn steps (0 makes them fail: "
                        "the test of the check itself).")
    return parser

def main() -> int:
    args = get_parser().parse_args()

    print(f"gpu_check: python {sys.version.split()[0]}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), device {args.device}, "
          f"{torch.cuda.device_count()} GPU(s) "
          + (f"({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""),
          flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: --device cuda, but torch sees no GPU", file=sys.stderr)
        return 1
    if args.guard and args.device != "cpu":
        print("gpu_check: error: --guard needs --device cpu", file=sys.stderr)
        return 1
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if args.device == "cpu":
        # Triton kernels run on a CPU only in its interpreter, set before it is imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from shared import rnnt_loss

    report = Report()
    start = time.time()
    device = torch.device(args.device)
    for backend in rnnt_loss.BACKENDS:
        if backend not in ("auto", "reference"):
            report.run(f"loss backend {backend}", compare_loss_backend, backend, device)
    print(f"gpu_check: training uses the RNN-T loss backend "
          f"{rnnt_loss.resolve_backend(device)} (auto) on {device}", flush=True)
    for dtype_name in ("float32", "float16"):
        report.run(f"learn {dtype_name}", learn, args, dtype_name)
    trained = report.run("train (torchrun, fp16)", train, args)
    if trained is not None:
        report.run("decode (7 methods)", decode, args)
        report.run("streaming (3 methods)", streaming, args)
        report.run("export", export, args)
        report.run("pretrained.py", pretrained, args)
    report.run("loss benchmark", loss_benchmark, args)
    report.run("pytest -m cuda", cuda_tests, args)
    ok = report.print()
    print(f"gpu_check: {'all steps passed' if ok else 'FAILED'} in {time.time() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
