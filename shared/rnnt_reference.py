"""Pure-PyTorch reference implementation of the (pruned) RNN-T loss.

This module mirrors the public API and argument conventions of k2 / fast_rnnt
(``rnnt_loss``, ``rnnt_loss_simple``, ``rnnt_loss_smoothed``,
``get_rnnt_prune_ranges``, ``do_rnnt_pruning``, ``rnnt_loss_pruned`` and the
underlying ``mutual_information_recursion``) so that it can serve

* as the oracle in tests (it is written for clarity, not speed: its recursion runs
  autograd through every anti-diagonal), and
* as the ``reference`` backend of :mod:`shared.rnnt_loss` (a slow checker; the
  supported pure-PyTorch backend is :mod:`shared.mutual_information_torch`).

Its other functions (arc log-probs, pruning ranges, delay penalty) are vectorised
and are what the ``torch`` and ``triton`` backends of :mod:`shared.rnnt_loss` use
around their own recursions.

Conventions shared by every function here (identical to fast_rnnt):

``B``
    batch size.
``T``
    number of (encoder) frames, the maximum over the batch.
``S``
    number of symbols of the label sequence, the maximum over the batch.
    The lattice has ``(S + 1) x (T + 1)`` nodes; node ``(s, t)`` means
    "``s`` symbols emitted and ``t`` frames consumed".
``C``
    vocabulary size, *including* the blank symbol.
``termination_symbol``
    the blank symbol id (``0 <= termination_symbol < C``).  Only the regular
    RNN-T topology is supported: emitting a symbol stays on the same frame
    (``(s, t) -> (s + 1, t)``), emitting blank moves to the next frame
    (``(s, t) -> (s, t + 1)``).  A path ends with a blank on the last frame.
``boundary``
    optional ``torch.int64`` tensor of shape ``[B, 4]``; row ``b`` is
    ``(begin_symbol, begin_frame, end_symbol, end_frame)``.  Sequence ``b``
    uses lattice nodes ``begin_symbol <= s <= end_symbol`` and
    ``begin_frame <= t <= end_frame``: the recursion starts at
    ``(begin_symbol, begin_frame)`` with log-score 0 and its result is the
    score of node ``(end_symbol, end_frame)``.  ``None`` means ``(0, 0, S, T)``
    for every sequence.  In practice ``begin_symbol = begin_frame = 0``,
    ``end_symbol`` is the number of labels and ``end_frame`` the number of
    frames of the utterance.  ``end_symbol >= 1`` is required (as in
    fast_rnnt).
``reduction``
    ``"none"`` (per-sequence losses, shape ``[B]``), ``"mean"`` (mean over
    the batch) or ``"sum"``.
``loss``
    the negated total log-probability of all alignments, i.e. ``-log p(y|x)``.

Numerical note: inside the recursion ``-inf`` is replaced by a large finite
negative number (:data:`_NEG_FINITE`) so that autograd never meets
``-inf - (-inf)``; a sequence whose best path only goes through such entries
is reported with score ``-inf`` (loss ``+inf``) and zero gradient.  Half
precision inputs are promoted to float32 for the recursion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "add_delay_penalty",
    "do_rnnt_pruning",
    "get_rnnt_logprobs",
    "get_rnnt_logprobs_joint",
    "get_rnnt_logprobs_pruned",
    "get_rnnt_logprobs_smoothed",
    "get_rnnt_prune_ranges",
    "loss_from_logprobs",
    "mutual_information_recursion",
    "rnnt_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
]

# Stand-in for -inf inside the recursion.  It must be finite (so that
# logaddexp and its backward never compute inf - inf = nan), far below any real
# log-probability, and small enough in magnitude that summing it along a path
# of a few thousand steps cannot overflow float32.
_NEG_FINITE = -1.0e10

_REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------
# Argument checking helpers
# ---------------------------------------------------------------------------


def _check_rnnt_type(rnnt_type: str) -> None:
    if rnnt_type != "regular":
        raise NotImplementedError(
            f"The reference RNN-T implementation supports only rnnt_type='regular', "
            f"got {rnnt_type!r}"
        )


def _check_boundary(
    boundary: Tensor | None, batch_size: int, num_symbols: int, num_frames: int
) -> Tensor:
    """Return ``boundary`` (or the default ``(0, 0, S, T)`` rows) after checking it.

    Args:
      boundary: ``None`` or an int64 tensor ``[B, 4]`` of
        ``(begin_symbol, begin_frame, end_symbol, end_frame)``.
      batch_size: ``B``.
      num_symbols: ``S``, the padded number of symbols.
      num_frames: ``T``, the padded number of frames.
    Returns:
      An int64 tensor of shape ``[B, 4]``.
    """
    if boundary is None:
        return torch.tensor(
            [[0, 0, num_symbols, num_frames]], dtype=torch.int64
        ).expand(batch_size, 4)
    if boundary.shape != (batch_size, 4):
        raise ValueError(f"boundary must have shape ({batch_size}, 4), got {tuple(boundary.shape)}")
    if boundary.dtype != torch.int64:
        raise ValueError(f"boundary must be int64, got {boundary.dtype}")
    s_begin, t_begin, s_end, t_end = boundary.cpu().unbind(1)
    if not bool(((0 <= s_begin) & (s_begin <= s_end) & (s_end <= num_symbols)).all()):
        raise ValueError(f"Need 0 <= begin_symbol <= end_symbol <= S={num_symbols}: {boundary}")
    if not bool(((0 <= t_begin) & (t_begin <= t_end) & (t_end <= num_frames)).all()):
        raise ValueError(f"Need 0 <= begin_frame <= end_frame <= T={num_frames}: {boundary}")
    return boundary


def _check_rnnt_lengths(boundary: Tensor | None, num_symbols: int) -> None:
    # Same precondition as fast_rnnt: every sequence has at least one symbol.
    if boundary is None:
        if num_symbols < 1:
            raise ValueError(f"Need S >= 1, got S={num_symbols}")
    elif not bool((boundary[:, 2] >= 1).all()):
        raise ValueError(f"Need end_symbol >= 1 for every sequence: {boundary[:, 2]}")


def _reduce(negated_scores: Tensor, reduction: str | None) -> Tensor:
    """Turn per-sequence total log-probs ``[B]`` into the requested loss."""
    if reduction == "none":
        return -negated_scores
    if reduction == "mean":
        return -negated_scores.mean()
    if reduction == "sum":
        return -negated_scores.sum()
    raise ValueError(f"reduction should be one of {_REDUCTIONS}, given {reduction!r}")


# ---------------------------------------------------------------------------
# The lattice recursion
# ---------------------------------------------------------------------------


def _lattice_log_scores(px: Tensor, py: Tensor, boundary: Tensor) -> Tensor:
    """Differentiable forward (alpha) recursion; returns the ``[B]`` final scores.

    ``p[b, s, t] = logaddexp(p[b, s-1, t] + px[b, s-1, t], p[b, s, t-1] + py[b, s, t-1])``
    with ``p[b, begin_symbol, begin_frame] = 0`` and nodes before the begin
    node unreachable.  The recursion is evaluated one anti-diagonal
    ``d = s + t`` at a time: both predecessors of a node lie on diagonal
    ``d - 1``, so a whole diagonal is computed with a few batched tensor ops
    and the Python loop has only ``S + T + 1`` iterations.

    Args:
      px: ``[B, S, T + 1]`` log-probs of the "symbol" arcs (``-inf`` allowed).
      py: ``[B, S + 1, T]`` log-probs of the "blank" arcs (``-inf`` allowed).
      boundary: int64 ``[B, 4]`` (already checked), on any device.
    Returns:
      ``[B]`` tensor with ``p[b, end_symbol, end_frame]``; unreachable end
      nodes give a value ``<= _NEG_FINITE / 2`` (mapped to ``-inf`` by the caller).
    """
    batch_size, num_symbols, num_frames_plus_one = px.shape
    num_frames = num_frames_plus_one - 1
    device = px.device
    work_dtype = px.dtype if px.dtype in (torch.float32, torch.float64) else torch.float32
    neg = torch.tensor(_NEG_FINITE, dtype=work_dtype, device=device)
    zero = torch.tensor(0.0, dtype=work_dtype, device=device)

    # Re-index the arcs by the node they *enter*, on a common [S+1, T+1] grid:
    # px_in[b, s, t] = px[b, s-1, t]  (enter (s, t) from (s-1, t)),
    # py_in[b, s, t] = py[b, s, t-1]  (enter (s, t) from (s, t-1)).
    px_work = px.to(work_dtype).clamp(min=_NEG_FINITE)
    py_work = py.to(work_dtype).clamp(min=_NEG_FINITE)
    px_in = torch.cat(
        (torch.full((batch_size, 1, num_frames + 1), _NEG_FINITE, dtype=work_dtype, device=device),
         px_work),
        dim=1,
    )
    py_in = torch.cat(
        (torch.full((batch_size, num_symbols + 1, 1), _NEG_FINITE, dtype=work_dtype, device=device),
         py_work),
        dim=2,
    )

    num_diagonals = num_symbols + num_frames + 1
    symbol_index = torch.arange(num_symbols + 1, device=device)  # [S+1]
    diagonal_index = torch.arange(num_diagonals, device=device)  # [D]
    frame_index = diagonal_index[:, None] - symbol_index[None, :]  # [D, S+1]: t = d - s
    on_grid = (frame_index >= 0) & (frame_index <= num_frames)
    flat_index = symbol_index[None, :] * (num_frames + 1) + frame_index.clamp(0, num_frames)

    # [B, D, S+1]: arc scores entering node (s, d - s); off-grid entries are junk
    # and are masked below.
    px_diag = px_in.reshape(batch_size, -1)[:, flat_index.reshape(-1)].reshape(
        batch_size, num_diagonals, num_symbols + 1
    )
    py_diag = py_in.reshape(batch_size, -1)[:, flat_index.reshape(-1)].reshape(
        batch_size, num_diagonals, num_symbols + 1
    )

    boundary = boundary.to(device)
    s_begin, t_begin, s_end, t_end = (x.reshape(batch_size, 1, 1) for x in boundary.unbind(1))
    # Nodes that can lie on a path of sequence b: on the grid and not before
    # its begin node (nodes after its end node are harmless: they are never
    # predecessors of the end node).  Mass only flows out of the start node, so
    # this mask is defensive: it pins every other node to exactly _NEG_FINITE
    # instead of letting off-grid junk or sums of stand-ins drift.
    alive = on_grid & (symbol_index >= s_begin) & (frame_index >= t_begin)  # [B, D, S+1]
    is_start = (symbol_index == s_begin) & (frame_index == t_begin)  # [B, D, S+1]

    neg_column = torch.full((batch_size, 1), _NEG_FINITE, dtype=work_dtype, device=device)
    previous = torch.full(
        (batch_size, num_symbols + 1), _NEG_FINITE, dtype=work_dtype, device=device
    )
    diagonals = []
    last_needed = int((boundary[:, 2] + boundary[:, 3]).max())
    for d in range(last_needed + 1):
        from_symbol_arc = torch.cat((neg_column, previous[:, :-1]), dim=1) + px_diag[:, d]
        from_blank_arc = previous + py_diag[:, d]
        current = torch.logaddexp(from_symbol_arc, from_blank_arc)
        current = torch.where(alive[:, d], current, neg)
        current = torch.where(is_start[:, d], zero, current)
        diagonals.append(current)
        previous = current
    lattice = torch.stack(diagonals, dim=1)  # [B, last_needed + 1, S+1]

    batch_index = torch.arange(batch_size, device=device)
    end_symbol = s_end.reshape(batch_size)
    end_diagonal = end_symbol + t_end.reshape(batch_size)
    return lattice[batch_index, end_diagonal, end_symbol]


class _MutualInformationFunction(torch.autograd.Function):
    """Autograd wrapper that runs the recursion once and caches its gradients.

    The forward pass computes the scores *and* their gradients w.r.t. ``px``
    and ``py`` (with autograd, on detached copies).  Because sequences are
    independent, the gradient of ``sum_b w_b * score_b`` is
    ``w_b * d score_b / d px[b]``, so backward is a cheap rescaling.  This also
    gives the occupation probabilities (``return_grad``) for free.
    """

    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, boundary: Tensor):  # type: ignore[override]
        with torch.enable_grad():
            px_leaf = px.detach().requires_grad_(True)
            py_leaf = py.detach().requires_grad_(True)
            scores = _lattice_log_scores(px_leaf, py_leaf, boundary)
            px_grad, py_grad = torch.autograd.grad(scores.sum(), (px_leaf, py_leaf))
        scores = scores.detach()
        dead = scores <= _NEG_FINITE / 2
        if bool(dead.any()):
            # No path survives: report -inf like fast_rnnt and do not leak the
            # (meaningless) gradient through the finite stand-ins.
            scores = scores.masked_fill(dead, float("-inf"))
            px_grad = px_grad.masked_fill(dead.reshape(-1, 1, 1), 0.0)
            py_grad = py_grad.masked_fill(dead.reshape(-1, 1, 1), 0.0)
        scores = scores.to(px.dtype)
        ctx.save_for_backward(px_grad, py_grad)
        ctx.mark_non_differentiable(px_grad, py_grad)
        return scores, px_grad, py_grad

    @staticmethod
    def backward(ctx, scores_grad: Tensor, _px_grad_grad: Tensor, _py_grad_grad: Tensor):  # type: ignore[override]
        px_grad, py_grad = ctx.saved_tensors
        weight = scores_grad.reshape(-1, 1, 1)
        return px_grad * weight, py_grad * weight, None


def mutual_information_recursion(
    px: Tensor,
    py: Tensor,
    boundary: Tensor | None = None,
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Total log-score of all monotonic paths through the ``(S+1) x (T+1)`` lattice.

    Computes, for each sequence ``b``::

        p[b, s_begin, t_begin] = 0
        p[b, s, t] = logaddexp(p[b, s-1, t] + px[b, s-1, t],
                               p[b, s, t-1] + py[b, s, t-1])
        result[b] = p[b, s_end, t_end]

    where out-of-range terms (negative indices, or before the begin node)
    count as ``-inf``.  Only the "regular" layout ``px: [B, S, T+1]`` is
    supported (the "modified" layout ``[B, S, T]`` of fast_rnnt is not).

    Args:
      px: ``[B, S, T + 1]`` float tensor, log-score of the arc
        ``(s, t) -> (s + 1, t)``.
      py: ``[B, S + 1, T]`` float tensor of the same dtype, log-score of the
        arc ``(s, t) -> (s, t + 1)``.
      boundary: ``None`` (meaning ``(0, 0, S, T)``) or int64 ``[B, 4]`` with
        rows ``(s_begin, t_begin, s_end, t_end)``.
      return_grad: also return ``(px_grad, py_grad)``, the gradients of
        ``result.sum()`` w.r.t. ``px`` and ``py`` (= arc occupation
        probabilities), with the shapes of ``px`` and ``py``.
    Returns:
      ``result`` of shape ``[B]``, or ``(result, (px_grad, py_grad))`` if
      ``return_grad``.  ``result`` is differentiable w.r.t. ``px`` and ``py``.
    """
    if px.ndim != 3:
        raise ValueError(f"px must be 3-D [B, S, T+1], got shape {tuple(px.shape)}")
    batch_size, num_symbols, num_frames_plus_one = px.shape
    num_frames = py.shape[-1]
    if num_frames_plus_one != num_frames + 1:
        raise NotImplementedError(
            "Only the regular layout px: [B, S, T+1] is supported by the reference"
        )
    if py.shape != (batch_size, num_symbols + 1, num_frames):
        raise ValueError(
            f"py must have shape {(batch_size, num_symbols + 1, num_frames)}, got {tuple(py.shape)}"
        )
    if px.dtype != py.dtype:
        raise ValueError(f"px and py must have the same dtype: {px.dtype} vs {py.dtype}")
    boundary = _check_boundary(boundary, batch_size, num_symbols, num_frames)

    needs_grad = return_grad or (
        torch.is_grad_enabled() and (px.requires_grad or py.requires_grad)
    )
    if not needs_grad:
        with torch.no_grad():
            scores = _lattice_log_scores(px, py, boundary)
        scores = scores.masked_fill(scores <= _NEG_FINITE / 2, float("-inf"))
        return scores.to(px.dtype)

    scores, px_grad, py_grad = _MutualInformationFunction.apply(px, py, boundary)
    return (scores, (px_grad, py_grad)) if return_grad else scores


