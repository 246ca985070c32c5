"""The (pruned) RNN-T loss used by the recipe, over interchangeable backends.

The model imports the loss functions below from here instead of from k2 /
fast_rnnt.  All functions follow fast_rnnt's contracts exactly; see
:mod:`shared.rnnt_reference` for the shapes and the ``boundary`` / ``ranges``
conventions.  In short:

* ``boundary``: int64 ``[B, 4]``, rows ``(begin_symbol, begin_frame,
  end_symbol, end_frame)``, ``None`` meaning ``(0, 0, S, T)``.
* ``termination_symbol``: the blank id.
* ``reduction``: ``"none"`` (``[B]``) | ``"mean"`` | ``"sum"``.

Every loss ends in one lattice recursion, :func:`mutual_information_recursion`;
the backend is what computes it:

* ``"fast_rnnt"``: fast_rnnt's compiled extension (its own loss functions are
  called, so losses are exactly what fast_rnnt gives);
* ``"triton"``: :mod:`shared.mutual_information_triton`, Triton kernels compiled at
  run time (GPUs; on the CPU only in Triton's interpreter, ``TRITON_INTERPRET=1``);
* ``"torch"``: :mod:`shared.mutual_information_torch`, plain PyTorch on any device;
* ``"reference"``: :mod:`shared.rnnt_reference` throughout, the slow checker;
* ``"auto"`` (default): per device, fast_rnnt where its extension supports the
  device (the CPU whenever it imports, CUDA if it was built with CUDA), else Triton
  on CUDA when triton imports, else torch.

With triton and torch, the arc log-probs ``px`` / ``py`` are computed in PyTorch
(:mod:`shared.rnnt_reference`'s functions, :func:`get_rnnt_logprobs_pruned` here)
and the pruning ranges by :func:`shared.rnnt_reference.get_rnnt_prune_ranges`,
which reproduces fast_rnnt's choice.  The backend is requested with
:func:`set_backend` (``train.py --rnnt-backend``) or the environment variable
``RNNT_LOSS_BACKEND`` (read at import); :func:`resolve_backend` says what a device
gets.  The concrete choice is logged once per device type at first use.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

import torch
from torch import Tensor

from shared import mutual_information_torch
from shared import rnnt_reference as reference

__all__ = [
    "BACKEND",
    "BACKENDS",
    "do_rnnt_pruning",
    "get_rnnt_logprobs_pruned",
    "get_rnnt_prune_ranges",
    "mutual_information_recursion",
    "resolve_backend",
    "rnnt_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
    "set_backend",
]

BACKEND_ENV_VAR = "RNNT_LOSS_BACKEND"
#: Names accepted by :func:`set_backend` and ``RNNT_LOSS_BACKEND``.
BACKENDS: tuple[str, ...] = ("auto", "fast_rnnt", "triton", "torch", "reference")

#: The requested backend name (one of :data:`BACKENDS`); see :func:`resolve_backend`
#: for what it means on a given device.
BACKEND: str = "auto"

# Import attempts, cached: the module, or the error it raised.
_imported: dict[str, ModuleType | ImportError] = {}
# (device type, backend) pairs already logged.
_logged: set[tuple[str, str]] = set()


def _try_import(module_name: str) -> ModuleType | ImportError:
    if module_name not in _imported:
        try:
            _imported[module_name] = importlib.import_module(module_name)
        except ImportError as error:
            _imported[module_name] = error
    return _imported[module_name]


def _fast_rnnt() -> ModuleType | None:
    module = _try_import("fast_rnnt")
    if isinstance(module, ImportError):
        _warn_fast_rnnt_build()
        return None
    return module


def _fast_rnnt_has_cuda() -> bool:
    """Whether fast_rnnt's loss runs on this machine's GPUs: built with CUDA and, by its
    build record, with kernels for every visible GPU's architecture."""
    extension = _try_import("_fast_rnnt")  # fast_rnnt's compiled part
    if isinstance(extension, ImportError) or not extension.with_cuda():
        return False
    return _warn_fast_rnnt_build() is None


_fast_rnnt_build_problem: list[str | None] = []


def _warn_fast_rnnt_build() -> str | None:
    """What :func:`shared.fast_rnnt_build.check_fast_rnnt_build` finds wrong with the
    installed fast_rnnt (with the command that rebuilds it), logged once; None if fine."""
    if not _fast_rnnt_build_problem:
        from shared.fast_rnnt_build import REBUILD_HINT, check_fast_rnnt_build

        try:
            problem = check_fast_rnnt_build()
        except Exception as error:  # a broken install must not stop the other backends
            problem = f"fast_rnnt cannot be checked ({error!r}); {REBUILD_HINT}"
        _fast_rnnt_build_problem.append(problem)
        if problem is not None:
            logging.warning(f"RNN-T loss: {problem}")
    return _fast_rnnt_build_problem[0]


