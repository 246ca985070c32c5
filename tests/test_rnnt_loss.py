"""Tests of the RNN-T losses: the pure-PyTorch reference, fast_rnnt, and the facade.

The oracle is an explicit enumeration of all RNN-T alignments of tiny
problems (:func:`brute_force_log_prob`), which shares no code with either
implementation.  The pruning machinery is checked against fast_rnnt on the
same inputs, and against properties that any valid set of ranges must have.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

from shared import rnnt_reference as reference

try:
    import fast_rnnt
except ImportError:  # the reference tests still run
    fast_rnnt = None

needs_fast_rnnt = pytest.mark.skipif(fast_rnnt is None, reason="fast_rnnt is not installed")

BLANK = 0


def brute_force_log_prob(
    node_log_probs: torch.Tensor, symbols: torch.Tensor, boundary: torch.Tensor
) -> torch.Tensor:
    """log of the summed probability of every RNN-T alignment, by enumeration.

    Args:
      node_log_probs: ``[B, T, S + 1, C]``, log-prob of each token at lattice
        node ``(s, t)`` (``t`` frames consumed, ``s`` symbols emitted).
      symbols: ``[B, S]``.
      boundary: ``[B, 4]`` with begin = ``(0, 0)``; only ``end_symbol`` and
        ``end_frame`` are used.
    Returns:
      float64 ``[B]``.
    """
    results = []
    for b in range(node_log_probs.shape[0]):
        log_probs = node_log_probs[b].double()
        num_symbols, num_frames = int(boundary[b, 2]), int(boundary[b, 3])
        # An alignment is a sequence of num_symbols labels and num_frames
        # blanks ending in a blank: choose where the labels go among the
        # other num_symbols + num_frames - 1 slots.
        num_slots = num_symbols + num_frames - 1
        alignment_log_probs = []
        for label_slots in itertools.combinations(range(num_slots), num_symbols):
            s = t = 0
            total = 0.0
            for slot in range(num_slots + 1):
                if slot in label_slots:
                    total += float(log_probs[t, s, symbols[b, s]])
                    s += 1
                else:
                    total += float(log_probs[t, s, BLANK])
                    t += 1
            assert (s, t) == (num_symbols, num_frames)
            alignment_log_probs.append(total)
        results.append(torch.logsumexp(torch.tensor(alignment_log_probs, dtype=torch.float64), 0))
    return torch.stack(results)


def make_tiny_problem(seed: int, dtype: torch.dtype = torch.float64):
    """B=2, T<=4, S<=3, C=4 with different lengths per sequence."""
    generator = torch.Generator().manual_seed(seed)
    batch_size, num_frames, num_symbols, vocab_size = 2, 4, 3, 4
    am = torch.randn(batch_size, num_frames, vocab_size, generator=generator, dtype=dtype)
    lm = torch.randn(batch_size, num_symbols + 1, vocab_size, generator=generator, dtype=dtype)
    logits = 2 * torch.randn(
        batch_size, num_frames, num_symbols + 1, vocab_size, generator=generator, dtype=dtype
    )
    symbols = torch.randint(1, vocab_size, (batch_size, num_symbols), generator=generator)
    boundary = torch.tensor([[0, 0, 3, 4], [0, 0, 2, 3]], dtype=torch.int64)
    return am, lm, logits, symbols, boundary


def make_problem(
    seed: int,
    batch_size: int = 3,
    num_frames: int = 20,
    num_symbols: int = 7,
    vocab_size: int = 10,
    dtype: torch.dtype = torch.float32,
):
    """A mid-sized problem with different lengths per sequence."""
    generator = torch.Generator().manual_seed(seed)
    am = torch.randn(batch_size, num_frames, vocab_size, generator=generator, dtype=dtype)
    lm = torch.randn(batch_size, num_symbols + 1, vocab_size, generator=generator, dtype=dtype)
    symbols = torch.randint(1, vocab_size, (batch_size, num_symbols), generator=generator)
    symbol_lengths = torch.randint(1, num_symbols + 1, (batch_size,), generator=generator)
    frame_lengths = torch.randint(
        num_frames // 2, num_frames + 1, (batch_size,), generator=generator
    )
    symbol_lengths[0], frame_lengths[0] = num_symbols, num_frames  # one unpadded sequence
    boundary = torch.zeros(batch_size, 4, dtype=torch.int64)
    boundary[:, 2] = symbol_lengths
    boundary[:, 3] = frame_lengths
    return am, lm, symbols, boundary


class TinyJoiner(torch.nn.Module):
    """Non-additive joiner ``Linear(tanh(am + lm))`` so that pruning matters."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.output = torch.nn.Linear(vocab_size, vocab_size)

    def forward(self, am: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        return self.output(torch.tanh(am + lm))


# ---------------------------------------------------------------------------
# Full loss against the brute-force oracle
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_full_loss_equals_brute_force(seed: int, dtype: torch.dtype) -> None:
    _, _, logits, symbols, boundary = make_tiny_problem(seed, dtype)
    expected = -brute_force_log_prob(logits.log_softmax(-1), symbols, boundary)
    loss = reference.rnnt_loss(logits, symbols, BLANK, boundary, reduction="none")
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.double(), expected, rtol=0, atol=1e-5)


