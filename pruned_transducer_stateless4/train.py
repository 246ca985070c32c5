#!/usr/bin/env python3
"""Train icefall's reworked Conformer transducer (pruned_transducer_stateless4)
with the pruned RNN-T loss, Eve and Eden.

The defaults are icefall's LibriSpeech ones (12 x 512 non-streaming encoder,
--initial-lr 0.003, --model-warm-step 3000); a streaming model needs
--causal-convolution true --dynamic-chunk-training true (run.sh passes its
small CPU configuration).

Usage (from the project root, after ./prepare.sh):

  # one process
  ./pruned_transducer_stateless4/train.py --num-epochs 10 --exp-dir exp/pruned_transducer_stateless4

  # a streaming model
  ./pruned_transducer_stateless4/train.py ... --causal-convolution true \\
      --dynamic-chunk-training true --short-chunk-size 25 --num-left-chunks 4

  # 4 processes on one machine: rank r on cuda:r (nccl), or gloo on CPU
  ./pruned_transducer_stateless4/train.py --world-size 4 ...

  # 2 machines x 4 GPUs: the same command on both, --node-rank 0 and 1;
  # torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, and each
  # process uses cuda:LOCAL_RANK (docs/gpu.md)
  torchrun --nnodes 2 --nproc-per-node 4 --node-rank 0 --master-addr 10.0.0.1 \\
    --master-port 29500 ./pruned_transducer_stateless4/train.py --full-libri true ...

  # resume: from epoch-3.pt, or from checkpoint-2000.pt (same data order; each
  # rank restores its own RNG state, and a checkpoint of N ranks resumes on M:
  # shared/checkpoint.py rank_rng_state, asr_datamodule.sampler_state_for_world_size)
  ./pruned_transducer_stateless4/train.py --start-epoch 4 ...
  ./pruned_transducer_stateless4/train.py --start-batch 2000 ...

Outputs in --exp-dir: epoch-N.pt, checkpoint-B.pt, tensorboard/, log/log-train-*, and
the records make_results.py reads (shared/run_record.py): train-record.json (arguments,
parameters, batches, audio and training seconds; rewritten at every validation) and
train-points.jsonl (a line per progress line and per validation).
"""

