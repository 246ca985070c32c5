"""The RNN-T loss backends of shared/rnnt_loss.py: torch, Triton (in its interpreter
on the CPU), fast_rnnt and the slow reference must agree.

fast_rnnt's CPU extension is the float32 oracle (1e-5 relative), the brute-force
reference (shared/rnnt_reference.py) the float64 one (1e-10).  The Triton kernels
run in Triton's interpreter here: TRITON_INTERPRET=1 is set only while
shared.mutual_information_triton is imported (when triton compiles its kernels),
so nothing else in the session is affected.  Interpreter runs are slow: shapes
stay small.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

from shared import mutual_information_torch, rnnt_loss
from shared import rnnt_reference as reference

try:
    import fast_rnnt
except ImportError:
    fast_rnnt = None

# Triton's interpreter evaluates log(0) = -inf (both arcs -inf) through numpy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
needs_fast_rnnt = pytest.mark.skipif(fast_rnnt is None, reason="fast_rnnt is not installed")
BLANK = 0


def _import_triton_module():
    """shared.mutual_information_triton, or None without triton.

    Without a GPU its kernels are put in Triton's interpreter: TRITON_INTERPRET=1 only
    while the module is imported (when triton wraps its kernels).  With a GPU they are
    compiled, for the cuda-marked test.
    """
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    name = "shared.mutual_information_triton"
    if name not in sys.modules and not torch.cuda.is_available():
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            importlib.import_module(name)
        finally:
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous
    return importlib.import_module(name)


triton_module = _import_triton_module()
triton_interpreted = triton_module is not None and triton_module.INTERPRETED
needs_triton = pytest.mark.skipif(
    not triton_interpreted, reason="triton missing, or its kernels were compiled for a GPU"
)
RECURSIONS = {
    "torch": mutual_information_torch.mutual_information_recursion,
    "triton": triton_module.mutual_information_recursion if triton_interpreted else None,
}
BACKEND_PARAMS = [
    "torch",
    pytest.param("triton", marks=needs_triton),
]


@pytest.fixture
def restore_backend():
    """Put shared.rnnt_loss's requested backend back after the test."""
    saved = rnnt_loss.BACKEND
    yield
    rnnt_loss.set_backend(saved)


