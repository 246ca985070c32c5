"""Device placement: the one device function for every launch mode, and every
lattice operation run under the device-mismatch guard (shared/device_guard.py)
so that a tensor a CUDA run would leave on the CPU fails here on CPU."""

import pytest
import torch

from shared.device_guard import DeviceMismatch, device_guard
from shared.fsa_search import Lattice
from shared.utils import RecipeError, get_device
from tests.helpers import two_frame_lattice_fields


# ------------------------------------------------------- get_device ----
@pytest.mark.parametrize("rank, environ, cuda, expected", [
    # a plain process
    (None, {}, False, "cpu"),
    (None, {}, True, "cuda:0"),
    # train.py --world-size 4 spawns ranks 0..3 on one machine
    (0, {}, True, "cuda:0"),
    (3, {}, True, "cuda:3"),
    (3, {}, False, "cpu"),
    # torchrun on one node, 4 processes
    (None, {"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"},
     True, "cuda:2"),
    # torchrun on 2 nodes x 4 GPUs: global rank 6 is GPU 2 of the second node
    (None, {"RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
            "GROUP_RANK": "1"}, True, "cuda:2"),
    # train.py passes the global rank too under torchrun: LOCAL_RANK wins
    (6, {"RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "8"}, True, "cuda:2"),
    (6, {"RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "8"}, False, "cpu"),
])
def test_device_for_every_launch_mode(rank, environ, cuda, expected):
    assert get_device(rank, environ=environ, cuda_available=cuda) == torch.device(expected)


def test_requested_device_wins_and_is_checked():
    assert get_device(3, requested="cpu", environ={}, cuda_available=True).type == "cpu"
    # "cuda" gets an index: torch.cuda.set_device and its memory statistics need one.
    assert get_device(requested="cuda", environ={}, cuda_available=True) == torch.device("cuda", 0)
    assert get_device(requested="cuda:1", environ={}, cuda_available=True) == \
        torch.device("cuda", 1)
    assert get_device(requested="auto", environ={}, cuda_available=False).type == "cpu"
    with pytest.raises(RecipeError, match="sees no CUDA"):
        get_device(requested="cuda", environ={}, cuda_available=False)
    with pytest.raises(RecipeError, match="bad --device"):
        get_device(requested="gpu7", environ={}, cuda_available=True)


def test_this_machine_gets_what_torch_sees():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert get_device(environ={}).type == expected


# ------------------------------------------------------ the guard ----
def _two_frame_lattice() -> Lattice:
    return Lattice(**two_frame_lattice_fields())


def test_guard_catches_a_tensor_made_without_the_device():
    """The pattern the lattice code had (torch.tensor(arcs) next to lattice
    tensors) fails under the guard; the same call given the device passes."""
    lattice = _two_frame_lattice()
    with device_guard(), pytest.raises(DeviceMismatch):
        torch.searchsorted(lattice.arc_offsets, torch.tensor([0, 2]))
    with device_guard():
        frames = torch.searchsorted(
            lattice.arc_offsets, torch.tensor([0, 2], device=lattice.arc_offsets.device))
        assert frames.tolist() == [0, 1]


def test_lattice_operations_follow_the_lattice_device():
    lattice = _two_frame_lattice()
    with device_guard():
        best = lattice.best_path()
        paths = lattice.random_paths(5, generator=torch.Generator().manual_seed(0))
        totals = lattice.total_scores([[5, 6], [6], []]).tolist()
    assert best.tokens == [5, 6] and best.timestamps == [0, 1]
    assert len(paths) == 5 and all(len(path) == 2 for path in paths)
    # [5, 6]: arcs 0, 2 (-1 - 1); [6] is no path; []: blanks, arcs 1, 3 (-2 - 1)
    assert totals == pytest.approx([-2.0, float("-inf"), -3.0])


# Every decoding method of decode.py, real streaming and pretrained.py run
# under the guard in the GPU check's CPU dry-run (tests/test_gpu_check.py).