import argparse
import copy
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from pruned_transducer_stateless4.asr_datamodule import (
    LibriSpeechAsrDataModule,
    TrainingCutFilter,
    batch_features,
    batch_texts,
)
from pruned_transducer_stateless4.beam_search import greedy_search_batch
from pruned_transducer_stateless4.conformer import encode, subsampled_lengths
from pruned_transducer_stateless4.model_config import add_model_arguments, get_transducer_model
from pruned_transducer_stateless4.scaling import set_balancer_prob
from shared import rnnt_loss, run_record
from shared.checkpoint import (
    gather_rng_states,
    load_checkpoint_file,
    load_model_state,
    rank_rng_state,
    remove_old_checkpoints,
    save_checkpoint,
    set_rng_state,
    unwrap,
    update_averaged_model,
)
from shared.metrics import word_error_rate
from shared.nonfinite_guard import NonFiniteGuard
from shared.optim import Eden, Eve
from shared.utils import (
    AttributeDict,
    HelpFormatter,
    RecipeError,
    get_device,
    run_main,
    setup_logging,
    str2bool,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--world-size", type=int, default=1,
                        help="Number of training processes on this machine (DDP).")
    parser.add_argument("--master-port", type=int, default=12354,
                        help="Port of the DDP rendezvous for --world-size > 1.")
    parser.add_argument("--tensorboard", type=str2bool, default=True,
                        help="Write tensorboard logs to EXP_DIR/tensorboard.")
    parser.add_argument("--num-epochs", type=int, default=30,
                        help="Train up to and including this epoch.")
    parser.add_argument("--start-epoch", type=int, default=1,
                        help="Epoch to start at; > 1 resumes from EXP_DIR/epoch-(N-1).pt.")
    parser.add_argument("--start-batch", type=int, default=0,
                        help="If > 0, resume from EXP_DIR/checkpoint-B.pt (overrides "
                        "--start-epoch) and continue the same data order.")
    parser.add_argument("--exp-dir", type=Path, default=Path("exp/pruned_transducer_stateless4"),
                        help="Where checkpoints, logs and tensorboard files go.")
    parser.add_argument("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
                        help="Sentencepiece model of prepare.sh stage 4.")
    parser.add_argument("--initial-lr", type=float, default=0.003,
                        help="Eve's learning rate before Eden's decay (icefall's).")
    parser.add_argument("--lr-batches", type=float, default=5000,
                        help="Eden: batches after which the learning rate decays as b^-0.5.")
    parser.add_argument("--lr-epochs", type=float, default=6,
                        help="Eden: epochs after which the learning rate decays as e^-0.5.")
    parser.add_argument("--warmup-batches", type=float, default=0,
                        help="NOT icefall's (0 = off, as icefall): linear learning-rate warm-up "
                        "from 0.1x to 1x over this many batches.")
    parser.add_argument("--lr-decay-fraction", type=float, default=0.0,
                        help="With --max-train-batches N (or --max-train-minutes M): over "
                        "the last F*N batches (F*M minutes) of training the learning rate "
                        "falls linearly to --lr-final-factor times Eden's value (0 = off). "
                        "Tied to minutes, the rate depends on wall time, so a resumed run "
                        "no longer repeats the same losses exactly; tied to batches it does.")
    parser.add_argument("--lr-final-factor", type=float, default=0.05,
                        help="Where --lr-decay-fraction's decay ends, as a fraction of "
                        "Eden's learning rate.")
    parser.add_argument("--grad-clip", type=float, default=0.0,
                        help="NOT icefall's (0 = off, as icefall): clip the gradient norm to "
                        "this value.")
    parser.add_argument("--balancer-prob", type=float, default=1.0,
                        help="Chance that each activation balancer acts in a training step, "
                        "with its gain divided by it (1 = always, icefall's stateless4; icefall's "
                        "later recipes draw to save the balancers' cost).")
    parser.add_argument("--prune-range", type=int, default=5,
                        help="Symbol positions per frame kept for the pruned loss.")
    parser.add_argument("--lm-scale", type=float, default=0.25,
                        help="Weight of the LM-only term in the smoothed simple loss.")
    parser.add_argument("--am-scale", type=float, default=0.0,
                        help="Weight of the acoustic-only term in the smoothed simple loss.")
    parser.add_argument("--simple-loss-scale", type=float, default=0.5,
                        help="Weight of the simple loss "
                        "(loss = s * simple_loss + pruned_scale * pruned_loss).")
    parser.add_argument("--ctc-loss-scale", type=float, default=0.2,
                        help="Weight of the auxiliary CTC loss (needs --use-ctc true).")
    parser.add_argument("--model-warm-step", type=int, default=3000,
                        help="Warm-up length in batches: the encoder's layers are partly "
                        "bypassed and the pruned loss is off before it, weighted 0.1 until "
                        "twice it, then 1 (icefall's).")
    parser.add_argument("--seed", type=int, default=42,
                        help="Seed of every random generator.")
    parser.add_argument("--save-every-n", type=int, default=8000,
                        help="Save checkpoint-B.pt every this many batches.")
    parser.add_argument("--keep-last-k", type=int, default=20,
                        help="Keep only the newest k checkpoint-B.pt files (0 keeps all).")
    parser.add_argument("--average-period", type=int, default=100,
                        help="Update the running average of the weights every this many batches.")
    parser.add_argument("--use-fp16", type=str2bool, default=False,
                        help="Mixed precision (autocast): float16 with dynamic grad scaling on "
                        "CUDA (icefall's), bfloat16 without scaling on CPU; --amp-dtype "
                        "chooses otherwise.")
    parser.add_argument("--amp-dtype", choices=("auto", "float16", "bfloat16"), default="auto",
                        help="With --use-fp16 true, the autocast type: auto = float16 on CUDA "
                        "and bfloat16 on CPU; float16 always comes with a GradScaler (on a "
                        "CPU too, which then meets float16's range as a GPU run does: for "
                        "tests); bfloat16 (float32's range) needs none.")
    parser.add_argument("--max-nonfinite-batches", type=int, default=20,
                        help="Stop with an error after this many consecutive batches that "
                        "could not update the model (non-finite loss or gradients: the "
                        "step is skipped) or ran with a float16 grad scale below 1; "
                        "single such batches are logged and skipped. 0 = never stop.")
    parser.add_argument("--log-interval", type=int, default=50,
                        help="Log training progress every this many batches.")
    parser.add_argument("--valid-interval", type=int, default=None,
                        help="Validate (loss and greedy WER) every this many batches; "
                        "default as icefall: 3000 with --full-libri, else 1600.")
    parser.add_argument("--valid-wer-utts", type=int, default=100,
                        help="Size of the fixed dev-clean subset decoded for the validation WER.")
    parser.add_argument("--valid-chunk-size", type=int, default=16,
                        help="Chunk size of simulated streaming in the validation WER.")
    parser.add_argument("--valid-left-context", type=int, default=64,
                        help="Left context (frames) of simulated streaming in the validation WER.")
    parser.add_argument("--max-train-batches", type=int, default=0,
                        help="If > 0, stop after this many batches in all (after validating "
                        "and saving checkpoint-N.pt): a fixed amount of work, so the same "
                        "command trains the same model on a faster or slower machine.")
    parser.add_argument("--max-train-minutes", type=float, default=0.0,
                        help="If > 0, stop after this many minutes of optimizer steps (after "
                        "validating and saving a checkpoint). A time cap: machines of "
                        "different speed then train different models.")
    parser.add_argument("--min-utt-duration", type=float, default=1.0,
                        help="Drop training cuts shorter than this (seconds; icefall's 1).")
    parser.add_argument("--max-utt-duration", type=float, default=20.0,
                        help="Drop training cuts longer than this (seconds; icefall's 20).")
    parser.add_argument("--rnnt-backend", default="auto",
                        choices=[name for name in rnnt_loss.BACKENDS if name != "reference"],
                        help="What computes the RNN-T loss's lattice recursion: fast_rnnt's "
                        "extension, Triton kernels (GPU), plain PyTorch (any device); auto "
                        "takes fast_rnnt where it supports the device, else Triton on CUDA, "
                        "else PyTorch (shared/rnnt_loss.py). The choice goes into the record.")
    parser.add_argument("--num-threads", type=int, default=0,
                        help="Torch threads per process on CPU; 0 = cores / world size.")
    add_model_arguments(parser)
    LibriSpeechAsrDataModule.add_arguments(parser)
    return parser