def random_lattice(
    seed: int, batch_size: int, num_symbols: int, num_frames: int, dtype: torch.dtype,
    begin: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random px [B, S, T + 1], py [B, S + 1, T] and a boundary with mixed lengths.

    Sequence 0 spans the whole lattice; the others get random ends and, with
    ``begin``, random non-zero begin nodes.
    """
    generator = torch.Generator().manual_seed(seed)
    px = torch.randn(batch_size, num_symbols, num_frames + 1, generator=generator, dtype=dtype)
    py = torch.randn(batch_size, num_symbols + 1, num_frames, generator=generator, dtype=dtype)
    boundary = torch.zeros(batch_size, 4, dtype=torch.int64)
    for b in range(batch_size):
        def draw(low: int, high: int) -> int:
            return int(torch.randint(low, high, (), generator=generator))

        s_end = num_symbols if b == 0 else draw(1, num_symbols + 1)
        t_end = num_frames if b == 0 else draw(1, num_frames + 1)
        s_begin = draw(0, s_end) if begin and b > 0 else 0
        t_begin = draw(0, t_end) if begin and b > 0 else 0
        boundary[b] = torch.tensor([s_begin, t_begin, s_end, t_end])
    return px, py, boundary


# (B, S, T): S = 1, T = 1, S > T, B = 1, and a mid-sized batch.
SHAPES = [(1, 1, 1), (2, 1, 6), (3, 5, 1), (3, 9, 4), (1, 6, 6), (4, 5, 11)]


@needs_fast_rnnt
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_recursion_matches_fast_rnnt_in_float32(backend: str, shape: tuple[int, int, int]) -> None:
    px, py, boundary = random_lattice(sum(shape), *shape, torch.float32)
    # Pruned lattices carry -inf arcs: put some in.
    px[:, :, ::3] = float("-inf")
    expected, (expected_px_grad, expected_py_grad) = fast_rnnt.mutual_information_recursion(
        px, py, boundary, return_grad=True
    )
    for given_boundary in (boundary, None):
        if given_boundary is None:
            expected, (expected_px_grad, expected_py_grad) = (
                fast_rnnt.mutual_information_recursion(px, py, None, return_grad=True)
            )
        total, (px_grad, py_grad) = RECURSIONS[backend](px, py, given_boundary, return_grad=True)
        assert total.dtype == px_grad.dtype == torch.float32
        torch.testing.assert_close(total, expected, rtol=1e-5, atol=0)
        # Occupation probabilities lie in [0, 1]: 1e-5 of their scale.
        torch.testing.assert_close(px_grad, expected_px_grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(py_grad, expected_py_grad, rtol=1e-5, atol=1e-5)
    assert (py_grad >= 0).all() and py_grad.max() > 0.5


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_recursion_matches_reference_in_float64(backend: str, shape: tuple[int, int, int]) -> None:
    px, py, boundary = random_lattice(100 + sum(shape), *shape, torch.float64)
    expected, (expected_px_grad, expected_py_grad) = reference.mutual_information_recursion(
        px, py, boundary, return_grad=True
    )
    total, (px_grad, py_grad) = RECURSIONS[backend](px, py, boundary, return_grad=True)
    assert total.dtype == torch.float64
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(px_grad, expected_px_grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(py_grad, expected_py_grad, rtol=1e-10, atol=1e-10)
    # Every path leaves each frame of its box by exactly one blank.
    frames = (boundary[:, 3] - boundary[:, 1]).double()
    torch.testing.assert_close(py_grad.sum(dim=(1, 2)), frames, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_recursion_autograd_and_sequences_without_a_path(backend: str) -> None:
    px, py, boundary = random_lattice(7, 3, 4, 5, torch.float64, begin=False)
    # Sequence 2 has no path at all: every blank arc of its last column is cut.
    py[2, :, boundary[2, 3] - 1] = float("-inf")
    weights = torch.tensor([0.5, -2.0], dtype=torch.float64)
    px_leaf, py_leaf = px.clone().requires_grad_(True), py.clone().requires_grad_(True)
    total = RECURSIONS[backend](px_leaf, py_leaf, boundary)
    assert torch.isneginf(total[2]) and torch.isfinite(total[:2]).all()
    px_grad, py_grad = torch.autograd.grad((total[:2] * weights).sum(), (px_leaf, py_leaf))
    _, (occupation_px, occupation_py) = RECURSIONS[backend](px, py, boundary, return_grad=True)
    used_weights = torch.tensor([0.5, -2.0, 0.0], dtype=torch.float64).reshape(-1, 1, 1)
    torch.testing.assert_close(px_grad, occupation_px * used_weights)
    torch.testing.assert_close(py_grad, occupation_py * used_weights)
    assert not occupation_px[2].any() and not occupation_py[2].any()
    if backend == "torch":  # the interpreter is too slow for gradcheck's many calls
        small = random_lattice(3, 2, 2, 3, torch.float64)
        assert torch.autograd.gradcheck(
            lambda x, y: RECURSIONS[backend](x, y, small[2]),
            (small[0].requires_grad_(True), small[1].requires_grad_(True)),
        )


@needs_triton
def test_triton_splits_long_diagonals_into_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Diagonals longer than the block (S + 1 > 1024 on a GPU) go in several chunks."""
    monkeypatch.setattr(triton_module, "_MAX_BLOCK", 4)
    assert triton_module._launch_config(9)[0] == 4
    px, py, boundary = random_lattice(5, 2, 9, 6, torch.float64)
    expected, expected_grads = reference.mutual_information_recursion(
        px, py, boundary, return_grad=True
    )
    total, grads = triton_module.mutual_information_recursion(px, py, boundary, return_grad=True)
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=1e-10)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or triton_module is None,
                    reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES + [(32, 100, 500), (3, 1500, 40)])
