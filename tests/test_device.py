"""Device placement: the one device function for every launch mode, and every
decoding path run under the device-mismatch guard (tests/device_guard.py) so
that a tensor a CUDA run would leave on the CPU fails here on CPU."""

from pathlib import Path

import pytest
import torch

from pruned_transducer_stateless4 import decode, pretrained, streaming_decode
from pruned_transducer_stateless4.beam_search import Lattice
from shared.utils import RecipeError, get_device
from tests.device_guard import DeviceMismatch, device_guard, guarded

BPE = "data/lang_bpe_100/bpe.model"


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
    """start -(a)-> s1 -(b)-> s2 with a blank alternative on each frame."""
    i64 = torch.int64
    return Lattice(
        num_frames=2,
        state_offsets=torch.tensor([0, 1, 3, 5], dtype=i64),
        state_graph=torch.zeros(5, dtype=i64),
        state_score=torch.tensor([0.0, -1.0, -2.0, -2.0, -3.0]),
        state_best_arc=torch.tensor([-1, 0, 1, 2, 3], dtype=i64),
        arc_offsets=torch.tensor([0, 2, 4], dtype=i64),
        arc_src=torch.tensor([0, 0, 1, 2], dtype=i64),
        arc_dst=torch.tensor([1, 2, 3, 4], dtype=i64),
        arc_label=torch.tensor([5, 0, 6, 0], dtype=i64),
        arc_word=torch.zeros(4, dtype=i64),
        arc_score=torch.tensor([-1.0, -2.0, -1.0, -1.0]),
        final_score=torch.tensor([float("-inf")] * 3 + [0.0, 0.0]),
    )


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


# ------------------------------------------- decoding under the guard ----
@pytest.fixture(scope="module")
def chatty_exp_dir(trained_exp_dir: Path, tmp_path_factory) -> Path:
    """epoch-2.pt of the tiny model with the blank logit lowered, so that every
    search emits tokens and the lattices hold token arcs."""
    exp_dir = tmp_path_factory.mktemp("device_exp")
    checkpoint = torch.load(trained_exp_dir / "epoch-2.pt", weights_only=False)
    checkpoint["model"]["joiner.output_linear.bias"][0] -= 4.0
    torch.save(checkpoint, exp_dir / "epoch-2.pt")
    return exp_dir


@pytest.mark.slow
@pytest.mark.parametrize("method", decode.DECODING_METHODS)
def test_decode_methods_run_under_the_device_guard(method, chatty_exp_dir, prepared_dir,
                                                   monkeypatch):
    """decode.py's per-batch work (features to the device, encoder, search,
    graphs, lattices, n-best sampling) creates every tensor on the model's
    device.  The data loader runs outside the guard (lhotse's batches are
    host-side by design)."""
    monkeypatch.chdir(prepared_dir)
    monkeypatch.setattr(decode, "decode_one_batch", guarded(decode.decode_one_batch))
    wers = decode.main([
        "--exp-dir", str(chatty_exp_dir), "--epoch", "2", "--avg", "1",
        "--use-averaged-model", "false", "--decoding-method", method, "--device", "cpu",
        "--test-sets", "test-clean", "--bpe-model", BPE, "--lang-dir", "data/lang_bpe_100",
        "--max-duration", "60", "--beam-size", "2", "--beam", "8", "--max-states", "16",
        "--max-contexts", "4", "--num-paths", "6", "--ngram-lm-scale", "0.3",
        "--simulate-streaming", "true",
    ])
    assert 0.0 <= wers["test-clean"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["greedy_search", "modified_beam_search",
                                    "fast_beam_search"])
def test_real_streaming_runs_under_the_device_guard(method, chatty_exp_dir, prepared_dir,
                                                    monkeypatch):
    """Initial streaming states, stacked batches, the streaming searches and
    the states kept between chunks all follow the model's device."""
    monkeypatch.chdir(prepared_dir)
    setup_class = streaming_decode.StreamingSetup
    monkeypatch.setattr(setup_class, "new_stream", guarded(setup_class.new_stream))
    monkeypatch.setattr(streaming_decode, "decode_one_chunk",
                        guarded(streaming_decode.decode_one_chunk))
    streaming_decode.main([
        "--exp-dir", str(chatty_exp_dir), "--epoch", "2", "--avg", "1", "--bpe-model", BPE,
        "--decoding-method", method, "--device", "cpu", "--test-sets", "test-clean",
        "--num-decode-streams", "4", "--simulate-realtime", "false", "--beam-size", "2",
        "--max-states", "16", "--max-contexts", "4",
    ])
    recogs = list((chatty_exp_dir / "streaming" / method).glob("recogs-test-clean-*.txt"))
    assert len(recogs) == 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["greedy_search", "modified_beam_search",
                                    "fast_beam_search"])
def test_pretrained_runs_under_the_device_guard(method, chatty_exp_dir, prepared_dir,
                                                monkeypatch, capsys):
    monkeypatch.chdir(prepared_dir)
    checkpoint = torch.load(chatty_exp_dir / "epoch-2.pt", weights_only=False)
    path = chatty_exp_dir / "pretrained-device.pt"
    torch.save({"model": checkpoint["model"], "params": checkpoint["params"]}, path)
    monkeypatch.setattr(pretrained, "transcribe", guarded(pretrained.transcribe))
    wav = sorted((prepared_dir / "download/LibriSpeech/test-clean").rglob("*.flac"))[0]
    status = pretrained.main(["--checkpoint", str(path), "--bpe-model", BPE, "--method", method,
                              "--device", "cpu", "--beam-size", "2", "--max-states", "16",
                              "--max-contexts", "4", str(wav)])
    assert status == 0 and str(wav) in capsys.readouterr().out