def get_params() -> AttributeDict:
    """Fixed settings and training counters, stored in every checkpoint."""
    return AttributeDict(
        {
            "feature_dim": 80,
            "subsampling_factor": 4,
            "blank_id": 0,
            "vocab_size": -1,  # read from the BPE model
            "batch_idx_train": 0,
            "cur_epoch": 1,
            "train_seconds": 0.0,  # wall time spent training, over resumes
            "train_audio_seconds": 0.0,  # seconds of audio trained on, over resumes
            "best_valid_loss": float("inf"),
            "best_valid_epoch": -1,
        }
    )


# ------------------------------------------------------------------ setup ----
def launched_by_torchrun() -> bool:
    """torchrun (and torch.distributed.launch --use-env) sets these for every
    process it starts, on every node."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def setup_distributed(rank: int, world_size: int, master_port: int,
                      device: torch.device) -> None:
    """Joins the process group, on `device`'s GPU (nccl) or with gloo on CPU.

    Under torchrun the rendezvous comes from the standard environment
    (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE of the elastic agent), the
    same on one node or many; with --world-size the spawned processes meet on
    localhost:--master-port.
    """
    if not launched_by_torchrun():
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", str(master_port))
    if device.type == "cuda":
        # Before init: nccl binds each process to its current device.
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size)


def encoder_frames(num_feature_frames: int) -> int:
    """Encoder frames of an utterance of this many feature frames (the
    filter of training cuts; a module-level function, unlike a lambda, can
    be pickled into DataLoader workers)."""
    return int(subsampled_lengths(torch.tensor(num_feature_frames)))


def fix_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(params: AttributeDict, device: torch.device) -> torch.dtype | None:
    """The autocast type of --use-fp16/--amp-dtype on `device`; None = float32."""
    if not params.use_fp16:
        return None
    if params.amp_dtype == "auto":
        # bfloat16 on CPU: CPUs have no fast float16, and float32's range
        # needs no loss scaling.
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, params.amp_dtype)


def autocast_context(params: AttributeDict, device: torch.device):
    dtype = amp_dtype(params, device)
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


# The float16 loss scale to start from.  The loss is per frame (icefall's
# stateless4 sums it), so the largest weight gradients start near 1 (1.0-1.5,
# simple_lm_proj/simple_am_proj/joiner, at run.sh's and icefall's sizes):
# GradScaler's default 2^16 overflows float16 (65504) in the first steps,
# which are then skipped; 2^12 leaves 10x headroom and keeps gradients down
# to ~1e-11 representable.  The scaler still doubles it after 2000 clean steps.
GRAD_SCALE_INIT = 2.0**12


def make_grad_scaler(params: AttributeDict, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler on `device`, enabled for float16 only: small gradients
    underflow float16 (smallest normal 6.1e-5) unless the loss is scaled up;
    bfloat16 and float32 have float32's range."""
    return torch.amp.GradScaler(device.type, init_scale=GRAD_SCALE_INIT,
                                enabled=amp_dtype(params, device) == torch.float16)


def warmup_value(params: AttributeDict) -> float:
    """The encoder's `warmup` argument: batches trained / --model-warm-step."""
    if params.model_warm_step <= 0:
        return 1.0
    return params.batch_idx_train / params.model_warm_step


def loss_scales(params: AttributeDict) -> tuple[float, float]:
    """(simple_loss_scale, pruned_loss_scale) for the current batch, as
    icefall's stateless4: the simple loss keeps --simple-loss-scale; the
    pruned loss (which needs sensible prune ranges, i.e. a simple loss that
    has learned something) is off while warmup < 1, weighted 0.1 while
    1 < warmup < 2, and 1 from then on (also at warmup == 1 exactly)."""
    warmup = warmup_value(params)
    if warmup < 1.0:
        pruned_scale = 0.0
    elif 1.0 < warmup < 2.0:
        pruned_scale = 0.1
    else:
        pruned_scale = 1.0
    return params.simple_loss_scale, pruned_scale


