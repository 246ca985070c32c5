"""Checks that need a CUDA GPU (marked cuda: skipped on CPU; tools/gpu_check.sh
runs them on the GPU machine): CUDA results equal CPU results."""

import pytest
import torch

from shared.fsa_search import Lattice
from shared.utils import get_device
from tests.helpers import two_frame_lattice_fields

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_fast_rnnt_has_cuda_kernels_that_match_the_cpu():
    import _fast_rnnt
    import fast_rnnt

    assert _fast_rnnt.with_cuda()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 20, 6, 9, generator=generator)
    symbols = torch.randint(1, 9, (2, 5), generator=generator)
    boundary = torch.tensor([[0, 0, 5, 20], [0, 0, 4, 17]])
    losses = []
    for device in ("cpu", "cuda"):
        x = logits.to(device).requires_grad_()
        loss = fast_rnnt.rnnt_loss(x, symbols.to(device), termination_symbol=0,
                                   boundary=boundary.to(device), reduction="sum")
        loss.backward()
        losses.append((loss.detach().cpu(), x.grad.cpu()))
    torch.testing.assert_close(losses[0][0], losses[1][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(losses[0][1], losses[1][1], rtol=1e-4, atol=1e-4)


def test_torchrun_local_rank_selects_an_existing_gpu():
    last = torch.cuda.device_count() - 1
    device = get_device(environ={"RANK": str(4 + last), "LOCAL_RANK": str(last),
                                 "WORLD_SIZE": "8"})
    assert device == torch.device("cuda", last)
    torch.zeros(1, device=device)  # it exists


def test_lattice_operations_on_cuda_equal_the_cpu():
    fields = two_frame_lattice_fields()
    cpu = Lattice(**fields)
    cuda = Lattice(**{k: v.cuda() if isinstance(v, torch.Tensor) else v
                      for k, v in fields.items()})
    assert cuda.best_path().tokens == cpu.best_path().tokens
    sequences = [[5, 6], [6], []]
    torch.testing.assert_close(cuda.total_scores(sequences).cpu(), cpu.total_scores(sequences))
    generator = torch.Generator().manual_seed(3)  # a CPU generator: same draws on both
    paths_cuda = cuda.random_paths(4, generator=generator)
    generator = torch.Generator().manual_seed(3)
    assert paths_cuda == cpu.random_paths(4, generator=generator)
