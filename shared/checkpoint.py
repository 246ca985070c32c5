"""Checkpoints as icefall writes them, saved atomically.

Layout of a checkpoint file (a dict):
  model        model.state_dict() (DDP prefix removed)
  model_avg    running average of the weights (optional), see `update_averaged_model`
  optimizer, scheduler, grad_scaler, sampler   state dicts (optional)
  rng          {"world_size": N, "ranks": [...]}: each rank's python/numpy/torch
               (CPU, and its own GPU's) RNG states, so that every rank of a
               resumed run draws what it would have drawn uninterrupted
               (`gather_rng_states`, `rank_rng_state`)
  params       the AttributeDict of the run (hyper-parameters, counters,
               model options), so that decode/export rebuild the same model
"""

import argparse
import glob
import logging
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from shared.utils import RecipeError, atomic_torch_save, str2bool


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel, or the model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def get_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's random generators: python, numpy, torch's CPU one and,
    when `device` is a GPU, that GPU's (only its own: another rank's GPU, or a
    GPU the resuming run may not have, is none of its business)."""
    cuda = None
    if device is not None and device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device)
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restores what `get_rng_state` returned; the CUDA state goes to `device`
    when both exist (a GPU run resumed on the CPU keeps only the CPU ones)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # checkpoints before per-rank states: one per visible GPU
        cuda = cuda[0] if cuda else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def gather_rng_states(device: torch.device, world_size: int) -> dict[str, Any]:
    """Every rank's `get_rng_state`, collected on every rank (a collective:
    all ranks must call it at the same point), for rank 0's checkpoint.

    One file holding all ranks' states rather than a file per rank: it is
    written atomically with the rest of the checkpoint, `--keep-last-k`
    removes it with it, and a multi-node run whose ranks write to different
    disks still finds every rank's state in rank 0's checkpoint.

    Returns:
      {"world_size": N, "ranks": [state of rank 0, ..., state of rank N-1]}.
    """
    state = get_rng_state(device)
    if world_size <= 1:
        return {"world_size": 1, "ranks": [state]}
    import torch.distributed as dist

    states: list[Any] = [None] * world_size
    dist.all_gather_object(states, state)
    return {"world_size": world_size, "ranks": states}


def resume_seed(seed: int, rank: int, batch_idx_train: int) -> int:
    """The seed of a rank that the resumed checkpoint holds no RNG state for
    (a run resumed on more ranks than wrote the checkpoint): seed + 1000 *
    rank + batch, so it differs between ranks and between resume points, and
    the same resume gives the same draws."""
    return seed + 1000 * rank + batch_idx_train


def rank_rng_state(
    saved: dict[str, Any] | None, rank: int, seed: int, batch_idx_train: int,
    device: torch.device | None = None,
) -> tuple[dict[str, Any], str]:
    """The RNG state that `rank` of a resumed run restores.

    A checkpoint written by N ranks (`gather_rng_states`) resumes on M ranks:
    rank r < N restores rank r's state; rank r >= N seeds its generators with
    `resume_seed(seed, r, batch_idx_train)`.  The states of ranks >= M are
    not used.  A checkpoint written before per-rank states holds rank 0's.

    Note: a rank with no saved state has its generators seeded here.

    Returns:
      (state, a line for the log saying which it is).
    """
    if saved is None:
        saved = {"world_size": 0, "ranks": []}
    elif "ranks" not in saved:  # older checkpoints: rank 0's state only
        saved = {"world_size": 1, "ranks": [saved]}
    written_by = saved["world_size"]
    if rank < len(saved["ranks"]):
        return saved["ranks"][rank], (f"rank {rank}: restoring its RNG state from the "
                                      f"checkpoint (written by {written_by} rank(s))")
    derived = resume_seed(seed, rank, batch_idx_train)
    random.seed(derived)
    np.random.seed(derived % 2**32)
    torch.manual_seed(derived)
    return get_rng_state(device), (
        f"rank {rank}: the checkpoint holds RNG states of {written_by} rank(s) only; seeding "
        f"this rank with --seed + 1000 * rank + batch = {derived}")


def save_checkpoint(
    path: Path,
    model: nn.Module,
    params: dict[str, Any],
    model_avg: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    sampler: Any = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    rng: dict[str, Any] | None = None,
) -> None:
    """Writes a checkpoint atomically (see `shared.utils.atomic_torch_save`).

    rng: every rank's RNG state (`gather_rng_states`); default: this
    process's, as the only rank.
    """
    checkpoint = {
        "model": unwrap(model).state_dict(),
        "model_avg": model_avg.state_dict() if model_avg is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "sampler": sampler.state_dict() if sampler is not None else None,
        "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
        "rng": rng if rng is not None else {"world_size": 1, "ranks": [get_rng_state()]},
        "params": dict(params),
    }
    atomic_torch_save(checkpoint, path)


def load_checkpoint_file(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Loads a checkpoint, turning every failure into one clear error.

    mmap=True maps the file instead of reading it: tensors are then read only
    when touched, so looking at `params` costs the pickle, not the weights and
    optimizer state (tens of MB).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # mmap needs torch's zip format; read an older or foreign file whole.
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise RecipeError(f"checkpoint {path} is unreadable ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise RecipeError(f"checkpoint {path} holds no 'model' entry; is it a checkpoint?")
    return checkpoint


def read_checkpoint_params(path: Path) -> dict[str, Any]:
    """The `params` train.py stores in a checkpoint (model options, counters);
    {} when it holds none.  Reads neither weights nor optimizer state."""
    return dict(load_checkpoint_file(path, mmap=True).get("params") or {})


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict with a one-line error naming the first mismatch."""
    try:
        unwrap(model).load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[1:2] or [str(error)]
        raise RecipeError(
            f"checkpoint {path} does not fit the model ({first_line[0].strip()}); "
            "were the model options different?"
        ) from error


