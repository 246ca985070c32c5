"""The parts of a training run, below train.py: its command line and fixed
settings, mixed precision, the batch loss, one epoch of optimizer steps (with
validation, checkpoints and the non-finite guard) and the epoch-size check.

train.py strings them together (its run() and main()); tools/gpu_check.py,
benchmarks/train_benchmark.py and the tests call them in-process, so that
what they train and measure is train.py's own step.
"""

import argparse
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist

from pruned_transducer_stateless4.asr_datamodule import (
    LibriSpeechAsrDataModule,
    batch_features,
    batch_texts,
)
from pruned_transducer_stateless4.beam_search import greedy_search_batch
from pruned_transducer_stateless4.conformer import encode, subsampled_lengths
from pruned_transducer_stateless4.model_config import FIXED_SETTINGS, add_model_arguments
from shared import rnnt_loss, run_record
from shared.checkpoint import (
    gather_rng_states,
    remove_old_checkpoints,
    save_checkpoint,
    set_rng_state,
    unwrap,
    update_averaged_model,
)
from shared.metrics import word_error_rate
from shared.nonfinite_guard import NonFiniteGuard
from shared.optim import Eden
from shared.utils import AttributeDict, RecipeError, str2bool


# ------------------------------------------- options and fixed settings ----
def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds every option of train.py to `parser`: training, then the model's
    (model_config.add_model_arguments), then the data's
    (LibriSpeechAsrDataModule.add_arguments)."""
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


def get_params() -> AttributeDict:
    """Fixed settings and training counters, stored in every checkpoint."""
    return AttributeDict(
        {
            **FIXED_SETTINGS,
            "batch_idx_train": 0,
            "cur_epoch": 1,
            "train_seconds": 0.0,  # wall time spent training, over resumes
            "train_audio_seconds": 0.0,  # seconds of audio trained on, over resumes
            "best_valid_loss": float("inf"),
            "best_valid_epoch": -1,
        }
    )


def params_from_command_line(argv: list[str]) -> AttributeDict:
    """get_params() updated with train.py's training options parsed from
    `argv`: the params train.py's run() starts from (before the BPE model
    sets vocab_size and blank_id), for code that trains in-process."""
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    params = get_params()
    params.update(vars(parser.parse_args(argv)))
    return params


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