def test_triton_on_cuda_matches_the_torch_backend(
    shape: tuple[int, int, int], dtype: torch.dtype
) -> None:
    """The compiled kernels on a real GPU (tools/gpu_check runs the cuda tests): the
    icefall shape, and S + 1 > 1024 (several chunks per diagonal)."""
    px, py, boundary = random_lattice(sum(shape), *shape, dtype)
    expected, (expected_px_grad, expected_py_grad) = RECURSIONS["torch"](
        px.double(), py.double(), boundary, return_grad=True
    )
    total, (px_grad, py_grad) = triton_module.mutual_information_recursion(
        px.cuda(), py.cuda(), boundary.cuda(), return_grad=True
    )
    # float32 against float64: over 500+ diagonals the occupation probabilities of the
    # float32 torch backend itself differ from float64 by up to 6e-4 at these shapes.
    total_tolerance, grad_tolerance = (1e-5, 1e-3) if dtype == torch.float32 else (1e-10, 1e-10)
    torch.testing.assert_close(total.cpu().double(), expected, rtol=total_tolerance, atol=0)
    for grad, expected_grad in ((px_grad, expected_px_grad), (py_grad, expected_py_grad)):
        torch.testing.assert_close(grad.cpu().double(), expected_grad, rtol=0,
                                   atol=grad_tolerance)


def test_recursion_rejects_bad_input() -> None:
    px, py, boundary = random_lattice(0, 2, 3, 4, torch.float32)
    recursion = RECURSIONS["torch"]
    with pytest.raises(NotImplementedError, match="regular"):
        recursion(px[:, :, :-1], py, boundary)
    with pytest.raises(ValueError, match="boundary"):
        recursion(px, py, boundary.int())
    with pytest.raises(ValueError, match="begin <= end"):
        recursion(px, py, torch.tensor([[0, 0, 3, 4], [0, 0, 4, 4]]))


# ---------------------------------------------------------------------------
# The losses through shared.rnnt_loss, per backend
# ---------------------------------------------------------------------------


def _recipe_losses(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """What model.py computes: smoothed loss with occupation grads, ranges, pruned loss
    (and its input gradients), plus the simple and full losses."""
    generator = torch.Generator().manual_seed(seed)
    batch_size, num_frames, num_symbols, vocab_size = 3, 12, 5, 8
    am = torch.randn(batch_size, num_frames, vocab_size, generator=generator, dtype=dtype)
    lm = torch.randn(batch_size, num_symbols + 1, vocab_size, generator=generator, dtype=dtype)
    symbols = torch.randint(1, vocab_size, (batch_size, num_symbols), generator=generator)
    boundary = torch.tensor([[0, 0, 5, 12], [0, 0, 3, 9], [0, 0, 1, 4]])
    am.requires_grad_(True)
    lm.requires_grad_(True)
    smoothed, (px_grad, py_grad) = rnnt_loss.rnnt_loss_smoothed(
        lm, am, symbols, BLANK, 0.25, 0.1, boundary, reduction="sum", return_grad=True
    )
    # fast_rnnt's backward scales these very tensors in place (by -1 here): keep copies.
    px_grad, py_grad = px_grad.clone(), py_grad.clone()
    ranges = rnnt_loss.get_rnnt_prune_ranges(px_grad, py_grad, boundary, 3)
    am_pruned, lm_pruned = rnnt_loss.do_rnnt_pruning(am, lm, ranges)
    logits = torch.tanh(am_pruned + lm_pruned) * 3
    pruned = rnnt_loss.rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary, reduction="none")
    am_grad, lm_grad = torch.autograd.grad(smoothed + pruned.sum(), (am, lm))
    with torch.no_grad():
        simple = rnnt_loss.rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction="none")
        full = rnnt_loss.rnnt_loss(
            torch.tanh(am[:, :, None] + lm[:, None]) * 3, symbols, BLANK, boundary,
            reduction="mean",
        )
        delayed = rnnt_loss.rnnt_loss_pruned(
            logits, symbols, ranges, BLANK, boundary, delay_penalty=0.2, reduction="sum"
        )
    return dict(smoothed=smoothed.detach(), px_grad=px_grad, py_grad=py_grad, ranges=ranges,
                pruned=pruned.detach(), am_grad=am_grad, lm_grad=lm_grad, simple=simple,
                full=full, delayed=delayed)