def _triton_error() -> ImportError | None:
    module = _try_import("triton")
    return module if isinstance(module, ImportError) else None


def set_backend(name: str) -> None:
    """Request a backend for all later calls (one of :data:`BACKENDS`).

    Raises:
      ValueError: unknown name.
      ImportError: ``"fast_rnnt"`` without an importable fast_rnnt, or ``"triton"``
        without an importable triton.
    """
    global BACKEND
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(
            f"unknown RNN-T loss backend {name!r}; choose one of {', '.join(BACKENDS)}"
        )
    if name == "fast_rnnt" and _fast_rnnt() is None:
        raise ImportError(
            f"RNN-T loss backend 'fast_rnnt' requested but fast_rnnt does not import "
            f"({_try_import('fast_rnnt')}); use 'auto' or 'torch', or build it with "
            f"shared/build_fast_rnnt.sh"
        )
    if name == "triton" and _triton_error() is not None:
        raise ImportError(
            f"RNN-T loss backend 'triton' requested but triton does not import "
            f"({_triton_error()}); pip install triton, or use 'torch'"
        )
    BACKEND = name
    _logged.clear()


def resolve_backend(device: torch.device | str) -> str:
    """The concrete backend (``fast_rnnt``, ``triton``, ``torch`` or ``reference``) that
    the requested one gives for tensors on ``device``.

    Raises:
      RuntimeError: a forced backend that cannot run on that device (fast_rnnt built
        without CUDA for a CUDA device; triton on the CPU outside its interpreter).
    """
    device_type = torch.device(device).type
    if BACKEND == "auto":
        if _fast_rnnt() is not None and (
            device_type == "cpu" or (device_type == "cuda" and _fast_rnnt_has_cuda())
        ):
            return "fast_rnnt"
        if device_type == "cuda" and _triton_error() is None:
            return "triton"
        return "torch"
    if BACKEND == "fast_rnnt" and device_type == "cuda" and not _fast_rnnt_has_cuda():
        raise RuntimeError("RNN-T loss backend 'fast_rnnt': this fast_rnnt was built without CUDA")
    if BACKEND == "triton" and device_type != "cuda" and not _triton_module().INTERPRETED:
        raise RuntimeError(
            f"RNN-T loss backend 'triton' on {device_type} needs Triton's interpreter: "
            f"set TRITON_INTERPRET=1 before triton is imported"
        )
    return BACKEND


def _backend_for(tensor: Tensor) -> str:
    """:func:`resolve_backend` for ``tensor``'s device, logging a new choice once."""
    name = resolve_backend(tensor.device)
    if (tensor.device.type, name) not in _logged:
        _logged.add((tensor.device.type, name))
        message = f"RNN-T loss backend on {tensor.device.type}: {name} (requested: {BACKEND})"
        if name == "reference":
            logging.warning(f"{message}; the slow pure-PyTorch reference implementation")
        else:
            logging.info(message)
    return name


def _triton_module() -> ModuleType:
    # Imported on first use only: importing triton costs time and, on the CPU,
    # must happen after TRITON_INTERPRET is set.
    return importlib.import_module("shared.mutual_information_triton")


def _loss_module(name: str) -> ModuleType:
    """The module whose loss functions backend ``name`` (fast_rnnt or reference) calls."""
    return _fast_rnnt() if name == "fast_rnnt" else reference


def _recursion_module(name: str) -> ModuleType:
    """The module whose ``mutual_information_recursion`` backend ``name`` uses."""
    if name == "fast_rnnt":
        return _fast_rnnt()
    if name == "triton":
        return _triton_module()
    if name == "torch":
        return mutual_information_torch
    return reference


try:
    set_backend(os.environ.get(BACKEND_ENV_VAR, "").strip() or "auto")
except ValueError as error:
    raise ValueError(f"{BACKEND_ENV_VAR}: {error}") from None