# ---------------------------------------------------------------------------
# From network outputs to (px, py)
# ---------------------------------------------------------------------------


def _append_no_emit_column(px: Tensor, boundary: Tensor | None) -> Tensor:
    """Extend ``px`` from ``[B, S, T]`` to ``[B, S, T + 1]`` with ``-inf`` at ``t = T``.

    No symbol can be emitted on the one-past-the-last frame; for that reason
    also ``px[b, :, end_frame]`` is set to ``-inf`` when ``boundary`` is
    given.  (Done after any interpolation so that no ``0 * -inf`` occurs.)
    """
    batch_size, num_symbols, num_frames = px.shape
    px = torch.cat(
        (px, torch.full((batch_size, num_symbols, 1), float("-inf"), dtype=px.dtype,
                        device=px.device)),
        dim=2,
    )
    if boundary is not None:
        frame = torch.arange(num_frames + 1, device=px.device)
        past_end = frame.reshape(1, 1, -1) == boundary[:, 3].to(px.device).reshape(-1, 1, 1)
        px = px.masked_fill(past_end, float("-inf"))
    return px


def add_delay_penalty(px: Tensor, boundary: Tensor | None, delay_penalty: float) -> Tensor:
    """Add ``delay_penalty * ((T_b - 1) / 2 - t)`` to ``px[b, :, t]`` (as fast_rnnt).

    This rewards emitting symbols early (relative to the utterance middle).
    """
    if delay_penalty <= 0.0:
        return px
    batch_size, _, num_frames_plus_one = px.shape
    if boundary is None:
        num_frames = torch.full((batch_size,), num_frames_plus_one - 1, device=px.device)
    else:
        num_frames = boundary[:, 3].to(px.device)
    offset = (num_frames - 1).to(px.dtype) / 2
    frame = torch.arange(num_frames_plus_one, device=px.device, dtype=px.dtype)
    penalty = (offset.reshape(-1, 1, 1) - frame.reshape(1, 1, -1)) * delay_penalty
    return px + penalty