@needs_fast_rnnt
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_rnnt_full_loss_equals_brute_force(seed: int) -> None:
    _, _, logits, symbols, boundary = make_tiny_problem(seed, torch.float32)
    expected = -brute_force_log_prob(logits.log_softmax(-1), symbols, boundary)
    loss = fast_rnnt.rnnt_loss(logits, symbols, BLANK, boundary, reduction="none")
    torch.testing.assert_close(loss.double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_without_boundary_uses_full_lengths(seed: int) -> None:
    _, _, logits, symbols, _ = make_tiny_problem(seed)
    full_lengths = torch.tensor([[0, 0, 3, 4], [0, 0, 3, 4]])
    expected = -brute_force_log_prob(logits.log_softmax(-1), symbols, full_lengths)
    loss = reference.rnnt_loss(logits, symbols, BLANK, boundary=None, reduction="none")
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)


def test_reductions() -> None:
    _, _, logits, symbols, boundary = make_tiny_problem(3)
    per_sequence = -brute_force_log_prob(logits.log_softmax(-1), symbols, boundary)
    for reduction, expected in (("sum", per_sequence.sum()), ("mean", per_sequence.mean())):
        loss = reference.rnnt_loss(logits, symbols, BLANK, boundary, reduction=reduction)
        torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        reference.rnnt_loss(logits, symbols, BLANK, boundary, reduction="average")


# ---------------------------------------------------------------------------
# Simple and smoothed losses (trivial joiner)
# ---------------------------------------------------------------------------


def _backends() -> list:
    return [reference] + ([fast_rnnt] if fast_rnnt is not None else [])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simple_and_smoothed_equal_brute_force_on_trivial_joiner(seed: int) -> None:
    am, lm, _, symbols, boundary = make_tiny_problem(seed, torch.float64)
    trivial_logits = am[:, :, None] + lm[:, None]
    expected = -brute_force_log_prob(trivial_logits.log_softmax(-1), symbols, boundary)
    for backend in _backends():
        simple = backend.rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction="none")
        smoothed = backend.rnnt_loss_smoothed(
            lm, am, symbols, BLANK, lm_only_scale=0.0, am_only_scale=0.0, boundary=boundary,
            reduction="none",
        )
        full = backend.rnnt_loss(trivial_logits, symbols, BLANK, boundary, reduction="none")
        for name, loss in (("simple", simple), ("smoothed", smoothed), ("full", full)):
            torch.testing.assert_close(
                loss, expected, rtol=0, atol=1e-5, msg=f"{backend.__name__} {name}"
            )


