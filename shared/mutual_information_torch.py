"""The RNN-T lattice recursion (``mutual_information_recursion``) in plain PyTorch.

The supported backend that runs on any device (see :mod:`shared.rnnt_loss`).  It
follows fast_rnnt's contract for the ``regular`` topology: ``px [B, S, T + 1]``,
``py [B, S + 1, T]``, ``boundary`` int64 ``[B, 4]`` rows ``(begin_symbol,
begin_frame, end_symbol, end_frame)`` or ``None`` for ``(0, 0, S, T)``; the result is
the total log-probability ``[B]`` of all paths from the begin node to the end node
and, with ``return_grad``, the arc occupation probabilities ``(px_grad, py_grad)``
(the gradients of ``result.sum()``; fast_rnnt's sign).

How: the forward scores ``alpha`` and the backward scores ``beta`` are computed one
anti-diagonal ``d = s + t`` at a time (both predecessors of a node lie on diagonal
``d - 1``), so the Python loop has ``S + T + 1`` iterations of a few batched ops
each.  In a row-major ``[S + 1, T + 1]`` grid the nodes of one anti-diagonal are
``T`` elements apart, so each diagonal is a strided *view* (no gather, no scatter).
The occupation probabilities are then ``exp(alpha + arc + beta - total)``, one
vectorised expression over the whole lattice.  Memory is O(B x S x T): ``alpha``,
``beta``, the two padded arc tensors and the two gradients.

Like fast_rnnt, the gradients are computed in the forward pass whenever they will
be needed (``return_grad`` or inputs that require grad); backward only rescales
them per sequence.  :class:`MutualInformationFunction` is that autograd wrapper,
shared with the Triton backend (:mod:`shared.mutual_information_triton`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["MutualInformationFunction", "check_inputs", "mutual_information_recursion"]

_NEG_INF = float("-inf")

#: ``(px, py, boundary, need_grad) -> (total [B], px_grad | None, py_grad | None)``
#: for float32/float64 contiguous inputs and a checked int64 boundary on px's device.
Implementation = Callable[
    [Tensor, Tensor, Tensor, bool], tuple[Tensor, Tensor | None, Tensor | None]
]


def check_inputs(px: Tensor, py: Tensor, boundary: Tensor | None) -> Tensor:
    """Check shapes/dtypes (one-line errors) and return the ``[B, 4]`` boundary on px's device.

    Args:
      px: ``[B, S, T + 1]``; py: ``[B, S + 1, T]`` (same dtype and device).
      boundary: int64 ``[B, 4]`` or ``None``.
    """
    if px.ndim != 3 or py.ndim != 3:
        raise ValueError(f"px and py must be 3-D, got {tuple(px.shape)} and {tuple(py.shape)}")
    batch_size, num_symbols, num_frames_plus_one = px.shape
    num_frames = py.shape[2]
    if num_frames_plus_one != num_frames + 1:
        raise NotImplementedError(
            f"only the regular topology px [B, S, T + 1] is supported, got px {tuple(px.shape)} "
            f"with py {tuple(py.shape)}"
        )
    if py.shape != (batch_size, num_symbols + 1, num_frames):
        raise ValueError(
            f"py must be {(batch_size, num_symbols + 1, num_frames)}, got {tuple(py.shape)}"
        )
    if num_symbols < 1 or num_frames < 1:
        raise ValueError(f"need S >= 1 and T >= 1, got S={num_symbols}, T={num_frames}")
    if px.dtype != py.dtype or px.device != py.device:
        raise ValueError(f"px and py differ: {px.dtype}/{px.device} vs {py.dtype}/{py.device}")
    if boundary is None:
        return torch.tensor([0, 0, num_symbols, num_frames], device=px.device).expand(batch_size, 4)
    if boundary.shape != (batch_size, 4) or boundary.dtype != torch.int64:
        raise ValueError(
            f"boundary must be int64 [{batch_size}, 4], "
            f"got {boundary.dtype} {tuple(boundary.shape)}"
        )
    s_begin, t_begin, s_end, t_end = boundary.unbind(1)
    ok = (0 <= s_begin) & (s_begin <= s_end) & (s_end <= num_symbols)
    ok &= (0 <= t_begin) & (t_begin <= t_end) & (t_end <= num_frames)
    if not bool(ok.all()):
        raise ValueError(
            f"need 0 <= begin <= end <= (S={num_symbols}, T={num_frames}) in every boundary row: "
            f"{boundary.tolist()}"
        )
    return boundary.to(px.device)


def _arc_masks(boundary: Tensor, num_symbols: int, num_frames: int) -> tuple[Tensor, Tensor]:
    """Which arcs lie inside each sequence's ``[begin, end]`` box.

    Returns:
      ``(symbol_arc_ok [B, S, T + 1], blank_arc_ok [B, S + 1, T])``: the arc
      ``(s, t) -> (s + 1, t)`` (resp. ``(s, t) -> (s, t + 1)``) starts at or after the
      begin node and ends at or before the end node.
    """
    device = boundary.device
    s_begin, t_begin, s_end, t_end = (x.reshape(-1, 1, 1) for x in boundary.unbind(1))
    s = torch.arange(num_symbols + 1, device=device).reshape(1, -1, 1)
    t = torch.arange(num_frames + 1, device=device).reshape(1, 1, -1)
    node_ok = (s >= s_begin) & (t >= t_begin) & (s <= s_end) & (t <= t_end)  # [B, S+1, T+1]
    symbol_arc_ok = node_ok[:, :-1] & node_ok[:, 1:]
    blank_arc_ok = node_ok[:, :, :-1] & node_ok[:, :, 1:]
    return symbol_arc_ok, blank_arc_ok


def _recursion(
    px: Tensor, py: Tensor, boundary: Tensor, need_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The anti-diagonal sweeps; see the module docstring.  Inputs as :data:`Implementation`."""
    batch_size, num_symbols, num_frames_plus_one = px.shape
    num_frames = num_frames_plus_one - 1
    width = num_frames + 1  # row length of the [S + 1, T + 1] node grid
    symbol_arc_ok, blank_arc_ok = _arc_masks(boundary, num_symbols, num_frames)
    px = px.masked_fill(~symbol_arc_ok, _NEG_INF)
    py = py.masked_fill(~blank_arc_ok, _NEG_INF)

    # Padded arc grids, flattened, so that for node (s, t) on diagonal d = s + t
    # (flat position s * T + d in a [*, T + 1] grid) every operand is at
    # s * T + d + constant:
    #   px_pad rows: -inf, px[0], ..., px[S - 1], -inf  (row s holds the arc into (s, t),
    #                                                    row s + 1 the arc out of it)
    #   py_pad: column 0 -inf, column t + 1 holds py[:, :, t]; plus one trailing -inf
    #           (arc into (s, t) at column t, arc out of it at column t + 1).
    neg_row = px.new_full((batch_size, 1, width), _NEG_INF)
    px_pad = torch.cat((neg_row, px, neg_row), dim=1).reshape(batch_size, -1)
    py_pad = torch.cat((py.new_full((batch_size, num_symbols + 1, 1), _NEG_INF), py), dim=2)
    py_pad = torch.cat((py_pad.reshape(batch_size, -1), py.new_full((batch_size, 1), _NEG_INF)), 1)

    s_begin, t_begin, s_end, t_end = boundary.unbind(1)
    batch_index = torch.arange(batch_size, device=px.device)
    # alpha has a leading -inf row (node (s, t) is at row s + 1): the symbol-arc
    # predecessor of row 0 is then a real -inf instead of a negative index.
    alpha = px.new_full((batch_size, (num_symbols + 2) * width), _NEG_INF)
    start = px.new_full((batch_size, (num_symbols + 1) * width), _NEG_INF)
    start[batch_index, s_begin * width + t_begin] = 0.0

    def diagonal(d: int, offset: int) -> slice:
        """The nodes (s, d - s) of the grid, as flat positions s * T + d + offset."""
        s_lo, s_hi = max(0, d - num_frames), min(num_symbols, d)
        first = s_lo * num_frames + d + offset
        return slice(first, first + (s_hi - s_lo) * num_frames + 1, num_frames)

    begin_diagonals = set((s_begin + t_begin).tolist())
    end_diagonals = set((s_end + t_end).tolist())
    first_diagonal, last_diagonal = min(begin_diagonals), max(end_diagonals)
    for d in range(first_diagonal, last_diagonal + 1):
        here = diagonal(d, 0)
        out = alpha[:, diagonal(d, width)]  # a view: the ops below write into alpha
        from_symbol = alpha[:, here] + px_pad[:, here]  # alpha[s - 1, t] + px[s - 1, t]
        from_blank = alpha[:, diagonal(d, width - 1)] + py_pad[:, here]  # alpha[s, t - 1] + ...
        torch.logaddexp(from_symbol, from_blank, out=out)
        if d in begin_diagonals:
            # The begin node scores 0 (its incoming arcs are all masked to -inf).
            torch.maximum(out, start[:, here], out=out)
    alpha = alpha[:, width:].reshape(batch_size, num_symbols + 1, width)
    total = alpha[batch_index, s_end, t_end]
    if not need_grad:
        return total, None, None

    # beta has a trailing -inf row: node (s, t) at row s, its symbol-arc successor at s + 1.
    beta = px.new_full((batch_size, (num_symbols + 2) * width), _NEG_INF)
    end = px.new_full((batch_size, (num_symbols + 1) * width), _NEG_INF)
    end[batch_index, s_end * width + t_end] = 0.0
    for d in range(last_diagonal, first_diagonal - 1, -1):
        here, below, right = diagonal(d, 0), diagonal(d, width), diagonal(d, 1)
        to_symbol = beta[:, below] + px_pad[:, below]  # beta[s + 1, t] + px[s, t]
        to_blank = beta[:, right] + py_pad[:, right]  # beta[s, t + 1] + py[s, t]
        out = beta[:, here]
        torch.logaddexp(to_symbol, to_blank, out=out)
        if d in end_diagonals:
            torch.maximum(out, end[:, here], out=out)
    beta = beta.reshape(batch_size, num_symbols + 2, width)

    # A sequence without any path (total -inf) gets zero gradients, like fast_rnnt.
    finite_total = torch.where(torch.isfinite(total), total, torch.zeros_like(total))
    log_norm = finite_total.reshape(-1, 1, 1)
    px_grad = (alpha[:, :-1] + px + beta[:, 1:-1] - log_norm).exp()
    py_grad = (alpha[:, :, :-1] + py + beta[:, :-1, 1:] - log_norm).exp()
    dead = ~torch.isfinite(total).reshape(-1, 1, 1)
    return total, px_grad.masked_fill(dead, 0.0), py_grad.masked_fill(dead, 0.0)