def _gather_symbol_scores(scores: Tensor, symbols: Tensor) -> Tensor:
    """``[B, T, C]`` scores, ``[B, S]`` symbols -> ``[B, S, T]`` scores of those symbols."""
    batch_size, num_frames, _ = scores.shape
    num_symbols = symbols.shape[1]
    index = symbols.unsqueeze(1).expand(batch_size, num_frames, num_symbols)
    return torch.gather(scores, dim=2, index=index).transpose(1, 2)


def _joint_log_normalizer(lm: Tensor, am: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``log sum_c exp(lm[b, s, c] + am[b, t, c])`` as ``[B, S + 1, T]``, without the 4-D tensor.

    Exponentiates after subtracting per-row maxima (so ``exp`` can neither
    overflow nor underflow everywhere), contracts over ``C`` with a batched
    matmul and adds the maxima back.  Also returns the shifted probabilities
    and maxima for reuse.
    """
    am_max = am.max(dim=2, keepdim=True).values  # [B, T, 1]
    lm_max = lm.max(dim=2, keepdim=True).values  # [B, S+1, 1]
    am_probs = (am - am_max).exp()
    lm_probs = (lm - lm_max).exp()
    tiny = torch.finfo(am_probs.dtype).tiny  # keeps log() finite if everything underflows
    log_norm = (torch.matmul(lm_probs, am_probs.transpose(1, 2)) + tiny).log()
    log_norm = log_norm + lm_max + am_max.transpose(1, 2)
    return log_norm, am_probs, lm_probs, am_max


def _check_simple_inputs(lm: Tensor, am: Tensor, symbols: Tensor) -> tuple[int, int, int]:
    if lm.ndim != 3 or am.ndim != 3:
        raise ValueError(f"lm and am must be 3-D, got {tuple(lm.shape)} and {tuple(am.shape)}")
    batch_size, num_frames, vocab_size = am.shape
    if lm.shape[0] != batch_size or lm.shape[2] != vocab_size:
        raise ValueError(f"lm {tuple(lm.shape)} does not match am {tuple(am.shape)}")
    num_symbols = lm.shape[1] - 1
    if symbols.shape != (batch_size, num_symbols):
        raise ValueError(f"symbols must be {(batch_size, num_symbols)}, got {tuple(symbols.shape)}")
    return batch_size, num_frames, num_symbols


def get_rnnt_logprobs(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    rnnt_type: str = "regular",
    boundary: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Arc log-probs of the "simple" (additive) joiner ``log_softmax(lm[s] + am[t])``.

    Args:
      lm: ``[B, S + 1, C]`` decoder ("language model") part of the logits;
        ``lm[b, s]`` is conditioned on the first ``s`` symbols.
      am: ``[B, T, C]`` encoder ("acoustic model") part of the logits.
      symbols: int64 ``[B, S]`` label ids in ``[0, C)``.
      termination_symbol: blank id.
      rnnt_type: must be ``"regular"``.
      boundary: see module docstring; only ``end_frame`` is used here.
    Returns:
      ``(px, py)`` with ``px: [B, S, T + 1]`` (log-prob of emitting
      ``symbols[b, s]`` at node ``(s, t)``, ``-inf`` at ``t = T`` and at
      ``t = end_frame``) and ``py: [B, S + 1, T]`` (log-prob of blank).
    """
    _check_rnnt_type(rnnt_type)
    _check_simple_inputs(lm, am, symbols)
    num_symbols = symbols.shape[1]
    _check_rnnt_lengths(boundary, num_symbols)
    log_norm, _, _, _ = _joint_log_normalizer(lm, am)  # [B, S+1, T]
    px_am = _gather_symbol_scores(am, symbols)  # [B, S, T]
    px_lm = torch.gather(lm[:, :num_symbols], dim=2, index=symbols.unsqueeze(2))  # [B, S, 1]
    px = px_am + px_lm - log_norm[:, :num_symbols]
    py = am[:, :, termination_symbol].unsqueeze(1) + lm[:, :, termination_symbol].unsqueeze(2)
    py = py - log_norm
    return _append_no_emit_column(px, boundary), py


def get_rnnt_logprobs_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
) -> tuple[Tensor, Tensor]:
    """Like :func:`get_rnnt_logprobs` but interpolated with LM-only and AM-only log-probs.

    The arc log-probs are::

        (1 - lm_only_scale - am_only_scale) * log_softmax(lm[s] + am[t])
        + lm_only_scale * log_softmax(lm[s])
        + am_only_scale * log_softmax(am[t] + log(unigram))

    where ``unigram`` is ``softmax(lm)`` averaged over *all* ``B x (S + 1)``
    positions of the batch (padding included, as in fast_rnnt), so the AM-only
    term uses a history-independent LM.  The smoothing regularises the simple
    loss so that its occupation probabilities give good pruning ranges.

    Args / Returns: as :func:`get_rnnt_logprobs`, plus the two scales.
    """
    _check_rnnt_type(rnnt_type)
    batch_size, num_frames, _ = _check_simple_inputs(lm, am, symbols)
    num_symbols = symbols.shape[1]
    _check_rnnt_lengths(boundary, num_symbols)
    log_norm, am_probs, lm_probs, am_max = _joint_log_normalizer(lm, am)
    tiny = torch.finfo(lm_probs.dtype).tiny

    lm_probs_sum = lm_probs.sum(dim=2, keepdim=True)  # [B, S+1, 1]
    lm_only_log_norm = lm_probs_sum.log() + lm.max(dim=2, keepdim=True).values
    unigram = (lm_probs / lm_probs_sum).mean(dim=(0, 1)) + tiny  # [C]
    # log sum_c exp(am[b, t, c]) * unigram[c], as [B, 1, T]
    am_only_log_norm = (torch.matmul(am_probs, unigram).log() + am_max.squeeze(2)).unsqueeze(1)
    log_unigram = unigram.log()

    px_am = _gather_symbol_scores(am, symbols)  # [B, S, T]
    px_lm = torch.gather(lm[:, :num_symbols], dim=2, index=symbols.unsqueeze(2))  # [B, S, 1]
    px_joint = px_am + px_lm - log_norm[:, :num_symbols]
    px_lm_only = px_lm - lm_only_log_norm[:, :num_symbols]
    px_am_only = px_am + log_unigram[symbols].unsqueeze(2) - am_only_log_norm

    am_blank = am[:, :, termination_symbol].unsqueeze(1)  # [B, 1, T]
    lm_blank = lm[:, :, termination_symbol].unsqueeze(2)  # [B, S+1, 1]
    py_joint = am_blank + lm_blank - log_norm
    py_lm_only = lm_blank - lm_only_log_norm
    py_am_only = am_blank + log_unigram[termination_symbol] - am_only_log_norm

    joint_scale = 1.0 - lm_only_scale - am_only_scale
    px = joint_scale * px_joint + lm_only_scale * px_lm_only + am_only_scale * px_am_only
    py = joint_scale * py_joint + lm_only_scale * py_lm_only + am_only_scale * py_am_only
    assert px.shape == (batch_size, num_symbols, num_frames), px.shape
    return _append_no_emit_column(px, boundary), py