@pytest.mark.parametrize("seed", [0, 1])
def test_smoothed_loss_equals_brute_force_of_interpolated_model(seed: int) -> None:
    """Checks the smoothing semantics (incl. the batch-averaged unigram LM)."""
    am, lm, _, symbols, boundary = make_tiny_problem(seed, torch.float64)
    lm_only_scale, am_only_scale = 0.25, 0.1
    joint = (am[:, :, None] + lm[:, None]).log_softmax(-1)
    lm_only = lm.log_softmax(-1)[:, None]  # [B, 1, S+1, C]
    # Averaged over all B x (S+1) positions, padding included (fast_rnnt's definition).
    unigram = lm.softmax(-1).mean(dim=(0, 1))
    am_only = (am + unigram.log()).log_softmax(-1)[:, :, None]  # [B, T, 1, C]
    interpolated = (
        (1 - lm_only_scale - am_only_scale) * joint
        + lm_only_scale * lm_only
        + am_only_scale * am_only
    )
    expected = -brute_force_log_prob(interpolated, symbols, boundary)
    for backend in _backends():
        loss = backend.rnnt_loss_smoothed(
            lm, am, symbols, BLANK, lm_only_scale, am_only_scale, boundary, reduction="none"
        )
        torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5, msg=backend.__name__)