class MutualInformationFunction(torch.autograd.Function):
    """Autograd wrapper of one recursion implementation (torch or Triton).

    ``forward(px, py, boundary, implementation, need_grad)`` returns
    ``(total [B], px_grad, py_grad)``; the gradients are those of ``total.sum()``
    (empty tensors when ``need_grad`` is false).  Backward scales them by each
    sequence's incoming gradient, since sequences are independent.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, px: Tensor, py: Tensor, boundary: Tensor, implementation: Implementation,
        need_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        total, px_grad, py_grad = implementation(px, py, boundary, need_grad)
        if px_grad is None or py_grad is None:
            px_grad, py_grad = px.new_empty(0), py.new_empty(0)
        ctx.save_for_backward(px_grad, py_grad)
        ctx.mark_non_differentiable(px_grad, py_grad)
        return total, px_grad, py_grad

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, total_grad: Tensor, _px_grad_grad: Tensor, _py_grad_grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        px_grad, py_grad = ctx.saved_tensors
        if px_grad.numel() == 0 and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            raise RuntimeError("mutual_information_recursion: forward ran without gradients")
        weight = total_grad.reshape(-1, 1, 1).to(px_grad.dtype)
        return px_grad * weight, py_grad * weight, None, None, None


def run_recursion(
    implementation: Implementation,
    px: Tensor,
    py: Tensor,
    boundary: Tensor | None,
    return_grad: bool,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Check the inputs, run ``implementation`` through autograd, shape the result.

    Half-precision inputs are computed in float32 (like the reference); the result
    and gradients come back in the input dtype.
    """
    boundary = check_inputs(px, py, boundary)
    work_dtype = px.dtype if px.dtype in (torch.float32, torch.float64) else torch.float32
    need_grad = return_grad or (torch.is_grad_enabled() and (px.requires_grad or py.requires_grad))
    total, px_grad, py_grad = MutualInformationFunction.apply(
        px.to(work_dtype).contiguous(), py.to(work_dtype).contiguous(), boundary,
        implementation, need_grad,
    )
    total = total.to(px.dtype)
    if return_grad:
        return total, (px_grad.to(px.dtype), py_grad.to(py.dtype))
    return total


def mutual_information_recursion(
    px: Tensor,
    py: Tensor,
    boundary: Tensor | None = None,
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Total log-probability of all paths through the RNN-T lattice (fast_rnnt's contract).

    ``p[b, s_begin, t_begin] = 0``, ``p[b, s, t] = logaddexp(p[b, s - 1, t] + px[b, s - 1, t],
    p[b, s, t - 1] + py[b, s, t - 1])``, ``result[b] = p[b, s_end, t_end]``.

    Args:
      px: ``[B, S, T + 1]`` log-probs of the symbol arcs ``(s, t) -> (s + 1, t)``.
      py: ``[B, S + 1, T]`` log-probs of the blank arcs ``(s, t) -> (s, t + 1)``.
      boundary: int64 ``[B, 4]`` ``(begin_symbol, begin_frame, end_symbol, end_frame)``
        or ``None`` for ``(0, 0, S, T)``.
      return_grad: also return ``(px_grad [B, S, T + 1], py_grad [B, S + 1, T])``, the
        gradients of ``result.sum()`` (arc occupation probabilities, >= 0).
    Returns:
      ``result [B]`` (differentiable), or ``(result, (px_grad, py_grad))``.
    """
    return run_recursion(_recursion, px, py, boundary, return_grad)