def get_rnnt_logprobs_joint(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
) -> tuple[Tensor, Tensor]:
    """Arc log-probs ``log_softmax(logits[b, t, s])`` of a full joiner output.

    Args:
      logits: ``[B, T, S + 1, C]`` joiner output; ``logits[b, t, s]`` is the
        distribution at lattice node ``(s, t)``.
      symbols: int64 ``[B, S]``.
      termination_symbol: blank id.
      boundary: see module docstring.
      rnnt_type: must be ``"regular"``.
    Returns:
      ``(px: [B, S, T + 1], py: [B, S + 1, T])`` as in :func:`get_rnnt_logprobs`.
    """
    _check_rnnt_type(rnnt_type)
    if logits.ndim != 4:
        raise ValueError(f"logits must be 4-D [B, T, S+1, C], got {tuple(logits.shape)}")
    batch_size, num_frames, num_symbols_plus_one, _ = logits.shape
    num_symbols = num_symbols_plus_one - 1
    if symbols.shape != (batch_size, num_symbols):
        raise ValueError(f"symbols must be {(batch_size, num_symbols)}, got {tuple(symbols.shape)}")
    _check_rnnt_lengths(boundary, num_symbols)
    log_norm = torch.logsumexp(logits, dim=3)  # [B, T, S+1]
    index = symbols.reshape(batch_size, 1, num_symbols, 1).expand(
        batch_size, num_frames, num_symbols, 1
    )
    symbol_logits = torch.gather(logits[:, :, :num_symbols], dim=3, index=index).squeeze(3)
    px = (symbol_logits - log_norm[:, :, :num_symbols]).transpose(1, 2)  # [B, S, T]
    py = (logits[:, :, :, termination_symbol] - log_norm).transpose(1, 2)  # [B, S+1, T]
    return _append_no_emit_column(px, boundary), py