# ------------------------------------------------------------ batch loss ----
def compute_loss(
    params: AttributeDict,
    model: torch.nn.Module,
    sp: spm.SentencePieceProcessor,
    batch: dict[str, Any],
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-frame training loss of one batch and its components (summed).

    Returns:
      (loss, stats): loss is the weighted sum divided by the number of encoder
      frames, ready for backward; stats holds the summed components and
      `frames` so that averages over many batches are exact.
    """
    features, feature_lens = batch_features(batch, device)
    token_ids = sp.encode(batch_texts(batch), out_type=int)
    with autocast_context(params, device):
        losses = model(
            x=features, x_lens=feature_lens, y=token_ids, prune_range=params.prune_range,
            am_scale=params.am_scale, lm_scale=params.lm_scale, warmup=warmup_value(params),
        )
    simple_loss, pruned_loss = losses[0], losses[1]
    ctc_loss = losses[2] if len(losses) > 2 else torch.zeros((), device=device)
    simple_scale, pruned_scale = loss_scales(params)
    num_frames = subsampled_lengths(feature_lens).sum().clamp(min=1)
    total = simple_scale * simple_loss + pruned_scale * pruned_loss
    if params.use_ctc:
        total = total + params.ctc_loss_scale * ctc_loss
    loss = total / num_frames
    stats = {
        "frames": float(num_frames),
        "loss": float(total.detach()),
        "simple_loss": float(simple_loss.detach()),
        "pruned_loss": float(pruned_loss.detach()),
        "ctc_loss": float(ctc_loss.detach()),
        "utterances": float(features.size(0)),
        "audio_seconds": float(feature_lens.sum()) / 100.0,
    }
    return loss, stats


class Tracker(dict):
    """Sums of loss components over batches; per-frame averages on demand."""

    def add(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            self[key] = self.get(key, 0.0) + value

    def per_frame(self, key: str) -> float:
        return self.get(key, 0.0) / max(self.get("frames", 0.0), 1.0)

    def summary(self) -> str:
        return ", ".join(f"{key} {self.per_frame(key):.4f}"
                         for key in ("loss", "simple_loss", "pruned_loss", "ctc_loss"))


# ------------------------------------------------------------ validation ----
@torch.no_grad()
def validate(
    params: AttributeDict,
    model: torch.nn.Module,
    sp: spm.SentencePieceProcessor,
    valid_dl: torch.utils.data.DataLoader,
    wer_dl: torch.utils.data.DataLoader,
    device: torch.device,
) -> tuple[Tracker, float]:
    """Validation loss on dev-clean and greedy-search WER on a fixed subset.

    For a streaming model the WER uses simulated streaming (chunk mask with
    --valid-chunk-size and --valid-left-context), which is what deployment sees.
    """
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    tracker = Tracker()
    for batch in valid_dl:
        _, stats = compute_loss(params, inner, sp, batch, device)
        tracker.add(stats)

    refs: list[str] = []
    hyps: list[str] = []
    chunk_size = params.valid_chunk_size if params.dynamic_chunk_training else -1
    for batch in wer_dl:
        features, feature_lens = batch_features(batch, device)
        encoder_out, encoder_out_lens = encode(
            inner.encoder, features, feature_lens, chunk_size=chunk_size,
            left_context=params.valid_left_context,
        )
        hyp_tokens = greedy_search_batch(inner, encoder_out, encoder_out_lens)
        hyps.extend(sp.decode(hyp_tokens))
        refs.extend(batch_texts(batch))
    inner.train(was_training)
    return tracker, word_error_rate(refs, hyps)


# -------------------------------------------------------------- training ----
def train_one_epoch(
    params: AttributeDict,
    model: torch.nn.Module,
    model_avg: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Eden,
    grad_scaler: torch.amp.GradScaler,
    sp: spm.SentencePieceProcessor,
    train_dl: torch.utils.data.DataLoader,
    valid_dl: torch.utils.data.DataLoader,
    wer_dl: torch.utils.data.DataLoader,
    device: torch.device,
    tb_writer: Any,
    rank: int,
    world_size: int,
    epoch_audio_seconds: float,
    rng_state: dict[str, Any] | None,
    guard: NonFiniteGuard | None = None,
) -> tuple[bool, int, float]:
    """Trains one epoch.

    `guard` counts batches that did not train across epochs (a new one
    from --max-nonfinite-batches if None); it raises RecipeError when too
    many come in a row.

    Returns:
      (finished, num_batches, audio_seconds): finished is False when
      --max-train-batches or --max-train-minutes ran out; num_batches counts the batches this rank's
      loader yielded (trained or skipped), audio_seconds their audio summed
      over all ranks.
    """
    model.train()
    if guard is None:
        guard = NonFiniteGuard(params.max_nonfinite_batches)
    tracker = Tracker()
    interval_tracker = Tracker()
    interval_start = time.time()
    epoch_seconds_done = 0.0
    # Creating the DataLoader iterator draws a random seed from torch's
    # generator, so it must come before the RNG state of a resumed run is
    # restored; then the next batch draws exactly what the interrupted run drew.
    batches = iter(train_dl)
    if rng_state is not None:
        set_rng_state(rng_state, device)

    num_batches = 0
    audio_seconds_local = 0.0
    while True:
        batch = next(batches, None)
        if world_size > 1:
            # lhotse deals batches to ranks round robin, so one rank may run
            # out a batch before the others.  All stop at the first rank's end:
            # a rank still training would wait forever in DDP's all-reduce.
            has_batch = torch.tensor([0.0 if batch is None else 1.0], device=device)
            dist.all_reduce(has_batch, op=dist.ReduceOp.MIN)
            if has_batch.item() == 0.0:
                break
        elif batch is None:
            break
        num_batches += 1
        audio_seconds_local += float(batch["supervisions"]["num_frames"].sum()) / 100.0
        step_start = time.time()
        params.batch_idx_train += 1
        scheduler.step_batch(params.batch_idx_train)
        if params.max_train_batches > 0:
            scheduler.step_progress((params.batch_idx_train - 1) / params.max_train_batches)
        elif params.max_train_minutes > 0:
            scheduler.step_progress(params.train_seconds / (params.max_train_minutes * 60))
        loss, stats = compute_loss(params, model, sp, batch, device)

        finite = torch.tensor([1.0 if math.isfinite(stats["loss"]) else 0.0], device=device)
        if world_size > 1:
            # Every rank must skip together, or DDP's gradient all-reduce hangs.
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() == 0.0:
            # Skipped: the weights stay untouched (the guard logs it).
            optimizer.zero_grad(set_to_none=True)
            guard.check(params.batch_idx_train, loss_finite=False)
            continue

        optimizer.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), params.grad_clip if params.grad_clip > 0 else math.inf)
        # The norm is non-finite iff a gradient is.  A float16 GradScaler
        # skips such a step itself; without one it must not reach the weights.
        # (DDP ranks hold the same all-reduced gradients: they agree.)
        grads_finite = math.isfinite(float(grad_norm))
        if grads_finite:
            grad_scaler.step(optimizer)
        grad_scaler.update()  # halves the float16 scale after non-finite gradients
        guard.check(params.batch_idx_train, loss_finite=True, grads_finite=grads_finite,
                    grad_scale=grad_scaler.get_scale() if grad_scaler.is_enabled() else None)

        tracker.add(stats)
        interval_tracker.add(stats)
        epoch_seconds_done += stats["audio_seconds"] * world_size
        params.train_audio_seconds += stats["audio_seconds"] * world_size
        params.train_seconds += time.time() - step_start

        if model_avg is not None and params.batch_idx_train % params.average_period == 0:
            update_averaged_model(model, model_avg, params.average_period, params.batch_idx_train)

        if params.batch_idx_train % params.log_interval == 0 and rank == 0:
            elapsed = time.time() - interval_start
            audio_rate = interval_tracker["audio_seconds"] * world_size / max(elapsed, 1e-6)
            eta = (epoch_audio_seconds - epoch_seconds_done) / max(audio_rate, 1e-6)
            run_eta = ""
            if params.max_train_batches > 0:
                batch_rate = params.log_interval / max(elapsed, 1e-6)
                left = params.max_train_batches - params.batch_idx_train
                run_eta = f", {left / batch_rate / 60:.1f} min to batch {params.max_train_batches}"
            logging.info(
                f"epoch {params.cur_epoch}, batch {params.batch_idx_train}, "
                f"{interval_tracker.summary()}, lr {scheduler.get_last_lr()[0]:.2e}, "
                f"grad norm {float(grad_norm):.2f}, {audio_rate:.1f} s audio/s, "
                f"{interval_tracker['frames'] * world_size / elapsed:.0f} frames/s, "
                f"epoch ETA {eta / 60:.1f} min{run_eta}"
            )
            run_record.append_train_point(params.exp_dir, run_record.TrainPoint(
                "train", params.batch_idx_train, params.train_seconds / 60,
                loss=interval_tracker.per_frame("loss"), audio_rate=audio_rate,
                epoch=params.cur_epoch))
            if tb_writer is not None:
                for key in ("loss", "simple_loss", "pruned_loss", "ctc_loss"):
                    tb_writer.add_scalar(f"train/{key}", interval_tracker.per_frame(key),
                                         params.batch_idx_train)
                tb_writer.add_scalar("train/lr", scheduler.get_last_lr()[0], params.batch_idx_train)
                tb_writer.add_scalar("train/audio_seconds_per_second", audio_rate,
                                     params.batch_idx_train)
            interval_tracker = Tracker()
            interval_start = time.time()

        if world_size > 1 and params.max_train_minutes > 0:
            # Ranks time their own steps.  They share the slowest rank's clock so
            # that they stop at the same batch (the one still training would wait
            # forever in the gradient all-reduce) and use the same time-tied
            # learning rate (replicas would drift apart otherwise).
            train_seconds = torch.tensor([params.train_seconds], dtype=torch.float64,
                                         device=device)
            dist.all_reduce(train_seconds, op=dist.ReduceOp.MAX)
            params.train_seconds = float(train_seconds.item())
        out_of_batches = 0 < params.max_train_batches <= params.batch_idx_train
        out_of_time = out_of_batches or (
            params.max_train_minutes > 0 and params.train_seconds >= params.max_train_minutes * 60)
        if params.batch_idx_train % params.valid_interval == 0 or out_of_time:
            run_validation(params, model, sp, valid_dl, wer_dl, device, tb_writer, rank,
                           world_size)
            interval_start = time.time()

        if params.save_every_n > 0 and params.batch_idx_train % params.save_every_n == 0:
            save_training_checkpoint(
                params.exp_dir / f"checkpoint-{params.batch_idx_train}.pt", params, model,
                model_avg, optimizer, scheduler, train_dl.sampler, grad_scaler, device, rank,
                world_size)
            if rank == 0:
                remove_old_checkpoints(params.exp_dir, params.keep_last_k)
        if out_of_batches:
            logging.info(f"--max-train-batches {params.max_train_batches} reached")
            return False, num_batches, audio_seconds_local * world_size
        if out_of_time:
            logging.info(f"--max-train-minutes {params.max_train_minutes} reached at batch "
                         f"{params.batch_idx_train}")
            return False, num_batches, audio_seconds_local * world_size

    audio_seconds = torch.tensor([audio_seconds_local], dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(audio_seconds)
    if rank == 0:
        logging.info(f"epoch {params.cur_epoch} done after {num_batches} batches per rank: "
                     f"{tracker.summary()}")
    return True, num_batches, float(audio_seconds.item())


def save_training_checkpoint(
    path: Path, params: AttributeDict, model: torch.nn.Module,
    model_avg: torch.nn.Module | None, optimizer: torch.optim.Optimizer, scheduler: Eden,
    sampler: Any, grad_scaler: torch.amp.GradScaler, device: torch.device, rank: int,
    world_size: int,
) -> None:
    """Rank 0 writes the checkpoint, with every rank's RNG state; all ranks
    must call it at the same batch (gathering the states is a collective)."""
    rng = gather_rng_states(device, world_size)
    if rank == 0:
        save_checkpoint(path, model, params, model_avg=model_avg, optimizer=optimizer,
                        scheduler=scheduler, sampler=sampler, grad_scaler=grad_scaler, rng=rng)


def check_epoch_size(
    params: AttributeDict, num_batches: int, audio_seconds: float, epoch_audio_seconds: float,
    world_size: int, resumed: bool,
) -> None:
    """Raises RecipeError if a finished epoch trained on nothing, or (when it
    started from its beginning) on less than half of its training audio.

    The sampler's drop_last drops each duration bucket's last incomplete batch:
    with little data per bucket (few hours, many buckets, large
    --max-duration, several ranks) that can be all of it, and the epoch would
    otherwise end with "loss 0.0000" and save a checkpoint as if it had
    trained.
    """
    fraction = audio_seconds / max(epoch_audio_seconds, 1e-9)
    if num_batches > 0 and (resumed or fraction >= 0.5):
        return
    per_bucket = epoch_audio_seconds / max(1, params.num_buckets if params.bucketing_sampler
                                           else 1)
    raise RecipeError(
        f"epoch {params.cur_epoch} yielded {num_batches} batches per rank, "
        f"{audio_seconds:.0f} s of its {epoch_audio_seconds:.0f} s of training audio "
        f"({fraction * 100:.0f}%): with --max-duration {params.max_duration:g} s per batch, "
        f"{world_size} rank(s), --num-buckets {params.num_buckets} (about "
        f"{per_bucket:.0f} s of audio per bucket) and --drop-last "
        f"{str(params.drop_last).lower()}, "
        "the incomplete batches the sampler drops are most of the data; lower "
        "--max-duration or --num-buckets, or pass --drop-last false"
    )


def run_validation(params, model, sp, valid_dl, wer_dl, device, tb_writer, rank, world_size):
    if rank == 0:
        start = time.time()
        tracker, wer = validate(params, model, sp, valid_dl, wer_dl, device)
        valid_loss = tracker.per_frame("loss")
        logging.info(
            f"validation at batch {params.batch_idx_train} "
            f"({params.train_seconds / 60:.1f} min of training): {tracker.summary()}, "
            f"greedy WER {wer * 100:.2f}% on {params.valid_wer_utts} dev-clean utterances "
            f"({time.time() - start:.1f} s)"
        )
        run_record.append_train_point(params.exp_dir, run_record.TrainPoint(
            "valid", params.batch_idx_train, params.train_seconds / 60, loss=valid_loss,
            wer=wer * 100, epoch=params.cur_epoch))
        if tb_writer is not None:
            tb_writer.add_scalar("valid/loss", valid_loss, params.batch_idx_train)
            for key in ("simple_loss", "pruned_loss", "ctc_loss"):
                tb_writer.add_scalar(f"valid/{key}", tracker.per_frame(key),
                                     params.batch_idx_train)
            tb_writer.add_scalar("valid/wer", wer * 100, params.batch_idx_train)
            tb_writer.add_scalar("valid/wer_vs_minutes", wer * 100,
                                 int(params.train_seconds / 60))
            tb_writer.flush()
        if valid_loss < params.best_valid_loss:
            params.best_valid_loss = valid_loss
            params.best_valid_epoch = params.cur_epoch
        run_record.write_train_record(params.exp_dir,
                                      run_record.train_record_from_params(params, device))
    if world_size > 1:
        dist.barrier()


# ------------------------------------------------------------------ main ----
def run(rank: int, world_size: int, args: argparse.Namespace) -> None:
    params = get_params()
    params.update(vars(args))
    if params.valid_interval is None:
        params.valid_interval = 3000 if params.full_libri else 1600
    distributed = world_size > 1
    # Spawned ranks use cuda:rank; torchrun's use cuda:LOCAL_RANK (get_device).
    device = get_device(rank if distributed else None)
    if distributed:
        setup_distributed(rank, world_size, params.master_port, device)
    params.exp_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(params.exp_dir / "log" / f"log-train-{time.strftime('%Y-%m-%d-%H-%M-%S')}"
                  f"-rank{rank}", rank=rank)
    if device.type == "cpu":
        # Processes on this machine share its cores (under torchrun the global
        # world size counts other nodes too).
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(params.num_threads
                              or max(1, (os.cpu_count() or 1) // local_processes))
    if params.use_fp16:
        dtype = amp_dtype(params, device)
        logging.info(f"--use-fp16: {dtype} autocast on {device.type}, grad scaling "
                     f"{'on' if dtype == torch.float16 else 'off'}")
    fix_random_seed(params.seed + rank)
    rnnt_loss.set_backend(params.rnnt_backend)
    # What auto means here, stored with the other params in the record and checkpoints.
    params.rnnt_backend_used = rnnt_loss.resolve_backend(device)
    logging.info(f"RNN-T loss backend: {params.rnnt_backend_used} "
                 f"(--rnnt-backend {params.rnnt_backend})")

    if not params.bpe_model.is_file():
        raise FileNotFoundError(f"BPE model {params.bpe_model} not found; run ./prepare.sh "
                                "--stage 4 --stop-stage 4")
    sp = spm.SentencePieceProcessor(model_file=str(params.bpe_model))
    params.blank_id = sp.piece_to_id("<blk>")
    params.vocab_size = sp.get_piece_size()

    checkpoint = None
    if params.start_batch > 0:
        checkpoint = load_checkpoint_file(params.exp_dir / f"checkpoint-{params.start_batch}.pt")
    elif params.start_epoch > 1:
        checkpoint = load_checkpoint_file(params.exp_dir / f"epoch-{params.start_epoch - 1}.pt")
    if checkpoint is not None:
        for key in ("batch_idx_train", "cur_epoch", "train_seconds", "best_valid_loss",
                    "best_valid_epoch"):
            params[key] = checkpoint["params"][key]
        # (absent from checkpoints older than the counter)
        params.train_audio_seconds = checkpoint["params"].get("train_audio_seconds", 0.0)
        if params.start_batch > 0:
            params.start_epoch = params.cur_epoch
        else:
            params.cur_epoch = params.start_epoch

    datamodule = LibriSpeechAsrDataModule(args)
    train_cuts = (datamodule.train_all_shuf_cuts() if params.full_libri
                  else datamodule.train_clean_100_cuts())
    # icefall's filter: 1-20 s, and no cut with more BPE tokens than encoder
    # frames (its transducer loss would be infinite).  One counting pass here;
    # the sampler applies the same filter lazily every epoch.
    cut_filter = TrainingCutFilter(
        encode=sp.encode,
        encoder_frames=encoder_frames,
        min_duration=params.min_utt_duration, max_duration=params.max_utt_duration)
    filter_counts = cut_filter.count(train_cuts)
    logging.info(f"training cut filter: "
                 f"{filter_counts.summary(params.min_utt_duration, params.max_utt_duration)}")
    if filter_counts.kept == 0:
        raise RecipeError("every training cut was filtered out (see the line above); check "
                          "--min-utt-duration/--max-utt-duration and the manifests")
    train_cuts = train_cuts.filter(cut_filter)

    model = get_transducer_model(params)
    set_balancer_prob(model, params.balancer_prob)
    num_params = sum(p.numel() for p in model.parameters())
    params.num_params = num_params
    logging.info(f"model: {num_params / 1e6:.2f} M parameters")
    if checkpoint is not None:
        load_model_state(model, checkpoint["model"], "resume checkpoint")
    model.to(device)
    model_avg = None
    if params.average_period > 0:
        # On the model's device (update_averaged_model then moves nothing),
        # in float64 so that adding p/b of the weights loses nothing.
        model_avg = copy.deepcopy(model).to(torch.float64)
        if checkpoint is not None and checkpoint.get("model_avg") is not None:
            model_avg.load_state_dict(checkpoint["model_avg"])
    if distributed:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = Eve(model.parameters(), lr=params.initial_lr)
    scheduler = Eden(optimizer, params.lr_batches, params.lr_epochs, params.warmup_batches,
                     decay_fraction=params.lr_decay_fraction,
                     final_factor=params.lr_final_factor)
    grad_scaler = make_grad_scaler(params, device)
    if checkpoint is not None:
        if checkpoint.get("optimizer") is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scheduler") is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("grad_scaler") is not None:
            grad_scaler.load_state_dict(checkpoint["grad_scaler"])

    epoch_audio_seconds = filter_counts.kept_seconds
    dev_cuts = datamodule.dev_clean_cuts()
    valid_dl = datamodule.valid_dataloaders(dev_cuts)
    wer_dl = datamodule.valid_dataloaders(dev_cuts.subset(first=params.valid_wer_utts))

    sampler_state = None
    rng_state = None
    if params.start_batch > 0 and checkpoint is not None:
        sampler_state = checkpoint.get("sampler")
        # Each rank its own state; a checkpoint of N ranks resumes on M.
        rng_state, rng_message = rank_rng_state(checkpoint.get("rng"), rank, params.seed,
                                                params.batch_idx_train, device)
        logging.info(rng_message)
    train_dl = datamodule.train_dataloaders(
        train_cuts, sampler_state_dict=sampler_state,
        world_size=world_size if distributed else None, rank=rank if distributed else None,
        seed=params.seed,
    )

    tb_writer = None
    if params.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb_writer = SummaryWriter(log_dir=str(params.exp_dir / "tensorboard"))
        tb_writer.add_text("params", str({k: str(v) for k, v in params.items()}))

    logging.info(f"training on {device}, world size {world_size}, "
                 f"{epoch_audio_seconds / 3600:.2f} h of audio per epoch")
    guard = NonFiniteGuard(params.max_nonfinite_batches)
    for epoch in range(params.start_epoch, params.num_epochs + 1):
        params.cur_epoch = epoch
        scheduler.step_epoch(epoch - 1)
        if sampler_state is None:
            train_dl.sampler.set_epoch(epoch - 1)
        if rng_state is None:
            fix_random_seed(params.seed + epoch - 1 + rank * 1000)
        resumed = sampler_state is not None
        finished, num_batches, trained_seconds = train_one_epoch(
            params, model, model_avg, optimizer, scheduler, grad_scaler, sp, train_dl, valid_dl,
            wer_dl, device, tb_writer, rank, world_size if distributed else 1,
            epoch_audio_seconds, rng_state, guard,
        )
        if finished:
            # Every rank raises alike (the trained audio is summed over ranks).
            check_epoch_size(params, num_batches, trained_seconds, epoch_audio_seconds,
                             world_size, resumed)
        sampler_state = None
        rng_state = None
        if not finished:
            save_training_checkpoint(
                params.exp_dir / f"checkpoint-{params.batch_idx_train}.pt", params, model,
                model_avg, optimizer, scheduler, train_dl.sampler, grad_scaler, device, rank,
                world_size if distributed else 1)
            break
        run_validation(params, model, sp, valid_dl, wer_dl, device, tb_writer, rank,
                       world_size if distributed else 1)
        save_training_checkpoint(
            params.exp_dir / f"epoch-{epoch}.pt", params, model, model_avg, optimizer,
            scheduler, train_dl.sampler, grad_scaler, device, rank,
            world_size if distributed else 1)
    if tb_writer is not None:
        tb_writer.close()
    # Every rank logs this to its own log file: under DDP all ranks must hold
    # the same weights, which the tests check.
    checksum = sum(float(p.detach().double().abs().sum()) for p in unwrap(model).parameters())
    logging.info(f"rank {rank} final parameter checksum {checksum:.10e}")
    if rank == 0:
        run_record.write_train_record(
            params.exp_dir, run_record.train_record_from_params(params, device, finished=True))
    logging.info("done")
    if distributed:
        dist.destroy_process_group()


def run_spawned(rank: int, world_size: int, args: argparse.Namespace) -> None:
    """mp.spawn's target.  A user error (RecipeError, FileNotFoundError) ends
    the rank with exit status 1 and rank 0 prints it as one line, as run_main
    does for one process (mp.spawn would otherwise show every rank's
    traceback)."""
    try:
        run(rank, world_size, args)
    except (RecipeError, FileNotFoundError) as error:
        if os.environ.get("RECIPE_DEBUG"):
            raise
        if rank == 0:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"train.py: error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


def main() -> int:
    parser = get_parser()
    args = parser.parse_args()
    if not 0.0 <= args.lr_decay_fraction <= 1.0:
        parser.error(f"--lr-decay-fraction must be in [0, 1], not {args.lr_decay_fraction}")
    if not 0.0 < args.balancer_prob <= 1.0:
        parser.error(f"--balancer-prob must be in (0, 1], not {args.balancer_prob}")
    if args.amp_dtype != "auto" and not args.use_fp16:
        parser.error(f"--amp-dtype {args.amp_dtype} needs --use-fp16 true")
    if args.max_nonfinite_batches < 0:
        parser.error(f"--max-nonfinite-batches must be >= 0, not {args.max_nonfinite_batches}")
    if args.dynamic_chunk_training and not args.causal_convolution:
        parser.error("--dynamic-chunk-training true needs --causal-convolution true "
                     "(a streaming model)")
    if args.lr_decay_fraction > 0 and args.max_train_minutes <= 0 and args.max_train_batches <= 0:
        parser.error("--lr-decay-fraction needs --max-train-batches or --max-train-minutes > 0 "
                     "(the budget it decays over)")
    if launched_by_torchrun():
        # Started by torchrun (possibly on several nodes): it decides the ranks.
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
    elif args.world_size > 1:
        try:
            mp.spawn(run_spawned, args=(args.world_size, args), nprocs=args.world_size,
                     join=True)
        except mp.ProcessExitedException as error:
            if error.exit_code != 1:
                raise
            return 1  # a rank stopped on a user error, which rank 0 printed
    else:
        run(0, 1, args)
    return 0


if __name__ == "__main__":
    torch.set_num_interop_threads(1)
    run_main(main)
