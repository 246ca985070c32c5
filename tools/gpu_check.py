#!/usr/bin/env python3
"""The steps of tools/gpu_check.sh, after it has set up the Python path: every
CUDA code path of the recipe on a tiny prepared corpus, in one process where
it can (decoding, streaming, export, pretrained.py run in-process; training
runs under torchrun and the loss benchmark in its own subprocesses).

Usage (from tools/gpu_check.sh; the current directory is the prepared corpus):

  tools/gpu_check.py --device cuda --exp-dir exp/gpu_check
  tools/gpu_check.py --device cpu --guard true   # the CPU dry-run, under the
                                                  # device-mismatch guard

Steps, each timed and reported in a final summary:
  train      torchrun --standalone --nproc-per-node 1 train.py --use-fp16 1,
             past the averaging period; prints the training throughput
  decode     decode.py, all 7 methods, simulated streaming, averaged model
  streaming  streaming_decode.py, real chunk-by-chunk streaming, 3 methods
  export     export.py: pretrained.pt, cpu_jit.pt, ONNX (+ int8)
  pretrained pretrained.py on one test recording
  loss       benchmarks/loss_benchmark.py: pruned path vs fast_rnnt's full loss
  pytest     the tests marked cuda (skipped without a GPU)
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

# The method lists are the scripts' own, so the check covers whatever they offer.
from pruned_transducer_stateless4.decode import DECODING_METHODS  # noqa: E402
from pruned_transducer_stateless4.decode_stream import (  # noqa: E402
    STREAMING_DECODING_METHODS as STREAMING_METHODS,
)
from shared.utils import str2bool  # noqa: E402

# A tiny streaming model (train.py's defaults are icefall's non-streaming
# 12 x 512): the check decodes in simulated and real streaming and exports ONNX.
TINY_MODEL_ARGS = [
    "--num-encoder-layers", "2", "--encoder-dim", "64", "--nhead", "2",
    "--dim-feedforward", "128", "--cnn-module-kernel", "7", "--decoder-dim", "64",
    "--joiner-dim", "64", "--causal-convolution", "true", "--dynamic-chunk-training", "true",
]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    return parser


class Report:
    """Step results, printed as a summary at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, str]] = []

    def run(self, name: str, function, *args) -> object:
        print(f"\n=== gpu_check: {name}", flush=True)
        start = time.time()
        try:
            result = function(*args)
        except BaseException as error:  # a failed step must not hide the others
            if isinstance(error, KeyboardInterrupt):
                raise
            seconds = time.time() - start
            message = str(error).strip().splitlines()[-1] if str(error).strip() else ""
            self.rows.append((name, "FAILED", seconds, f"{type(error).__name__}: {message}"))
            print(f"=== gpu_check: {name} FAILED after {seconds:.1f} s: {error!r}", flush=True)
            return None
        seconds = time.time() - start
        self.rows.append((name, "ok", seconds, str(result or "")))
        print(f"=== gpu_check: {name} ok in {seconds:.1f} s {result or ''}", flush=True)
        return result

    def print(self) -> bool:
        print("\n| step | result | seconds | notes |\n|---|---|---|---|")
        for name, status, seconds, note in self.rows:
            print(f"| {name} | {status} | {seconds:.1f} | {note} |")
        return all(status == "ok" for _, status, _, _ in self.rows)