@needs_fast_rnnt
@pytest.mark.parametrize("backend", BACKEND_PARAMS + ["reference"])
def test_losses_and_pruning_ranges_equal_across_backends(backend: str, restore_backend) -> None:
    rnnt_loss.set_backend("fast_rnnt")
    expected = _recipe_losses(0)
    rnnt_loss.set_backend(backend)
    got = _recipe_losses(0)
    assert torch.equal(got["ranges"], expected["ranges"])
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5, msg=name)


# ---------------------------------------------------------------------------
# Backend choice
# ---------------------------------------------------------------------------


def test_auto_choice_follows_the_rule(monkeypatch: pytest.MonkeyPatch, restore_backend) -> None:
    rnnt_loss.set_backend("auto")
    # The rule is per device type: "cuda" can be asked about on a CPU-only machine.
    fast_rnnt_cuda = fast_rnnt is not None and rnnt_loss._fast_rnnt_has_cuda()
    has_triton = rnnt_loss._triton_error() is None
    assert rnnt_loss.resolve_backend("cpu") == ("fast_rnnt" if fast_rnnt else "torch")
    assert rnnt_loss.resolve_backend(torch.device("cuda", 0)) == (
        "fast_rnnt" if fast_rnnt_cuda else "triton" if has_triton else "torch"
    )
    # Hide fast_rnnt (and forget the cached import): PyTorch on the CPU.
    monkeypatch.setattr(rnnt_loss, "_imported", {})
    monkeypatch.setitem(sys.modules, "fast_rnnt", None)
    monkeypatch.setitem(sys.modules, "_fast_rnnt", None)
    assert rnnt_loss.resolve_backend("cpu") == "torch"
    assert rnnt_loss.resolve_backend("cuda") == ("triton" if has_triton else "torch")
    with pytest.raises(ImportError, match="fast_rnnt"):
        rnnt_loss.set_backend("fast_rnnt")
    # Hide triton as well: PyTorch everywhere.
    monkeypatch.setattr(rnnt_loss, "_imported", {})
    monkeypatch.setitem(sys.modules, "triton", None)
    assert rnnt_loss.resolve_backend("cuda") == "torch"
    with pytest.raises(ImportError, match="triton"):
        rnnt_loss.set_backend("triton")
    rnnt_loss.set_backend("torch")
    assert rnnt_loss.resolve_backend("cuda") == rnnt_loss.resolve_backend("cpu") == "torch"
    with pytest.raises(ValueError, match="auto, fast_rnnt, triton, torch, reference"):
        rnnt_loss.set_backend("warp_rnnt")


def test_auto_skips_a_fast_rnnt_build_that_does_not_suit_the_gpu(
    monkeypatch: pytest.MonkeyPatch, restore_backend, caplog
) -> None:
    """A fast_rnnt with CUDA kernels that its build check rejects (e.g. none for this
    GPU's architecture) is not chosen for CUDA tensors; the problem is logged once."""

    class CudaExtension:
        @staticmethod
        def with_cuda() -> bool:
            return True

    rnnt_loss.set_backend("auto")
    monkeypatch.setitem(rnnt_loss._imported, "_fast_rnnt", CudaExtension())
    monkeypatch.setattr(rnnt_loss, "_fast_rnnt_build_problem", [])
    monkeypatch.setattr(
        "shared.fast_rnnt_build.check_fast_rnnt_build",
        lambda: "fast_rnnt has no kernels for cuda:0 (sm_90)",
    )
    has_triton = rnnt_loss._triton_error() is None
    with caplog.at_level("WARNING"):
        assert rnnt_loss.resolve_backend("cuda") == ("triton" if has_triton else "torch")
        rnnt_loss.resolve_backend("cuda")
    assert [r.getMessage() for r in caplog.records] == [
        "RNN-T loss: fast_rnnt has no kernels for cuda:0 (sm_90)"
    ]
    # With a build that passes the check, auto takes fast_rnnt on CUDA.
    monkeypatch.setattr(rnnt_loss, "_fast_rnnt_build_problem", [None])
    if fast_rnnt is not None:
        assert rnnt_loss.resolve_backend("cuda") == "fast_rnnt"