def get_rnnt_logprobs_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
) -> tuple[Tensor, Tensor]:
    """Arc log-probs from a pruned joiner output; pruned-away nodes get ``-inf``.

    Args:
      logits: ``[B, T, s_range, C]``; ``logits[b, t, k]`` is the joiner output
        at lattice node ``(ranges[b, t, k], t)``.
      symbols: int64 ``[B, S]``.
      ranges: int64 ``[B, T, s_range]``, ``ranges[b, t] = r0 + arange(s_range)``
        with ``0 <= r0 <= S + 1 - s_range`` (as made by
        :func:`get_rnnt_prune_ranges`).
      termination_symbol: blank id.
      boundary: see module docstring.
      rnnt_type: must be ``"regular"``.
    Returns:
      ``(px: [B, S, T + 1], py: [B, S + 1, T])`` on the full lattice.
    """
    _check_rnnt_type(rnnt_type)
    if logits.ndim != 4:
        raise ValueError(f"logits must be 4-D [B, T, s_range, C], got {tuple(logits.shape)}")
    batch_size, num_frames, s_range, _ = logits.shape
    if ranges.shape != (batch_size, num_frames, s_range):
        raise ValueError(
            f"ranges must be {(batch_size, num_frames, s_range)}, got {tuple(ranges.shape)}"
        )
    num_symbols = symbols.shape[1]
    if symbols.shape[0] != batch_size:
        raise ValueError(f"symbols has batch size {symbols.shape[0]}, logits {batch_size}")
    _check_rnnt_lengths(boundary, num_symbols)
    if bool((ranges < 0).any()) or bool((ranges > num_symbols).any()):
        raise ValueError(f"ranges must lie in [0, S={num_symbols}]")

    log_norm = torch.logsumexp(logits, dim=3)  # [B, T, s_range]
    # The symbol emitted from node s is symbols[s]; node S has none, so pad
    # with blank (its px entry is dropped below).
    symbols_padded = torch.cat(
        (symbols, torch.full((batch_size, 1), termination_symbol, dtype=symbols.dtype,
                             device=symbols.device)),
        dim=1,
    )
    pruned_symbols = torch.gather(
        symbols_padded, dim=1, index=ranges.reshape(batch_size, num_frames * s_range)
    ).reshape(batch_size, num_frames, s_range)
    px_pruned = torch.gather(logits, dim=3, index=pruned_symbols.unsqueeze(3)).squeeze(3) - log_norm
    py_pruned = logits[:, :, :, termination_symbol] - log_norm

    # Scatter the s_range kept nodes of each frame back into the full lattice.
    unreachable = torch.full(
        (batch_size, num_frames, num_symbols + 1), float("-inf"), dtype=logits.dtype,
        device=logits.device,
    )
    px = unreachable.scatter(2, ranges, px_pruned)[:, :, :num_symbols].transpose(1, 2)
    py = unreachable.scatter(2, ranges, py_pruned).transpose(1, 2)
    return _append_no_emit_column(px, boundary), py


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