def average_state_dicts(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the `model` entries of several checkpoints."""
    assert paths, "nothing to average"
    average: dict[str, torch.Tensor] = {}
    for path in paths:
        state = load_checkpoint_file(path)["model"]
        for name, tensor in state.items():
            if name not in average:
                average[name] = tensor.clone().double() if tensor.is_floating_point() else tensor
            elif tensor.is_floating_point():
                average[name] += tensor.double()
    for name, tensor in average.items():
        if tensor.is_floating_point():
            average[name] = (tensor / len(paths)).to(torch.float32)
    return average


@torch.no_grad()
def update_averaged_model(
    model: nn.Module, model_avg: nn.Module, average_period: int, batch_idx_train: int
) -> None:
    """Running average of the weights over all batches so far (icefall's).

    Called every `average_period` batches:
      model_avg = model_avg * (1 - p/b) + model * p/b,  p = average_period, b = batch_idx_train
    so model_avg equals the mean of the models seen at each call.

    model_avg keeps its own device and dtype (float64 in train.py): each
    weight of `model`, whatever its dtype (float32, float16, bfloat16) or
    device, is moved to model_avg's device and widened to its dtype before
    the update, so the sum is computed in model_avg's precision and no CUDA
    tensor is added into a CPU one (or the reverse).
    """
    weight_cur = average_period / batch_idx_train
    weight_avg = 1.0 - weight_cur
    avg_params = model_avg.state_dict()
    cur_params = unwrap(model).state_dict()
    for name, avg_tensor in avg_params.items():
        if avg_tensor.is_floating_point():
            current = cur_params[name].detach().to(device=avg_tensor.device,
                                                   dtype=avg_tensor.dtype)
            avg_tensor.mul_(weight_avg).add_(current, alpha=weight_cur)


def averaged_model_between(start: dict[str, Any], end: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Average of the models trained between two checkpoints (icefall's
    --use-averaged-model): from the running averages stored in both,
      avg(start..end] = (avg_end * b_end - avg_start * b_start) / (b_end - b_start).
    """
    batch_end = end["params"]["batch_idx_train"]
    batch_start = start["params"]["batch_idx_train"]
    assert batch_end > batch_start, (batch_start, batch_end)
    if start.get("model_avg") is None or end.get("model_avg") is None:
        raise RecipeError("checkpoints hold no averaged model (train with --average-period > 0)")
    weight_end = batch_end / (batch_end - batch_start)
    weight_start = -batch_start / (batch_end - batch_start)
    averaged = {}
    for name, tensor_end in end["model_avg"].items():
        if tensor_end.is_floating_point():
            averaged[name] = (tensor_end.double() * weight_end
                              + start["model_avg"][name].double() * weight_start).float()
        else:
            averaged[name] = tensor_end
    return averaged


def find_checkpoints(exp_dir: Path, iteration: int = 0) -> list[Path]:
    """checkpoint-B.pt files in exp_dir, newest (largest B) first; with
    `iteration` > 0, only those with B <= iteration."""
    paths = glob.glob(str(Path(exp_dir) / "checkpoint-[0-9]*.pt"))
    numbered = []
    for path in paths:
        match = re.search(r"checkpoint-(\d+)\.pt$", path)
        if match:
            numbered.append((int(match.group(1)), Path(path)))
    numbered.sort(reverse=True)
    return [path for batch, path in numbered if iteration <= 0 or batch <= iteration]


def remove_old_checkpoints(exp_dir: Path, keep_last_k: int) -> None:
    """Deletes all but the newest `keep_last_k` checkpoint-B.pt files."""
    if keep_last_k <= 0:
        return
    for path in find_checkpoints(exp_dir)[keep_last_k:]:
        logging.debug(f"removing {path}")
        path.unlink(missing_ok=True)


def select_checkpoints(
    exp_dir: Path, epoch: int, iteration: int, avg: int, use_averaged_model: bool
) -> list[Path]:
    """The checkpoint files that icefall's --epoch/--iter/--avg/--use-averaged-model
    options name, newest first.

    * iteration > 0: the newest checkpoint-B.pt with B <= iteration and the
      ones before it; otherwise epoch-N.pt files ending at `epoch`.
    * without use_averaged_model: the `avg` checkpoints whose models are
      averaged (just one for avg == 1);
    * with use_averaged_model: [end, start], `avg` epochs (or checkpoints)
      apart; the average of the models trained between them comes from the
      running averages stored in both (`averaged_model_between`).  For
      epochs, start may be epoch 0 (the start of training), returned as
      exp_dir/epoch-0.pt although no such file exists.

    Raises RecipeError when the options cannot be satisfied.
    """
    exp_dir = Path(exp_dir)
    if avg < 1:
        raise RecipeError(f"--avg must be >= 1, got {avg}")
    needed = avg + 1 if use_averaged_model else avg
    if iteration > 0:
        paths = find_checkpoints(exp_dir, iteration)[:needed]
        if len(paths) < needed:
            raise RecipeError(f"--iter {iteration} --avg {avg}"
                              f"{' --use-averaged-model' if use_averaged_model else ''} needs "
                              f"{needed} checkpoint-B.pt files with B <= {iteration} in "
                              f"{exp_dir}, found {len(paths)}")
        return [paths[0], paths[-1]] if use_averaged_model else paths
    if epoch < 1:
        raise RecipeError(f"--epoch must be >= 1 (or use --iter), got {epoch}")
    first = epoch - avg if use_averaged_model else epoch - avg + 1
    if first < (0 if use_averaged_model else 1):
        raise RecipeError(f"--avg {avg} is too large for --epoch {epoch}")
    if use_averaged_model:
        return [exp_dir / f"epoch-{epoch}.pt", exp_dir / f"epoch-{first}.pt"]
    return [exp_dir / f"epoch-{n}.pt" for n in range(epoch, first - 1, -1)]


def load_averaged_model(
    model: nn.Module,
    exp_dir: Path,
    epoch: int,
    iteration: int,
    avg: int,
    use_averaged_model: bool,
) -> str:
    """Loads into `model` the weights that --epoch/--iter/--avg/--use-averaged-model
    name (see `select_checkpoints`), as icefall's decode.py and export.py do.

    Returns:
      A one-line description of what was loaded, for the log.
    """
    paths = select_checkpoints(exp_dir, epoch, iteration, avg, use_averaged_model)
    if not use_averaged_model:
        if len(paths) == 1:
            state_dict = load_checkpoint_file(paths[0])["model"]
            description = f"model of {paths[0]}"
        else:
            state_dict = average_state_dicts(paths)
            description = (f"average of the models of {len(paths)} checkpoints "
                           f"{paths[-1].name} .. {paths[0].name} in {paths[0].parent}")
        load_model_state(model, state_dict, paths[0])
        return description
    end = load_checkpoint_file(paths[0])
    if iteration <= 0 and paths[1].name == "epoch-0.pt":
        # From the start of training: the running average of `end` is it.
        if end.get("model_avg") is None:
            raise RecipeError(f"checkpoint {paths[0]} holds no averaged model "
                              "(train with --average-period > 0)")
        state_dict = {name: tensor.float() if tensor.is_floating_point() else tensor
                      for name, tensor in end["model_avg"].items()}
        description = (f"averaged model of all {end['params']['batch_idx_train']} batches up "
                       f"to {paths[0]}")
    else:
        start = load_checkpoint_file(paths[1])
        state_dict = averaged_model_between(start, end)
        description = (f"averaged model of the batches between {paths[1].name} (batch "
                       f"{start['params']['batch_idx_train']}) and {paths[0].name} (batch "
                       f"{end['params']['batch_idx_train']}) in {paths[0].parent}")
    load_model_state(model, state_dict, paths[0])
    return description


# ------------------------------------------- choosing a model to decode ----
def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """icefall's checkpoint options, with the same defaults in every script
    that loads a trained model (decode.py, streaming_decode.py, export.py,
    sherpa_onnx_decode.py).  An icefall `pretrained.pt` linked as
    EXP_DIR/epoch-999.pt is chosen with --epoch 999 --avg 1
    --use-averaged-model false (its model options go on the command line)."""
    group = parser.add_argument_group(
        title="Checkpoint selection",
        description="Which weights of --exp-dir to use (icefall's options).")
    group.add_argument("--epoch", type=int, default=30,
                       help="Use epoch-EPOCH.pt (averaged with earlier ones, --avg).")
    group.add_argument("--iter", type=int, default=0,
                       help="If > 0, use checkpoint-B.pt files with B <= ITER instead of "
                       "epoch files (overrides --epoch).")
    group.add_argument("--avg", type=int, default=9,
                       help="Number of checkpoints to average: epochs EPOCH-AVG+1..EPOCH, or "
                       "the AVG newest checkpoint-B.pt with --iter. With "
                       "--use-averaged-model, the model averaged over the training between "
                       "epoch EPOCH-AVG (or the (AVG+1)-th newest checkpoint) and EPOCH.")
    group.add_argument("--use-averaged-model", type=str2bool, default=True,
                       help="Use the running weight averages that train.py stores in each "
                       "checkpoint (needs --average-period > 0 in training; false for an "
                       "exported or icefall pretrained.pt).")


def explicit_options(argv: list[str]) -> set[str]:
    """Names (with underscores) of the options given on the command line."""
    names = set()
    for arg in argv:
        if arg.startswith("--"):
            names.add(arg[2:].split("=", 1)[0].replace("-", "_"))
    return names


def load_inference_model(
    params: dict[str, Any],
    explicit: set[str],
    build_model: Callable[[dict[str, Any]], nn.Module],
    model_option_names: Sequence[str],
    checkpoint: Path | None = None,
) -> tuple[nn.Module, str]:
    """The one loader of decode.py, streaming_decode.py, export.py,
    pretrained.py and sherpa_onnx_decode.py.

    Chooses the weights with --epoch/--iter/--avg/--use-averaged-model
    (`params` holds them and exp_dir), or loads the file `checkpoint`.  The
    model options (`model_option_names`) come from the checkpoint's `params`
    when it has them (train.py's checkpoints, export.py's pretrained.pt); an
    option typed on the command line that disagrees is overridden with a
    warning.  A file without `params` -- icefall's own pretrained.pt,
    `{"model": state_dict}` -- is built from the command-line options (the
    defaults are icefall's) and must then load with strict=True.

    Args:
      params: the script's options plus vocab_size and blank_id (from the
        token table); gets the model options actually used.
      explicit: options given on the command line (`explicit_options`).
      build_model: params -> model.
      model_option_names: the options that define the network's shape.
      checkpoint: a file to load instead of the --epoch selection.
    Returns:
      (model in eval mode on the CPU, a one-line description for the log).
    """
    if checkpoint is not None:
        paths = [Path(checkpoint)]
        use_averaged_model = False
    else:
        paths = select_checkpoints(params["exp_dir"], params["epoch"], params["iter"],
                                   params["avg"], params["use_averaged_model"])
        use_averaged_model = params["use_averaged_model"]
    stored = read_checkpoint_params(paths[0])
    if not stored:
        if use_averaged_model:
            raise RecipeError(f"{paths[0]} holds only model weights (an exported or icefall "
                              "pretrained.pt?); use --use-averaged-model false")
        logging.info(f"{paths[0]} holds no model options: building the model from the "
                     "command-line options")
    for name in ("vocab_size", "blank_id"):
        if name in stored and stored[name] != params[name]:
            raise RecipeError(f"{name} of {paths[0]} is {stored[name]}, but the token table "
                              f"gives {params[name]}: pass the vocabulary the model was "
                              "trained with")
    for name in model_option_names:
        stored_value = stored.get(name)
        if name not in stored or name in ("vocab_size", "blank_id"):
            continue
        if name in explicit and params.get(name) != stored_value:
            logging.warning(f"--{name.replace('_', '-')}={params.get(name)} differs from "
                            f"{paths[0]} ({stored_value}); using {stored_value}")
        params[name] = stored_value
    model = build_model(params)
    if checkpoint is not None or len(paths) == 1 and not use_averaged_model:
        load_model_state(model, load_checkpoint_file(paths[0])["model"], paths[0])
        description = f"model of {paths[0]}"
    else:
        description = load_averaged_model(model, params["exp_dir"], params["epoch"],
                                          params["iter"], params["avg"], use_averaged_model)
    model.eval()
    return model, description