def mutual_information_recursion(
    px: Tensor,
    py: Tensor,
    boundary: Tensor | None = None,
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Total log-probability ``[B]`` of all paths through the lattice (fast_rnnt's contract).

    Args:
      px: ``[B, S, T + 1]`` symbol-arc log-probs; py: ``[B, S + 1, T]`` blank-arc ones.
      boundary: int64 ``[B, 4]`` or ``None`` (see the module docstring).
      return_grad: also return ``(px_grad [B, S, T + 1], py_grad [B, S + 1, T])``,
        the arc occupation probabilities (gradients of ``result.sum()``).
    Returns:
      ``result`` or ``(result, (px_grad, py_grad))``.
    """
    module = _recursion_module(_backend_for(px))
    return module.mutual_information_recursion(
        px=px, py=py, boundary=boundary, return_grad=return_grad
    )


def _loss_from_logprobs(
    px: Tensor,
    py: Tensor,
    boundary: Tensor | None,
    delay_penalty: float,
    reduction: str | None,
    return_grad: bool,
    backend: str,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """:func:`shared.rnnt_reference.loss_from_logprobs` with ``backend``'s recursion."""
    return reference.loss_from_logprobs(
        px, py, boundary, delay_penalty, reduction, return_grad,
        recursion=_recursion_module(backend).mutual_information_recursion,
    )


def rnnt_loss_simple(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str | None = "mean",
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """RNN-T loss of the additive joiner ``log_softmax(am[b, t] + lm[b, s])``.

    Args:
      lm: ``[B, S + 1, C]``; am: ``[B, T, C]``; symbols: int64 ``[B, S]``.
      return_grad: also return ``(px_grad [B, S, T + 1], py_grad [B, S + 1, T])``.
    Returns:
      ``loss`` or ``(loss, (px_grad, py_grad))``.
    """
    backend = _backend_for(am)
    if backend not in ("fast_rnnt", "reference"):
        px, py = reference.get_rnnt_logprobs(
            lm, am, symbols, termination_symbol, rnnt_type, boundary
        )
        return _loss_from_logprobs(
            px, py, boundary, delay_penalty, reduction, return_grad, backend
        )
    return _loss_module(backend).rnnt_loss_simple(
        lm=lm,
        am=am,
        symbols=symbols,
        termination_symbol=termination_symbol,
        boundary=boundary,
        rnnt_type=rnnt_type,
        delay_penalty=delay_penalty,
        reduction=reduction,
        return_grad=return_grad,
    )


def rnnt_loss_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str | None = "mean",
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """:func:`rnnt_loss_simple` interpolated with LM-only and AM-only log-probs.

    The recipe calls it with ``lm_only_scale=lm_scale``,
    ``am_only_scale=am_scale``, ``reduction="sum"``, ``return_grad=True`` and
    feeds ``(px_grad, py_grad)`` to :func:`get_rnnt_prune_ranges`.
    """
    backend = _backend_for(am)
    if backend not in ("fast_rnnt", "reference"):
        px, py = reference.get_rnnt_logprobs_smoothed(
            lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale, boundary,
            rnnt_type,
        )
        return _loss_from_logprobs(
            px, py, boundary, delay_penalty, reduction, return_grad, backend
        )
    return _loss_module(backend).rnnt_loss_smoothed(
        lm=lm,
        am=am,
        symbols=symbols,
        termination_symbol=termination_symbol,
        lm_only_scale=lm_only_scale,
        am_only_scale=am_only_scale,
        boundary=boundary,
        rnnt_type=rnnt_type,
        delay_penalty=delay_penalty,
        reduction=reduction,
        return_grad=return_grad,
    )


def get_rnnt_prune_ranges(
    px_grad: Tensor,
    py_grad: Tensor,
    boundary: Tensor,
    s_range: int,
) -> Tensor:
    """Per-frame windows of ``s_range`` consecutive symbol positions, int64 ``[B, T, s_range]``.

    ``s_range`` may be raised so that every sequence can emit all its symbols
    and is capped at ``S + 1``; the last dimension of the result is the value
    actually used.
    """
    return _loss_module(_backend_for(px_grad)).get_rnnt_prune_ranges(
        px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=s_range
    )


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> tuple[Tensor, Tensor]:
    """``am [B, T, D]``, ``lm [B, S + 1, D]`` -> both ``[B, T, s_range, D]`` on the kept nodes."""
    return _loss_module(_backend_for(am)).do_rnnt_pruning(am=am, lm=lm, ranges=ranges)


def get_rnnt_logprobs_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Arc log-probs of a pruned joiner output, on the full lattice (regular topology).

    The contract of fast_rnnt's ``get_rnnt_logprobs_pruned(..., rnnt_type="regular")``,
    computed with less memory traffic: fast_rnnt normalises with ``logsumexp`` and reads
    the symbol and the blank scores with two separate indexing operations, and the
    backward pass of each of the three builds its own dense ``[B, T, s_range, C]``
    gradient. Here one fused ``log_softmax`` and one ``gather`` of (symbol, blank) pairs
    do the same work (forward + backward 3.3 ms against 12-14 ms at B=8, T=150,
    s_range=5, C=500 on 2 threads).

    Args:
      logits: ``[B, T, s_range, C]``; ``logits[b, t, k]`` is the joiner output at lattice
        node ``(ranges[b, t, k], t)``.
      symbols: int64 ``[B, S]``.
      ranges: int64 ``[B, T, s_range]`` from :func:`get_rnnt_prune_ranges`.
      termination_symbol: the blank id.
      boundary: int64 ``[B, 4]`` or ``None``, see the module docstring.
    Returns:
      ``(px [B, S, T + 1], py [B, S + 1, T])``: ``px[b, s, t]`` is the log-prob of
      emitting ``symbols[b, s]`` at node ``(s, t)`` and ``py[b, s, t]`` that of blank;
      nodes outside the ranges and ``px[b, :, T_b]`` are ``-inf``.
    """
    batch_size, num_frames, s_range, _ = logits.shape
    num_symbols = symbols.shape[1]
    # Node S emits no symbol; pad with blank so that it can be gathered (and dropped).
    symbols_padded = torch.cat((symbols, symbols.new_full((batch_size, 1), termination_symbol)), 1)
    pruned_symbols = torch.gather(
        symbols_padded, 1, ranges.reshape(batch_size, num_frames * s_range)
    ).reshape(batch_size, num_frames, s_range)
    symbol_and_blank = torch.stack(
        (pruned_symbols, torch.full_like(pruned_symbols, termination_symbol)), dim=3
    )
    arc_logprobs = torch.gather(logits.log_softmax(dim=3), 3, symbol_and_blank)
    # Each frame's s_range nodes go back to their place in the (S + 1)-node column.
    on_lattice = logits.new_full((batch_size, num_frames, num_symbols + 1, 2), float("-inf"))
    on_lattice = on_lattice.scatter(2, ranges.unsqueeze(3).expand(-1, -1, -1, 2), arc_logprobs)
    px = on_lattice[:, :, :num_symbols, 0].transpose(1, 2)  # [B, S, T]
    py = on_lattice[:, :, :, 1].transpose(1, 2)  # [B, S + 1, T]
    # No symbol is emitted on the frame after the last one.
    end_frames = (
        torch.full((batch_size,), num_frames, device=logits.device)
        if boundary is None
        else boundary[:, 3].to(logits.device)
    )
    frame = torch.arange(num_frames + 1, device=logits.device)
    px = torch.nn.functional.pad(px, (0, 1), value=float("-inf")).masked_fill(
        frame.reshape(1, 1, -1) == end_frames.reshape(-1, 1, 1), float("-inf")
    )
    return px, py


def rnnt_loss_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str | None = "mean",
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """RNN-T loss of a pruned joiner output ``logits [B, T, s_range, C]`` on ``ranges``.

    The arc log-probs come from :func:`get_rnnt_logprobs_pruned` and only the lattice
    recursion from the backend; with fast_rnnt, other topologies or a delay penalty
    call fast_rnnt's own ``rnnt_loss_pruned``.
    """
    backend = _backend_for(logits)
    if backend == "reference" or (
        backend == "fast_rnnt" and (rnnt_type != "regular" or delay_penalty != 0.0)
    ):
        return _loss_module(backend).rnnt_loss_pruned(
            logits=logits,
            symbols=symbols,
            ranges=ranges,
            termination_symbol=termination_symbol,
            boundary=boundary,
            rnnt_type=rnnt_type,
            delay_penalty=delay_penalty,
            reduction=reduction,
            return_grad=return_grad,
        )
    if rnnt_type != "regular":
        raise NotImplementedError(
            f"RNN-T loss backend {backend!r} supports only rnnt_type='regular', got {rnnt_type!r}"
        )
    px, py = get_rnnt_logprobs_pruned(logits, symbols, ranges, termination_symbol, boundary)
    return _loss_from_logprobs(px, py, boundary, delay_penalty, reduction, return_grad, backend)


def rnnt_loss(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str | None = "mean",
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Full (unpruned) RNN-T loss of a joiner output ``logits [B, T, S + 1, C]``."""
    backend = _backend_for(logits)
    if backend not in ("fast_rnnt", "reference"):
        px, py = reference.get_rnnt_logprobs_joint(
            logits, symbols, termination_symbol, boundary, rnnt_type
        )
        return _loss_from_logprobs(
            px, py, boundary, delay_penalty, reduction, return_grad, backend
        )
    return _loss_module(backend).rnnt_loss(
        logits=logits,
        symbols=symbols,
        termination_symbol=termination_symbol,
        boundary=boundary,
        rnnt_type=rnnt_type,
        delay_penalty=delay_penalty,
        reduction=reduction,
        return_grad=return_grad,
    )