def loss_from_logprobs(
    px: Tensor,
    py: Tensor,
    boundary: Tensor | None,
    delay_penalty: float,
    reduction: str | None,
    return_grad: bool,
    recursion: Callable[..., Any] | None = None,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Negated total log-prob of arc log-probs ``px [B, S, T + 1]``, ``py [B, S + 1, T]``.

    ``recursion``: a ``mutual_information_recursion`` with fast_rnnt's contract
    (:mod:`shared.rnnt_loss` passes its backend's); default: this module's.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction should be one of {_REDUCTIONS}, given {reduction!r}")
    px = add_delay_penalty(px, boundary, delay_penalty)
    recursion = recursion or mutual_information_recursion
    result = recursion(px=px, py=py, boundary=boundary, return_grad=return_grad)
    if return_grad:
        scores, grads = result
        return _reduce(scores, reduction), grads
    return _reduce(result, reduction)


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
    """RNN-T loss with the trivial joiner ``logits[b, t, s] = am[b, t] + lm[b, s]``.

    Args:
      lm: ``[B, S + 1, C]`` decoder part of the logits.
      am: ``[B, T, C]`` encoder part of the logits.
      symbols: int64 ``[B, S]``.
      termination_symbol: blank id.
      boundary: int64 ``[B, 4]`` ``(begin_symbol, begin_frame, end_symbol,
        end_frame)``; ``None`` means ``(0, 0, S, T)``.
      rnnt_type: must be ``"regular"``.
      delay_penalty: if > 0, add ``delay_penalty * ((T_b - 1) / 2 - t)`` to the
        symbol arcs (penalises late emission), as fast_rnnt.
      reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
      return_grad: also return ``(px_grad: [B, S, T + 1], py_grad: [B, S + 1, T])``,
        the occupation probabilities of the symbol / blank arcs (gradients of the
        summed per-sequence log-probs w.r.t. px / py), for
        :func:`get_rnnt_prune_ranges`.
    Returns:
      ``loss`` (``[B]`` or scalar), or ``(loss, (px_grad, py_grad))``.
    """
    px, py = get_rnnt_logprobs(lm, am, symbols, termination_symbol, rnnt_type, boundary)
    return loss_from_logprobs(px, py, boundary, delay_penalty, reduction, return_grad)


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
    """:func:`rnnt_loss_simple` with LM-only / AM-only smoothing (see
    :func:`get_rnnt_logprobs_smoothed`).  With both scales 0 it equals the
    simple loss.  Arguments and return value as :func:`rnnt_loss_simple`.
    """
    px, py = get_rnnt_logprobs_smoothed(
        lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale, boundary, rnnt_type
    )
    return loss_from_logprobs(px, py, boundary, delay_penalty, reduction, return_grad)


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
    """Full (unpruned) RNN-T loss of a joiner output ``logits: [B, T, S + 1, C]``.

    ``logits[b, t, s]`` are the unnormalised scores at lattice node ``(s, t)``
    (``t`` frames consumed, ``s`` symbols emitted).  Other arguments and the
    return value as :func:`rnnt_loss_simple`.
    """
    px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol, boundary, rnnt_type)
    return loss_from_logprobs(px, py, boundary, delay_penalty, reduction, return_grad)


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
    """RNN-T loss restricted to the lattice nodes selected by ``ranges``.

    Args:
      logits: ``[B, T, s_range, C]`` joiner output on the pruned inputs of
        :func:`do_rnnt_pruning`.
      symbols: int64 ``[B, S]``.
      ranges: int64 ``[B, T, s_range]`` from :func:`get_rnnt_prune_ranges`.
      Others as :func:`rnnt_loss_simple`.
    Returns:
      As :func:`rnnt_loss_simple`.  With ``s_range = S + 1`` (nothing pruned)
      this equals :func:`rnnt_loss`.
    """
    px, py = get_rnnt_logprobs_pruned(
        logits, symbols, ranges, termination_symbol, boundary, rnnt_type
    )
    return loss_from_logprobs(px, py, boundary, delay_penalty, reduction, return_grad)


# ---------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------


def _enforce_reachable_starts(s_begin: Tensor, s_range: int) -> Tensor:
    """Smallest-change fix of per-frame window starts so that a path can use them.

    Args:
      s_begin: int64 ``[B, T]``, proposed first symbol index of each frame's window.
      s_range: window width.
    Returns:
      ``[B, T]`` starts ``r`` that are (1) non-decreasing in ``t``, (2) never
      jump by more than ``s_range - 1`` between frames (a path can emit at most
      ``s_range - 1`` symbols inside one window, so a larger jump would skip
      symbols) and (3) satisfy ``r[t] <= (s_range - 1) * t`` (so ``r[0] = 0``:
      paths start at symbol 0).  Computed as::

          m[t] = min_{t' >= t} s_begin[t']                          # (1)
          r[t] = min((s_range-1) * t,
                     max_{t' >= t} (m[t'] - (s_range-1) * (t' - t)))  # (2), (3)

      which lowers starts only (never raises them above the proposal's
      suffix minimum), exactly as fast_rnnt's ``_adjust_pruning_lower_bound``.
    """
    num_frames = s_begin.shape[1]
    step = s_range - 1
    suffix_min = torch.flip(torch.cummin(torch.flip(s_begin, dims=(1,)), dim=1).values, dims=(1,))
    frame_offset = step * torch.arange(num_frames, device=s_begin.device)
    shifted = suffix_min - frame_offset
    suffix_max = torch.flip(torch.cummax(torch.flip(shifted, dims=(1,)), dim=1).values, dims=(1,))
    return torch.minimum(suffix_max + frame_offset, frame_offset)


def get_rnnt_prune_ranges(
    px_grad: Tensor,
    py_grad: Tensor,
    boundary: Tensor,
    s_range: int,
) -> Tensor:
    """Choose, for each frame, the ``s_range`` consecutive symbol positions to keep.

    For frame ``t`` and candidate window ``[s0, s0 + s_range)`` the score is::

        sum_{s in window} py_grad[b, s, t]  -  px_grad[b, s0 - 1, t]

    i.e. the probability that the path leaves frame ``t`` (emits its blank)
    inside the window, minus the probability that it entered the window from
    below within the same frame (``px_grad[b, -1, t] := 0``).  The best
    window start per frame (first maximum on ties) is taken; frames
    ``t >= end_frame - 1`` use ``max(end_symbol - s_range + 1, 0)`` so that
    the final node is covered; finally :func:`_enforce_reachable_starts`
    makes the starts monotonic and gap-free.  This reproduces fast_rnnt's
    choice bit for bit on identical gradients.

    ``s_range`` is first raised (with a warning) to
    ``max_b((end_symbol_b - 1) // end_frame_b + 2)``, the smallest width that
    lets every sequence emit all its symbols, and capped at ``S + 1``.

    Args:
      px_grad: ``[B, S, T + 1]`` occupation probabilities of the symbol arcs
        (from ``rnnt_loss_smoothed(..., return_grad=True)``).
      py_grad: ``[B, S + 1, T]`` occupation probabilities of the blank arcs.
      boundary: int64 ``[B, 4]`` ``(begin_symbol, begin_frame, end_symbol,
        end_frame)`` (required here).
      s_range: number of symbol positions to keep per frame (>= 2).
    Returns:
      int64 ``ranges: [B, T, s_range']`` with ``ranges[b, t] = r0 + arange(s_range')``,
      ``s_range'`` being ``s_range`` after the adjustments above.
    """
    batch_size, num_symbols, num_frames_plus_one = px_grad.shape
    num_frames = py_grad.shape[-1]
    if num_frames_plus_one != num_frames + 1:
        raise NotImplementedError("Only regular RNN-T (px_grad: [B, S, T+1]) is supported")
    if py_grad.shape != (batch_size, num_symbols + 1, num_frames):
        raise ValueError(f"py_grad must be {(batch_size, num_symbols + 1, num_frames)}")
    if boundary.shape != (batch_size, 4):
        raise ValueError(f"boundary must be ({batch_size}, 4), got {tuple(boundary.shape)}")
    _check_rnnt_lengths(boundary, num_symbols)

    end_symbol = boundary[:, 2]
    end_frame = boundary[:, 3]
    s_range_min = int(((end_symbol - 1).div(end_frame, rounding_mode="trunc") + 2).max())
    if s_range < s_range_min:
        logging.warning(
            f"get_rnnt_prune_ranges: s_range={s_range} is too small for S={end_symbol.tolist()}, "
            f"T={end_frame.tolist()}; using {s_range_min}"
        )
        s_range = s_range_min
    # A window of S + 1 positions already covers the whole lattice column.
    s_range = min(s_range, num_symbols + 1)
    if s_range < 2:
        raise ValueError("s_range must be >= 2 for regular RNN-T, or no path survives pruning")

    num_windows = num_symbols + 2 - s_range
    # window_mass[b, s0, t] = sum_{k < s_range} py_grad[b, s0 + k, t]
    window_mass = py_grad[:, :num_windows].clone()
    for k in range(1, s_range):
        window_mass = window_mass + py_grad[:, k : k + num_windows]
    entered_from_below = torch.cat(
        (torch.zeros_like(px_grad[:, :1, :num_frames]), px_grad[:, : num_windows - 1, :num_frames]),
        dim=1,
    )
    s_begin = torch.argmax(window_mass - entered_from_below, dim=1)  # [B, T]

    frame = torch.arange(num_frames, device=px_grad.device).reshape(1, -1)
    final_start = (end_symbol.to(px_grad.device) - s_range + 1).clamp(min=0).reshape(-1, 1)
    use_argmax = frame < end_frame.to(px_grad.device).reshape(-1, 1) - 1
    s_begin = torch.where(use_argmax, s_begin, final_start)

    s_begin = _enforce_reachable_starts(s_begin, s_range)
    return s_begin.unsqueeze(2) + torch.arange(s_range, device=px_grad.device)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> tuple[Tensor, Tensor]:
    """Expand encoder and decoder outputs onto the pruned lattice nodes.

    Args:
      am: ``[B, T, D]`` encoder output (typically already projected to the
        joiner dimension).
      lm: ``[B, S + 1, D]`` decoder output (likewise).
      ranges: int64 ``[B, T, s_range]`` from :func:`get_rnnt_prune_ranges`.
    Returns:
      ``(am_pruned, lm_pruned)``, both ``[B, T, s_range, D]``:
      ``am_pruned[b, t, k] = am[b, t]`` (an expanded view, no copy) and
      ``lm_pruned[b, t, k] = lm[b, ranges[b, t, k]]``.
    """
    batch_size, num_frames, s_range = ranges.shape
    if am.shape[0] != batch_size or lm.shape[0] != batch_size or am.shape[1] != num_frames:
        raise ValueError(
            f"am {tuple(am.shape)}, lm {tuple(lm.shape)} and ranges {tuple(ranges.shape)} disagree"
        )
    dim = lm.shape[2]
    am_pruned = am.unsqueeze(2).expand(batch_size, num_frames, s_range, am.shape[2])
    index = ranges.reshape(batch_size, num_frames * s_range, 1).expand(-1, -1, dim)
    lm_pruned = torch.gather(lm, dim=1, index=index).reshape(batch_size, num_frames, s_range, dim)
    return am_pruned, lm_pruned
