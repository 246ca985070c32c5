"""The RNN-T lattice recursion (``mutual_information_recursion``) as Triton kernels.

For GPUs where fast_rnnt's CUDA extension is not built: Triton ships with CUDA
builds of torch and compiles these kernels at run time, no CUDA toolkit needed.
On the CPU the same kernels run in Triton's interpreter (``TRITON_INTERPRET=1``,
set before triton is imported), which is how CI tests them; that is slow and only
a correctness check.

Contract (fast_rnnt's, regular topology): see
:func:`shared.mutual_information_torch.mutual_information_recursion`, which is also
the autograd wrapper used here.

Design: one program per sequence.  Its begin/end node is read from ``boundary`` at
run time (loop bounds, not compile-time constants), so one compiled kernel serves
every batch; the loops are ``while`` loops because run-time bounds are what Triton
compiles to a dynamic loop and what its interpreter accepts (its ``range`` cannot take
a loaded scalar).  The program sweeps the anti-diagonals ``d = s + t`` of its box; the
nodes of one diagonal are independent and are computed as one vector (in chunks of
``BLOCK`` lanes for long label sequences).  The previous diagonal is read back from
global memory (the ``alpha`` / ``beta`` grids the kernels write anyway); a
``tl.debug_barrier()`` (a CTA-wide barrier, which also orders the CTA's global
memory accesses) separates writing one diagonal from reading it, since other
threads of the program computed its entries.  Loops are not software-pipelined
(``num_stages=1``), so no load of diagonal ``d`` can be hoisted above the barrier
that ends diagonal ``d - 1``.

* forward kernel: ``alpha[b, s, t]`` (log-score of reaching node ``(s, t)``);
* backward kernel: ``beta[b, s, t]`` (log-score from ``(s, t)`` to the end node) and,
  on the same sweep, the occupation probabilities
  ``px_grad[s, t] = exp(alpha[s, t] + px[s, t] + beta[s + 1, t] - total)`` and
  ``py_grad[s, t] = exp(alpha[s, t] + py[s, t] + beta[s, t + 1] - total)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from shared.mutual_information_torch import run_recursion

__all__ = ["INTERPRETED", "mutual_information_recursion"]

# Lanes per chunk of a diagonal: a diagonal has at most S + 1 nodes.
_MAX_BLOCK = 1024


@triton.jit
def _logaddexp(a, b):
    """``log(exp(a) + exp(b))`` elementwise, ``-inf`` when both are ``-inf`` (no NaN)."""
    larger = tl.maximum(a, b)
    shift = tl.where(larger == float("-inf"), 0.0, larger)
    return shift + tl.log(tl.exp(a - shift) + tl.exp(b - shift))


@triton.jit
def _forward_kernel(
    px_ptr,  # [B, S, T + 1]
    py_ptr,  # [B, S + 1, T]
    boundary_ptr,  # int64 [B, 4]
    alpha_ptr,  # [B, S + 1, T + 1], filled with -inf by the caller
    num_symbols,
    num_frames,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    width = num_frames + 1
    px_ptr += b * num_symbols * width
    py_ptr += b * (num_symbols + 1) * num_frames
    alpha_ptr += b * (num_symbols + 1) * width
    s_begin = tl.load(boundary_ptr + 4 * b)
    t_begin = tl.load(boundary_ptr + 4 * b + 1)
    s_end = tl.load(boundary_ptr + 4 * b + 2)
    t_end = tl.load(boundary_ptr + 4 * b + 3)
    lanes = tl.arange(0, BLOCK)
    d = s_begin + t_begin
    while d <= s_end + t_end:
        s_lo = tl.maximum(s_begin, d - t_end)
        s_hi = tl.minimum(s_end, d - t_begin)
        s_first = s_lo
        while s_first <= s_hi:
            s = s_first + lanes
            t = d - s
            is_node = s <= s_hi
            has_symbol_arc = is_node & (s > s_begin)  # from (s - 1, t)
            has_blank_arc = is_node & (t > t_begin)  # from (s, t - 1)
            up = (s - 1) * width + t
            from_symbol = tl.load(
                alpha_ptr + up, mask=has_symbol_arc, other=float("-inf")
            ) + tl.load(px_ptr + up, mask=has_symbol_arc, other=float("-inf"))
            from_blank = tl.load(
                alpha_ptr + s * width + t - 1, mask=has_blank_arc, other=float("-inf")
            ) + tl.load(py_ptr + s * num_frames + t - 1, mask=has_blank_arc, other=float("-inf"))
            value = _logaddexp(from_symbol, from_blank)
            value = tl.where((s == s_begin) & (t == t_begin), 0.0, value)
            tl.store(alpha_ptr + s * width + t, value, mask=is_node)
            s_first += BLOCK
        # The next diagonal reads what other threads of this program just wrote.
        tl.debug_barrier()
        d += 1


@triton.jit
def _backward_kernel(
    px_ptr,  # [B, S, T + 1]
    py_ptr,  # [B, S + 1, T]
    boundary_ptr,  # int64 [B, 4]
    alpha_ptr,  # [B, S + 1, T + 1] from the forward kernel
    beta_ptr,  # [B, S + 1, T + 1] scratch
    px_grad_ptr,  # [B, S, T + 1], zero-filled by the caller
    py_grad_ptr,  # [B, S + 1, T], zero-filled by the caller
    num_symbols,
    num_frames,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    width = num_frames + 1
    px_ptr += b * num_symbols * width
    px_grad_ptr += b * num_symbols * width
    py_ptr += b * (num_symbols + 1) * num_frames
    py_grad_ptr += b * (num_symbols + 1) * num_frames
    alpha_ptr += b * (num_symbols + 1) * width
    beta_ptr += b * (num_symbols + 1) * width
    s_begin = tl.load(boundary_ptr + 4 * b)
    t_begin = tl.load(boundary_ptr + 4 * b + 1)
    s_end = tl.load(boundary_ptr + 4 * b + 2)
    t_end = tl.load(boundary_ptr + 4 * b + 3)
    total = tl.load(alpha_ptr + s_end * width + t_end)
    # No path at all (total -inf): every alpha + arc + beta is then -inf too (a finite
    # one would be a path), so normalising by 0 instead gives zero gradients, as
    # fast_rnnt does, without -inf - -inf.
    total = tl.where(total == float("-inf"), 0.0, total)
    lanes = tl.arange(0, BLOCK)
    d = s_end + t_end
    while d >= s_begin + t_begin:
        s_lo = tl.maximum(s_begin, d - t_end)
        s_hi = tl.minimum(s_end, d - t_begin)
        s_first = s_lo
        while s_first <= s_hi:
            s = s_first + lanes
            t = d - s
            is_node = s <= s_hi
            has_symbol_arc = is_node & (s < s_end)  # to (s + 1, t)
            has_blank_arc = is_node & (t < t_end)  # to (s, t + 1)
            here = s * width + t
            symbol_arc = tl.load(
                beta_ptr + here + width, mask=has_symbol_arc, other=float("-inf")
            ) + tl.load(px_ptr + here, mask=has_symbol_arc, other=float("-inf"))
            blank_arc = tl.load(
                beta_ptr + here + 1, mask=has_blank_arc, other=float("-inf")
            ) + tl.load(py_ptr + s * num_frames + t, mask=has_blank_arc, other=float("-inf"))
            value = _logaddexp(symbol_arc, blank_arc)
            value = tl.where((s == s_end) & (t == t_end), 0.0, value)
            tl.store(beta_ptr + here, value, mask=is_node)
            alpha = tl.load(alpha_ptr + here, mask=is_node, other=float("-inf"))
            tl.store(
                px_grad_ptr + here, tl.exp(alpha + symbol_arc - total),
                mask=has_symbol_arc,
            )
            tl.store(
                py_grad_ptr + s * num_frames + t, tl.exp(alpha + blank_arc - total),
                mask=has_blank_arc,
            )
            s_first += BLOCK
        tl.debug_barrier()
        d -= 1


#: Whether these kernels run in Triton's interpreter (TRITON_INTERPRET=1 when triton
#: compiled them, i.e. at this module's import), the only way they run on a CPU.
INTERPRETED: bool = isinstance(_forward_kernel, InterpretedFunction)


def _launch_config(num_symbols: int) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` for a diagonal of at most ``S + 1`` nodes."""
    block = min(triton.next_power_of_2(num_symbols + 1), _MAX_BLOCK)
    return block, max(1, min(8, block // 32))


def _recursion(
    px: Tensor, py: Tensor, boundary: Tensor, need_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Launch the kernels; inputs as :data:`shared.mutual_information_torch.Implementation`."""
    batch_size, num_symbols, width = px.shape
    num_frames = width - 1
    boundary = boundary.contiguous()
    block, num_warps = _launch_config(num_symbols)
    grid = (batch_size,)
    alpha = px.new_full((batch_size, num_symbols + 1, width), float("-inf"))
    _forward_kernel[grid](
        px, py, boundary, alpha, num_symbols, num_frames,
        BLOCK=block, num_warps=num_warps, num_stages=1,
    )
    batch_index = torch.arange(batch_size, device=px.device)
    total = alpha[batch_index, boundary[:, 2], boundary[:, 3]]
    if not need_grad:
        return total, None, None
    beta = torch.empty_like(alpha)
    px_grad = torch.zeros_like(px)
    py_grad = torch.zeros_like(py)
    _backward_kernel[grid](
        px, py, boundary, alpha, beta, px_grad, py_grad, num_symbols, num_frames,
        BLOCK=block, num_warps=num_warps, num_stages=1,
    )
    return total, px_grad, py_grad


def mutual_information_recursion(
    px: Tensor,
    py: Tensor,
    boundary: Tensor | None = None,
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """fast_rnnt's ``mutual_information_recursion`` (regular topology) in Triton.

    Args:
      px: ``[B, S, T + 1]`` symbol-arc log-probs; py: ``[B, S + 1, T]`` blank-arc
        log-probs (float32 or float64; half precision is computed in float32).
      boundary: int64 ``[B, 4]`` ``(begin_symbol, begin_frame, end_symbol, end_frame)``
        or ``None`` for ``(0, 0, S, T)``.
      return_grad: also return the occupation probabilities
        ``(px_grad [B, S, T + 1], py_grad [B, S + 1, T])`` (gradients of ``result.sum()``).
    Returns:
      ``result [B]``, or ``(result, (px_grad, py_grad))``.
    """
    return run_recursion(_recursion, px, py, boundary, return_grad)