@needs_fast_rnnt
@pytest.mark.parametrize("seed", [0, 1])
def test_smoothed_loss_and_occupation_grads_match_fast_rnnt(seed: int) -> None:
    am, lm, symbols, boundary = make_problem(seed)
    kwargs = dict(lm_only_scale=0.25, am_only_scale=0.0, boundary=boundary,
                  reduction="none", return_grad=True)
    ref_loss, (ref_px_grad, ref_py_grad) = reference.rnnt_loss_smoothed(
        lm, am, symbols, BLANK, **kwargs
    )
    fast_loss, (fast_px_grad, fast_py_grad) = fast_rnnt.rnnt_loss_smoothed(
        lm, am, symbols, BLANK, **kwargs
    )
    torch.testing.assert_close(ref_loss, fast_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ref_px_grad, fast_px_grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(ref_py_grad, fast_py_grad, rtol=0, atol=1e-5)
    # Occupation probabilities: exactly one blank per frame of each sequence.
    frames = ref_py_grad.sum(dim=(1, 2))
    torch.testing.assert_close(frames, boundary[:, 3].float(), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------
# Gradients of the full loss
# ---------------------------------------------------------------------------


@needs_fast_rnnt
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_full_loss_gradients_match_fast_rnnt(seed: int) -> None:
    am, lm, symbols, boundary = make_problem(seed)
    generator = torch.Generator().manual_seed(100 + seed)
    logits = (am[:, :, None] + lm[:, None]) + torch.randn(
        *am.shape[:2], lm.shape[1], am.shape[2], generator=generator
    )
    grads = []
    for backend in (reference, fast_rnnt):
        leaf = logits.clone().requires_grad_(True)
        loss = backend.rnnt_loss(leaf, symbols, BLANK, boundary, reduction="sum")
        (grad,) = torch.autograd.grad(loss, leaf)
        grads.append((loss.detach(), grad))
    (ref_loss, ref_grad), (fast_loss, fast_grad) = grads
    torch.testing.assert_close(ref_loss, fast_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ref_grad, fast_grad, rtol=0, atol=1e-4)
    # Logits outside each sequence's lattice get no gradient.
    for b, (_, _, num_symbols, num_frames) in enumerate(boundary.tolist()):
        assert not ref_grad[b, num_frames:].any()
        assert not ref_grad[b, :, num_symbols + 1 :].any()


def test_reference_gradient_matches_finite_differences() -> None:
    _, _, logits, symbols, boundary = make_tiny_problem(4, torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: reference.rnnt_loss(x, symbols, BLANK, boundary, reduction="none"),
        (logits,),
    )


@needs_fast_rnnt
def test_nonzero_begin_boundary_and_delay_penalty_match_fast_rnnt() -> None:
    _, _, logits, symbols, _ = make_tiny_problem(5, torch.float64)
    boundary = torch.tensor([[1, 1, 3, 4], [0, 2, 2, 4]])
    for delay_penalty in (0.0, 0.3):
        kwargs = dict(boundary=boundary, delay_penalty=delay_penalty, reduction="none")
        torch.testing.assert_close(
            reference.rnnt_loss(logits, symbols, BLANK, **kwargs),
            fast_rnnt.rnnt_loss(logits, symbols, BLANK, **kwargs),
        )


# ---------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------


def _pruned_and_full_losses(backend, am, lm, symbols, boundary, s_range, joiner, ranges=None):
    if ranges is None:
        _, (px_grad, py_grad) = backend.rnnt_loss_smoothed(
            lm, am, symbols, BLANK, 0.25, 0.0, boundary, reduction="sum", return_grad=True
        )
        ranges = backend.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    am_pruned, lm_pruned = backend.do_rnnt_pruning(am, lm, ranges)
    pruned = backend.rnnt_loss_pruned(
        joiner(am_pruned, lm_pruned), symbols, ranges, BLANK, boundary, reduction="none"
    )
    full = backend.rnnt_loss(
        joiner(am[:, :, None], lm[:, None]), symbols, BLANK, boundary, reduction="none"
    )
    return pruned, full, ranges


@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_loss_equals_full_loss_without_pruning(seed: int) -> None:
    am, lm, symbols, boundary = make_problem(seed)
    joiner = TinyJoiner(am.shape[2], seed)
    num_symbols = symbols.shape[1]
    with torch.no_grad():
        for backend in _backends():
            for s_range in (num_symbols + 1, num_symbols + 5):
                pruned, full, ranges = _pruned_and_full_losses(
                    backend, am, lm, symbols, boundary, s_range, joiner
                )
                assert ranges.shape[2] == num_symbols + 1
                torch.testing.assert_close(pruned, full, msg=backend.__name__)


def _check_ranges_are_valid(ranges: torch.Tensor, boundary: torch.Tensor) -> None:
    """Properties any usable pruning ranges must have (independent of fast_rnnt)."""
    s_range = ranges.shape[2]
    assert torch.equal(ranges - ranges[:, :, :1], torch.arange(s_range).expand_as(ranges))
    starts = ranges[:, :, 0]
    assert (starts[:, 0] == 0).all(), "paths start at symbol 0"
    jumps = starts[:, 1:] - starts[:, :-1]
    assert (jumps >= 0).all() and (jumps <= s_range - 1).all(), "windows must not skip symbols"
    for b, (_, _, num_symbols, num_frames) in enumerate(boundary.tolist()):
        last = ranges[b, num_frames - 1]
        assert last[0] <= num_symbols <= last[-1], "last frame must contain the final node"


@pytest.mark.parametrize("s_range", [2, 3, 5])
def test_reference_ranges_are_valid_and_pruned_loss_upper_bounds_full(s_range: int) -> None:
    am, lm, symbols, boundary = make_problem(7, batch_size=4, num_frames=25, num_symbols=9)
    joiner = TinyJoiner(am.shape[2], 7)
    with torch.no_grad():
        pruned, full, ranges = _pruned_and_full_losses(
            reference, am, lm, symbols, boundary, s_range, joiner
        )
    _check_ranges_are_valid(ranges, boundary)
    # Pruning removes paths, so the loss can only grow (and must stay finite).
    assert torch.isfinite(pruned).all()
    assert (pruned >= full - 1e-4).all()


@needs_fast_rnnt
@pytest.mark.parametrize("s_range", [2, 3, 4, 6])
@pytest.mark.parametrize("grad_kind", ["occupation", "random"])
def test_reference_ranges_equal_fast_rnnt_ranges_on_same_grads(
    s_range: int, grad_kind: str
) -> None:
    am, lm, symbols, boundary = make_problem(11, batch_size=5, num_frames=30, num_symbols=12)
    boundary[1, 3] = 4  # few frames for many symbols: forces the s_range adjustment
    boundary[1, 2] = 12
    if grad_kind == "occupation":
        _, (px_grad, py_grad) = fast_rnnt.rnnt_loss_smoothed(
            lm, am, symbols, BLANK, 0.25, 0.0, boundary, reduction="sum", return_grad=True
        )
    else:
        # Arbitrary non-negative "grads" make the raw argmax non-monotonic,
        # which exercises the reachability fix-up much harder.
        generator = torch.Generator().manual_seed(s_range)
        px_grad = torch.rand(5, 12, 31, generator=generator)
        py_grad = torch.rand(5, 13, 30, generator=generator)
    ref_ranges = reference.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    fast_ranges = fast_rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    assert ref_ranges.dtype == fast_ranges.dtype
    assert torch.equal(ref_ranges, fast_ranges)
    assert ref_ranges.shape[2] == max(s_range, (12 - 1) // 4 + 2)


@needs_fast_rnnt
@pytest.mark.parametrize("s_range", [2, 3, 5])
def test_reference_pruned_loss_equals_fast_rnnt_on_same_ranges(s_range: int) -> None:
    am, lm, symbols, boundary = make_problem(3, batch_size=4, num_frames=25, num_symbols=9)
    joiner = TinyJoiner(am.shape[2], 3)
    _, (px_grad, py_grad) = fast_rnnt.rnnt_loss_smoothed(
        lm, am, symbols, BLANK, 0.25, 0.0, boundary, reduction="sum", return_grad=True
    )
    ranges = fast_rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    results = []
    for backend in (reference, fast_rnnt):
        am_leaf = am.clone().requires_grad_(True)
        lm_leaf = lm.clone().requires_grad_(True)
        am_pruned, lm_pruned = backend.do_rnnt_pruning(am_leaf, lm_leaf, ranges)
        loss = backend.rnnt_loss_pruned(
            joiner(am_pruned, lm_pruned), symbols, ranges, BLANK, boundary, reduction="none"
        )
        grads = torch.autograd.grad(loss.sum(), (am_leaf, lm_leaf))
        results.append((loss.detach(), *grads))
    for ref_value, fast_value in zip(*results):
        torch.testing.assert_close(ref_value, fast_value, rtol=1e-5, atol=1e-4)


@needs_fast_rnnt
def test_reference_recipe_path_end_to_end_matches_fast_rnnt() -> None:
    """Both backends pick the same ranges from their *own* grads (float64)."""
    am, lm, symbols, boundary = make_problem(
        5, batch_size=4, num_frames=30, num_symbols=10, dtype=torch.float64
    )
    joiner = TinyJoiner(am.shape[2], 5).double()
    with torch.no_grad():
        ref_pruned, _, ref_ranges = _pruned_and_full_losses(
            reference, am, lm, symbols, boundary, 4, joiner
        )
        fast_pruned, _, fast_ranges = _pruned_and_full_losses(
            fast_rnnt, am, lm, symbols, boundary, 4, joiner
        )
    assert torch.equal(ref_ranges, fast_ranges)
    torch.testing.assert_close(ref_pruned, fast_pruned)


def test_do_rnnt_pruning_gathers_the_right_rows() -> None:
    am = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)
    lm = 100 + torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    ranges = torch.tensor([[[0, 1], [1, 2], [2, 3]], [[0, 1], [0, 1], [2, 3]]])
    am_pruned, lm_pruned = reference.do_rnnt_pruning(am, lm, ranges)
    assert am_pruned.shape == lm_pruned.shape == (2, 3, 2, 1)
    for b, t, k in itertools.product(range(2), range(3), range(2)):
        assert am_pruned[b, t, k, 0] == am[b, t, 0]
        assert lm_pruned[b, t, k, 0] == lm[b, ranges[b, t, k], 0]


@needs_fast_rnnt
@pytest.mark.parametrize("s_range", [2, 4])
def test_facade_pruned_logprobs_equal_fast_rnnt(s_range: int) -> None:
    """The fused log_softmax + gather gives fast_rnnt's px and py, -inf where it has -inf."""
    from shared import rnnt_loss

    am, lm, symbols, boundary = make_problem(13, batch_size=4, num_frames=25, num_symbols=9)
    _, (px_grad, py_grad) = fast_rnnt.rnnt_loss_smoothed(
        lm, am, symbols, BLANK, 0.25, 0.0, boundary, reduction="sum", return_grad=True
    )
    ranges = fast_rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    logits = 3 * torch.randn(4, 25, ranges.shape[2], am.shape[2])
    for boundary_or_none in (boundary, None):
        ours = rnnt_loss.get_rnnt_logprobs_pruned(logits, symbols, ranges, BLANK, boundary_or_none)
        theirs = fast_rnnt.get_rnnt_logprobs_pruned(
            logits, symbols, ranges, BLANK, boundary_or_none
        )
        for our_value, their_value in zip(ours, theirs):
            assert torch.equal(torch.isinf(our_value), torch.isinf(their_value))
            finite = torch.isfinite(their_value)
            torch.testing.assert_close(our_value[finite], their_value[finite])


@needs_fast_rnnt
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_facade_pruned_loss_and_gradients_equal_fast_rnnt(reduction: str) -> None:
    from shared import rnnt_loss

    assert rnnt_loss.resolve_backend("cpu") == "fast_rnnt"
    am, lm, symbols, boundary = make_problem(17, batch_size=4, num_frames=25, num_symbols=9)
    _, (px_grad, py_grad) = fast_rnnt.rnnt_loss_smoothed(
        lm, am, symbols, BLANK, 0.25, 0.0, boundary, reduction="sum", return_grad=True
    )
    ranges = fast_rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, 3)
    results = []
    for loss_function in (rnnt_loss.rnnt_loss_pruned, fast_rnnt.rnnt_loss_pruned):
        generator = torch.Generator().manual_seed(0)
        logits = 3 * torch.randn(4, 25, 3, am.shape[2], generator=generator)
        logits.requires_grad_(True)
        loss, (arc_px_grad, arc_py_grad) = loss_function(
            logits, symbols, ranges, BLANK, boundary, reduction=reduction, return_grad=True
        )
        (logits_grad,) = torch.autograd.grad(loss.sum(), logits)
        results.append((loss.detach(), arc_px_grad, arc_py_grad, logits_grad))
    for our_value, their_value in zip(*results):
        torch.testing.assert_close(our_value, their_value, rtol=1e-5, atol=1e-5)


@needs_fast_rnnt
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_facade_pruned_loss_over_every_node_equals_brute_force(seed: int) -> None:
    """With every frame's range covering all S + 1 nodes the pruned loss is the full loss."""
    from shared import rnnt_loss

    _, _, logits, symbols, boundary = make_tiny_problem(seed, torch.float32)
    batch_size, num_frames, num_nodes, _ = logits.shape
    every_node = torch.arange(num_nodes).expand(batch_size, num_frames, num_nodes)
    loss = rnnt_loss.rnnt_loss_pruned(
        logits, symbols, every_node, BLANK, boundary, reduction="none"
    )
    expected = -brute_force_log_prob(logits.log_softmax(dim=3), symbols, boundary)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Facade
# ---------------------------------------------------------------------------

_FACADE_SCRIPT = """
import sys
import torch
if sys.argv[1] == "hide_fast_rnnt":
    sys.modules["fast_rnnt"] = None  # makes `import fast_rnnt` raise ImportError
from shared import rnnt_loss
torch.manual_seed(0)
am, lm = torch.randn(2, 6, 5), torch.randn(2, 4, 5)
symbols = torch.randint(1, 5, (2, 3))
boundary = torch.tensor([[0, 0, 3, 6], [0, 0, 2, 4]])
loss, (px_grad, py_grad) = rnnt_loss.rnnt_loss_smoothed(
    lm, am, symbols, 0, 0.25, 0.0, boundary, reduction="none", return_grad=True)
ranges = rnnt_loss.get_rnnt_prune_ranges(px_grad, py_grad, boundary, 2)
am_pruned, lm_pruned = rnnt_loss.do_rnnt_pruning(am, lm, ranges)
pruned = rnnt_loss.rnnt_loss_pruned(am_pruned + lm_pruned, symbols, ranges, 0, boundary)
full = rnnt_loss.rnnt_loss(am[:, :, None] + lm[:, None], symbols, 0, boundary)
simple = rnnt_loss.rnnt_loss_simple(lm, am, symbols, 0, boundary)
print(rnnt_loss.resolve_backend("cpu"), float(full), float(simple), float(pruned))
"""


def _run_facade(env_value: str | None, mode: str = "normal") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("RNNT_LOSS_BACKEND", None)
    if env_value is not None:
        env["RNNT_LOSS_BACKEND"] = env_value
    return subprocess.run(
        [sys.executable, "-c", _FACADE_SCRIPT, mode],
        env=env, capture_output=True, text=True, timeout=120,
    )


def _expected_facade_values() -> tuple[float, float]:
    torch.manual_seed(0)
    am, lm = torch.randn(2, 6, 5), torch.randn(2, 4, 5)
    symbols = torch.randint(1, 5, (2, 3))
    boundary = torch.tensor([[0, 0, 3, 6], [0, 0, 2, 4]])
    logits = (am[:, :, None] + lm[:, None]).double()
    expected = -brute_force_log_prob(logits.log_softmax(-1), symbols, boundary).mean()
    return float(expected), float(expected)


@pytest.mark.parametrize(
    "env_value, mode, expected_backend",
    [("reference", "normal", "reference"), (None, "hide_fast_rnnt", "torch")]
    + ([(None, "normal", "fast_rnnt")] if fast_rnnt is not None else []),
)
@pytest.mark.slow  # a fresh interpreter per backend
def test_facade_backend_selection_and_single_warning(
    env_value: str | None, mode: str, expected_backend: str
) -> None:
    result = _run_facade(env_value, mode)
    assert result.returncode == 0, result.stderr
    backend, full, simple, pruned = result.stdout.split()
    assert backend == expected_backend
    expected_full, expected_simple = _expected_facade_values()
    assert abs(float(full) - expected_full) < 1e-4
    assert abs(float(simple) - expected_simple) < 1e-4
    assert float(pruned) >= float(full) - 1e-4
    warnings = [line for line in result.stderr.splitlines() if "reference implementation" in line]
    assert len(warnings) == (1 if expected_backend == "reference" else 0), result.stderr


def _import_fresh_facade(monkeypatch: pytest.MonkeyPatch, env_value: str, hide_fast_rnnt: bool):
    """Import shared.rnnt_loss anew (monkeypatch restores the original module afterwards)."""
    import importlib

    monkeypatch.setenv("RNNT_LOSS_BACKEND", env_value)
    if hide_fast_rnnt:
        monkeypatch.setitem(sys.modules, "fast_rnnt", None)
    monkeypatch.delitem(sys.modules, "shared.rnnt_loss", raising=False)
    return importlib.import_module("shared.rnnt_loss")


def test_facade_rejects_unknown_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="RNNT_LOSS_BACKEND"):
        _import_fresh_facade(monkeypatch, "warp_rnnt", hide_fast_rnnt=False)


def test_facade_forcing_missing_fast_rnnt_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImportError):
        _import_fresh_facade(monkeypatch, "fast_rnnt", hide_fast_rnnt=True)