@needs_triton
def test_forced_triton_runs_the_interpreter_on_cpu(restore_backend, caplog) -> None:
    rnnt_loss.set_backend("triton")
    assert rnnt_loss.resolve_backend("cpu") == "triton"
    px, py, boundary = random_lattice(1, 2, 3, 4, torch.float32)
    with caplog.at_level("INFO"):
        total = rnnt_loss.mutual_information_recursion(px, py, boundary)
        rnnt_loss.mutual_information_recursion(px, py, boundary)
    torch.testing.assert_close(total, reference.mutual_information_recursion(px, py, boundary))
    assert [r.getMessage() for r in caplog.records if "backend" in r.getMessage()] == [
        "RNN-T loss backend on cpu: triton (requested: triton)"
    ]


# ---------------------------------------------------------------------------
# One training step of the recipe's model
# ---------------------------------------------------------------------------


def _model_step(backend: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and gradients of one training step of a tiny recipe model on fixed input."""
    from pruned_transducer_stateless4.model_config import get_transducer_model
    from tests.helpers import TINY_MODEL_ARGS, training_params

    rnnt_loss.set_backend(backend)
    params = training_params(TINY_MODEL_ARGS)
    params.update(vocab_size=20, blank_id=0)
    torch.manual_seed(0)
    model = get_transducer_model(params)
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 60, 80, generator=generator)
    feature_lens = torch.tensor([60, 45])
    tokens = [[3, 7, 1, 12, 5, 9], [4, 4, 18]]
    simple_loss, pruned_loss = model(features, feature_lens, tokens, prune_range=3,
                                     am_scale=0.1, lm_scale=0.25)[:2]
    loss = 0.5 * simple_loss + pruned_loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()
                           if p.grad is not None}


@needs_fast_rnnt
def test_one_training_step_is_the_same_with_every_backend(restore_backend) -> None:
    expected_loss, expected_grads = _model_step("fast_rnnt")
    for backend in ("torch",) + (("triton",) if triton_interpreted else ()):
        loss, grads = _model_step(backend)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0, msg=backend)
        assert grads.keys() == expected_grads.keys()
        for name, grad in grads.items():
            scale = float(expected_grads[name].abs().max())
            torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4,
                                       atol=1e-4 * scale + 1e-7, msg=f"{backend} {name}")


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from shared import mutual_information_triton as module

assert not module.INTERPRETED
for dtype in ("fp32", "fp64"):
    for kernel in (module._forward_kernel, module._backward_kernel):
        signature = {}
        for name in kernel.arg_names:
            if name == "BLOCK":
                signature[name] = "constexpr"
            elif name == "boundary_ptr":
                signature[name] = "*i64"
            else:
                signature[name] = f"*{dtype}" if name.endswith("_ptr") else "i32"
        source = ASTSource(fn=kernel, signature=signature, constexprs={"BLOCK": 128})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 4, "num_stages": 1})
        print(kernel.fn.__name__, dtype, compiled.asm["ptx"].count("bar.sync"),
              len(compiled.asm["cubin"]))
"""


@pytest.mark.skipif(triton_module is None, reason="triton is not installed")
def test_triton_kernels_compile_for_a_gpu_with_a_barrier_per_diagonal() -> None:
    """No GPU needed: triton compiles to PTX and, with its bundled ptxas, to sm_90 code.

    The interpreter cannot show what the GPU compiler makes of the kernels; this
    checks that they are valid GPU code in both dtypes and that each sweep keeps
    exactly its one CTA barrier (inside the diagonal loop).  In a fresh process:
    this session's copy of the module is interpreted.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split() for line in result.stdout.splitlines()]
    assert len(lines) == 4, result.stdout
    for name, dtype, barriers, cubin_bytes in lines:
        assert barriers == "1" and int(cubin_bytes) > 0, (name, dtype)