def train(args: argparse.Namespace) -> str:
    """torchrun with one process, --use-fp16 1, past --average-period."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", "1", str(PROJECT_DIR / "pruned_transducer_stateless4/train.py"),
        "--exp-dir", str(args.exp_dir), "--bpe-model", str(args.lang_dir / "bpe.model"),
        "--num-epochs", str(args.num_epochs), "--max-duration", str(args.max_duration),
        "--num-buckets", "5", "--num-workers", "0", "--use-fp16", "1",
        "--average-period", str(args.average_period), "--save-every-n", "0",
        "--valid-interval", "100000", "--valid-wer-utts", "4", "--model-warm-step", "5",
        "--log-interval", "5", "--enable-musan", "false", "--tensorboard", "false",
        *TINY_MODEL_ARGS,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    sys.stdout.write(result.stdout[-4000:])
    sys.stdout.write(result.stderr[-6000:])
    if result.returncode != 0:
        raise RuntimeError(f"train.py under torchrun exited with {result.returncode}")
    import torch

    checkpoint = torch.load(args.exp_dir / f"epoch-{args.num_epochs}.pt", map_location="cpu",
                            weights_only=False)
    batches = checkpoint["params"]["batch_idx_train"]
    if batches <= args.average_period:
        raise RuntimeError(f"only {batches} batches: not past --average-period "
                           f"{args.average_period}")
    text = result.stderr + "".join(p.read_text() for p in (args.exp_dir / "log").glob("log-*"))
    device = re.search(r"training on (\S+),", text)
    rates = [float(r) for r in re.findall(r"([\d.]+) s audio/s", text)]
    frames = [float(r) for r in re.findall(r"([\d.]+) frames/s", text)]
    if rates:
        # The first interval holds the start-up (CUDA context, cuDNN autotuning).
        steady = rates[1:] or rates
        print(f"training throughput: {statistics.median(steady):.1f} s of audio per second "
              f"(median of {len(steady)} log intervals, max {max(steady):.1f}), "
              f"{statistics.median(frames[1:] or frames):.0f} feature frames/s, on "
              f"{device.group(1) if device else '?'}", flush=True)
    return (f"{batches} batches on {device.group(1) if device else '?'}, "
            f"{statistics.median(rates[1:] or rates) if rates else 0:.1f} s audio/s")


def maybe_guard(module, name: str, guard: bool, patches: list) -> None:
    if not guard:
        return
    from shared.device_guard import guarded

    original = getattr(module, name)
    setattr(module, name, guarded(original))
    patches.append((module, name, original))


def decode(args: argparse.Namespace) -> str:
    from pruned_transducer_stateless4 import decode as decode_py

    patches: list = []
    maybe_guard(decode_py, "decode_one_batch", args.guard, patches)
    wers = []
    try:
        for method in DECODING_METHODS:
            result = decode_py.main([
                "--exp-dir", str(args.exp_dir), "--epoch", str(args.num_epochs),
                "--avg", str(args.num_epochs - 1), "--use-averaged-model", "true",
                "--decoding-method", method, "--device", args.device,
                "--bpe-model", str(args.lang_dir / "bpe.model"), "--lang-dir",
                str(args.lang_dir), "--test-sets", "test-clean", "--max-duration", "60",
                "--simulate-streaming", "true", "--beam-size", "2", "--max-states", "16",
                "--max-contexts", "4", "--num-paths", "6", "--ngram-lm-scale", "0.3",
                "--num-workers", "0",
            ])
            wers.append(f"{method} {result['test-clean'] * 100:.1f}")
    finally:
        for module, name, original in patches:
            setattr(module, name, original)
    return "WER% " + ", ".join(wers)


def streaming(args: argparse.Namespace) -> str:
    from pruned_transducer_stateless4 import streaming_decode

    patches: list = []
    maybe_guard(streaming_decode, "decode_one_chunk", args.guard, patches)
    maybe_guard(streaming_decode.StreamingSetup, "new_stream", args.guard, patches)
    done = []
    try:
        for method in STREAMING_METHODS:
            streaming_decode.main([
                "--exp-dir", str(args.exp_dir), "--epoch", str(args.num_epochs), "--avg", "1",
                "--bpe-model", str(args.lang_dir / "bpe.model"), "--decoding-method", method,
                "--device", args.device, "--test-sets", "test-clean",
                "--num-decode-streams", "4", "--simulate-realtime", "false",
                "--beam-size", "2", "--max-states", "16", "--max-contexts", "4",
            ])
            recogs = list((args.exp_dir / "streaming" / method).glob("recogs-test-clean-*"))
            if len(recogs) != 1:
                raise RuntimeError(f"streaming {method} wrote {len(recogs)} recogs files")
            done.append(method)
    finally:
        for module, name, original in patches:
            setattr(module, name, original)
    return ", ".join(done)


def export(args: argparse.Namespace) -> str:
    from pruned_transducer_stateless4 import export as export_py

    written = []
    for extra in ([], ["--jit", "1"], ["--onnx", "1"]):
        paths = export_py.run(export_py.get_parser().parse_args([
            "--exp-dir", str(args.exp_dir), "--epoch", str(args.num_epochs), "--avg", "1",
            "--bpe-model", str(args.lang_dir / "bpe.model"), "--device", args.device, *extra]))
        written += [path.name for path in paths]
    import torch

    for name in ("pretrained.pt", "cpu_jit.pt"):
        if name == "cpu_jit.pt":
            module = torch.jit.load(str(args.exp_dir / name), map_location="cpu")
            tensors = list(module.state_dict().values())
        else:
            state = torch.load(args.exp_dir / name, map_location=None, weights_only=False)
            tensors = list(state["model"].values())
        devices = {t.device.type for t in tensors}
        if devices != {"cpu"}:
            raise RuntimeError(f"{name} holds tensors on {devices}, not only on the CPU")
    return ", ".join(written)


def pretrained(args: argparse.Namespace) -> str:
    from pruned_transducer_stateless4 import pretrained as pretrained_py

    wav = sorted(Path("download/LibriSpeech/test-clean").rglob("*.flac"))[0]
    patches: list = []
    maybe_guard(pretrained_py, "transcribe", args.guard, patches)
    try:
        for method in ("greedy_search", "modified_beam_search", "fast_beam_search"):
            status = pretrained_py.main([
                "--checkpoint", str(args.exp_dir / "pretrained.pt"), "--bpe-model",
                str(args.lang_dir / "bpe.model"), "--method", method, "--device", args.device,
                "--simulate-streaming", "true", str(wav)])
            if status != 0:
                raise RuntimeError(f"pretrained.py {method} exited with {status}")
    finally:
        for module, name, original in patches:
            setattr(module, name, original)
    return wav.name


def loss_benchmark(args: argparse.Namespace) -> str:
    command = [sys.executable, str(PROJECT_DIR / "benchmarks/loss_benchmark.py"),
               "--device", args.device, "--paths", "recipe,full",
               *args.loss_benchmark_args.split()]
    result = subprocess.run(command, capture_output=True, text=True)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        sys.stdout.write(result.stderr[-4000:])
        raise RuntimeError(f"loss_benchmark.py exited with {result.returncode}")
    row = next((line for line in result.stdout.splitlines() if line.startswith("| recipe")), "")
    return row


def cuda_tests(args: argparse.Namespace) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
         str(PROJECT_DIR / "tests/test_averaging.py"), str(PROJECT_DIR / "tests/test_device.py"),
         str(PROJECT_DIR / "tests/test_gpu.py")],
        capture_output=True, text=True, cwd=PROJECT_DIR)
    sys.stdout.write(result.stdout[-4000:])
    # 5: no test collected (none marked cuda ran) is a failure too.
    if result.returncode != 0:
        sys.stdout.write(result.stderr[-3000:])
        raise RuntimeError(f"pytest -m cuda exited with {result.returncode}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def main() -> int:
    args = get_parser().parse_args()
    import torch

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
    report = Report()
    start = time.time()
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
