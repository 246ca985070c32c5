#!/usr/bin/env python3
"""Training throughput of train.py's step, as a markdown table.

Runs the real training step (``training.compute_loss`` on batches from the real
training DataLoader, backward, Eve) for each thread count
and reports batches/s, seconds of audio per second, encoder frames per second,
the process's CPU seconds per batch (all threads; less sensitive than wall
time to other processes on a shared machine) and its peak resident memory.
The first ``--warmup-steps`` batches are not timed.  Every train.py option
is accepted, so the model size, batch size and augmentation can be varied as
in training.

Usage (a quiet machine gives meaningful numbers)::

  python benchmarks/train_benchmark.py --bpe-model data/lang_bpe_256/bpe.model \\
      --threads 1,2 --steps 40
  python benchmarks/train_benchmark.py --encoder-dim 256 --dim-feedforward 1024 --threads 2

The script also runs against an older checkout (PYTHONPATH=that checkout):
one without shared.optim.Eve trains with AdamW at --base-lr, as its train.py
did.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import sentencepiece as spm
import torch

from pruned_transducer_stateless4 import training
from pruned_transducer_stateless4.asr_datamodule import LibriSpeechAsrDataModule
from pruned_transducer_stateless4.model_config import get_transducer_model
from shared.utils import HelpFormatter

try:
    from shared.optim import Eve
except ImportError:  # checkouts before icefall's optimizer
    Eve = None


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    training.add_training_arguments(parser)
    parser.add_argument("--threads", type=str, default="1,2",
                        help="Comma-separated torch thread counts to measure.")
    parser.add_argument("--steps", type=int, default=40, help="Timed batches per setting.")
    parser.add_argument("--warmup-steps", type=int, default=5, help="Untimed first batches.")
    return parser


def measure(params, sp, train_cuts, threads: int) -> dict[str, float]:
    """Trains params.steps batches after params.warmup_steps untimed ones."""
    torch.set_num_threads(threads)
    training.fix_random_seed(params.seed)
    model = get_transducer_model(params)
    if Eve is not None:
        optimizer = Eve(model.parameters(), lr=params.initial_lr)
    else:  # an older checkout
        optimizer = torch.optim.AdamW(model.parameters(), lr=params.base_lr)
    datamodule = LibriSpeechAsrDataModule(params)
    def endless_batches():
        """Batches of as many epochs as needed (a small corpus runs out)."""
        while True:
            yield from datamodule.train_dataloaders(train_cuts, seed=params.seed)

    loader = endless_batches()
    device = torch.device("cpu")
    model.train()
    totals = {"audio_seconds": 0.0, "frames": 0.0}
    start = cpu_start = 0.0
    for step in range(params.warmup_steps + params.steps):
        if step == params.warmup_steps:
            start = time.time()
            cpu_start = time.process_time()
            totals = {"audio_seconds": 0.0, "frames": 0.0}
        params.batch_idx_train = 10**6  # past the warm-up: simple + pruned loss
        loss, stats = training.compute_loss(params, model, sp, next(loader), device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        totals["audio_seconds"] += stats["audio_seconds"]
        totals["frames"] += stats["frames"]
    seconds = time.time() - start
    cpu_seconds = time.process_time() - cpu_start
    return {"threads": threads, "batches_per_s": params.steps / seconds,
            "cpu_s_per_batch": cpu_seconds / params.steps,
            "audio_s_per_cpu_s": totals["audio_seconds"] / cpu_seconds,
            "audio_s_per_s": totals["audio_seconds"] / seconds,
            "frames_per_s": totals["frames"] / seconds,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "num_params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    args = get_parser().parse_args()
    params = training.get_params()
    params.update(vars(args))
    sp = spm.SentencePieceProcessor(model_file=str(params.bpe_model))
    params.blank_id = sp.piece_to_id("<blk>")
    params.vocab_size = sp.get_piece_size()
    train_cuts = LibriSpeechAsrDataModule(args).train_clean_100_cuts().filter(
        lambda cut: 0.5 <= cut.duration <= 30.0)
    rows = [measure(params, sp, train_cuts, int(t)) for t in args.threads.split(",")]
    print(f"\nmodel {rows[0]['num_params_m']:.2f} M parameters, --max-duration "
          f"{params.max_duration}, {params.steps} timed batches; peak RSS is the process's "
          "maximum so far\n", file=sys.stderr)
    print("| threads | batches/s | audio s/s | encoder frames/s | CPU s/batch "
          "| audio s/CPU s | peak RSS (GB) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['threads']} | {row['batches_per_s']:.2f} | {row['audio_s_per_s']:.1f} "
              f"| {row['frames_per_s']:.0f} | {row['cpu_s_per_batch']:.3f} "
              f"| {row['audio_s_per_cpu_s']:.1f} | {row['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
