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

The options, the batch loss and the epoch loop are in training.py (a library:
benchmarks/train_benchmark.py and tools/gpu_check.py run the same step).
"""

import argparse
import copy
import logging
import os
import sys
import time

import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from pruned_transducer_stateless4.asr_datamodule import (
    LibriSpeechAsrDataModule,
    TrainingCutFilter,
)
from pruned_transducer_stateless4.model_config import get_transducer_model
from pruned_transducer_stateless4.scaling import set_balancer_prob
from pruned_transducer_stateless4.training import (
    add_training_arguments,
    amp_dtype,
    check_epoch_size,
    encoder_frames,
    fix_random_seed,
    get_params,
    make_grad_scaler,
    run_validation,
    save_training_checkpoint,
    train_one_epoch,
)
from shared import rnnt_loss, run_record
from shared.checkpoint import (
    load_checkpoint_file,
    load_model_state,
    rank_rng_state,
    unwrap,
)
from shared.nonfinite_guard import NonFiniteGuard
from shared.optim import Eden, Eve
from shared.utils import (
    HelpFormatter,
    RecipeError,
    get_device,
    run_main,
    setup_logging,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    add_training_arguments(parser)
    return parser


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
