"""The (pruned) RNN-T loss used by the recipe: fast_rnnt if available, else a reference.

The model imports the six functions below from here instead of from k2 /
fast_rnnt, so that the recipe runs (slowly) even where the compiled
``fast_rnnt`` extension cannot be built.  All functions follow fast_rnnt's
contracts exactly; see :mod:`shared.rnnt_reference` for the shapes and the
``boundary`` / ``ranges`` conventions.  In short:

* ``boundary``: int64 ``[B, 4]``, rows ``(begin_symbol, begin_frame,
  end_symbol, end_frame)``, ``None`` meaning ``(0, 0, S, T)``.
* ``termination_symbol``: the blank id.
* ``reduction``: ``"none"`` (``[B]``) | ``"mean"`` | ``"sum"``.

Backend selection (once, at import time), via the environment variable
``RNNT_LOSS_BACKEND``:

* unset, empty or ``"auto"``: ``fast_rnnt`` if it imports, else the reference;
* ``"fast_rnnt"``: ``fast_rnnt``, failing with ``ImportError`` if missing;
* ``"reference"``: always the pure-PyTorch reference.

Whenever the reference is used a single ``logging.warning`` is emitted (it is
roughly an order of magnitude slower than fast_rnnt on CPU).  The chosen
backend is available as :data:`BACKEND`.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

from torch import Tensor

__all__ = [
    "BACKEND",
    "do_rnnt_pruning",
    "get_rnnt_prune_ranges",
    "rnnt_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
]

BACKEND_ENV_VAR = "RNNT_LOSS_BACKEND"
_BACKEND_CHOICES = ("auto", "fast_rnnt", "reference")


def _select_backend() -> tuple[str, ModuleType]:
    requested = os.environ.get(BACKEND_ENV_VAR, "").strip().lower() or "auto"
    if requested not in _BACKEND_CHOICES:
        raise ValueError(f"{BACKEND_ENV_VAR}={requested!r}; expected one of {_BACKEND_CHOICES}")

    import_error: ImportError | None = None
    if requested != "reference":
        try:
            import fast_rnnt

            return "fast_rnnt", fast_rnnt
        except ImportError as error:
            if requested == "fast_rnnt":
                raise
            import_error = error

    from shared import rnnt_reference

    reason = f"{BACKEND_ENV_VAR}=reference" if import_error is None else f"{import_error}"
    logging.warning(
        f"RNN-T loss: using the slow pure-PyTorch reference implementation ({reason})"
    )
    return "reference", rnnt_reference


_backend_name, _impl = _select_backend()

#: Name of the implementation behind this module: ``"fast_rnnt"`` or ``"reference"``.
BACKEND: str = _backend_name


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
    return _impl.rnnt_loss_simple(
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
    return _impl.rnnt_loss_smoothed(
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
    return _impl.get_rnnt_prune_ranges(
        px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=s_range
    )


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> tuple[Tensor, Tensor]:
    """``am [B, T, D]``, ``lm [B, S + 1, D]`` -> both ``[B, T, s_range, D]`` on the kept nodes."""
    return _impl.do_rnnt_pruning(am=am, lm=lm, ranges=ranges)


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
    """RNN-T loss of a pruned joiner output ``logits [B, T, s_range, C]`` on ``ranges``."""
    return _impl.rnnt_loss_pruned(
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
    return _impl.rnnt_loss(
        logits=logits,
        symbols=symbols,
        termination_symbol=termination_symbol,
        boundary=boundary,
        rnnt_type=rnnt_type,
        delay_penalty=delay_penalty,
        reduction=reduction,
        return_grad=return_grad,
    )
