"""Resume on any number of ranks: each rank of train.py saves and restores
its own RNG state, and a checkpoint-B.pt written by N ranks resumes on M
(gloo on CPU, ranks spawned by train.py --world-size)."""

import random
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import torch

from shared.checkpoint import gather_rng_states, rank_rng_state, resume_seed, set_rng_state
from tests.helpers import CPU_TRAIN_ARGS, TINY_MODEL_ARGS, run_script

LOSS_LINE = re.compile(r"epoch \d+, batch (\d+), (loss [\d.]+, simple_loss [\d.]+)")


def draws() -> tuple:
    """What the training step draws from: python, numpy and torch."""
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_each_rank_restores_its_own_rng_state_and_extra_ranks_a_derived_one():
    cpu = torch.device("cpu")
    saved_ranks = []
    expected = []
    for rank in range(2):
        random.seed(rank), np.random.seed(rank), torch.manual_seed(rank)
        saved_ranks.append(gather_rng_states(cpu, 1)["ranks"][0])
        expected.append(draws())
    saved = {"world_size": 2, "ranks": saved_ranks}
    assert expected[0] != expected[1]

    # 2 -> 1 and 2 -> 2: rank r draws what rank r would have drawn.
    for rank in range(2):
        state, message = rank_rng_state(saved, rank, seed=42, batch_idx_train=8)
        set_rng_state(state, cpu)
        assert draws() == expected[rank], rank
        assert "written by 2 rank(s)" in message

    # 2 -> 3: rank 2 gets seed + 1000 * rank + batch, the same on every resume.
    state, message = rank_rng_state(saved, 2, seed=42, batch_idx_train=8)
    assert str(resume_seed(42, 2, 8)) in message and "2 rank(s) only" in message
    set_rng_state(state, cpu)
    first = draws()
    set_rng_state(rank_rng_state(saved, 2, seed=42, batch_idx_train=8)[0], cpu)
    assert draws() == first and first not in expected
    set_rng_state(rank_rng_state(saved, 3, seed=42, batch_idx_train=8)[0], cpu)
    assert draws() != first

    # A checkpoint written before per-rank states: rank 0's state, as it was.
    legacy = dict(saved_ranks[0], cuda=[])
    set_rng_state(rank_rng_state(legacy, 0, seed=42, batch_idx_train=8)[0], cpu)
    assert draws() == expected[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(exp_dir: Path, cwd: Path, world_size: int, *extra: str) -> str:
    """train.py on the tiny corpus; returns all ranks' log files."""
    result = run_script(
        ["pruned_transducer_stateless4/train.py", "--exp-dir", str(exp_dir),
         "--bpe-model", "data/lang_bpe_100/bpe.model", "--max-duration", "6",
         "--enable-musan", "false", "--valid-interval", "1000", "--valid-wer-utts", "2",
         "--model-warm-step", "2", "--num-epochs", "3", "--save-every-n", "3",
         "--keep-last-k", "0", "--log-interval", "1", "--average-period", "2",
         "--num-threads", "1", "--tensorboard", "false", "--world-size", str(world_size),
         "--master-port", str(free_port()), *CPU_TRAIN_ARGS, *TINY_MODEL_ARGS, *extra],
        cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return "".join(p.read_text() for p in sorted((exp_dir / "log").glob("log-train-*")))


def resume_from(source: Path, batch: int, exp_dir: Path) -> None:
    exp_dir.mkdir(parents=True)
    shutil.copy(source / f"checkpoint-{batch}.pt", exp_dir / f"checkpoint-{batch}.pt")


def rng_of(path: Path) -> dict:
    return torch.load(path, weights_only=False)["rng"]


def checksums(log: str) -> dict[str, str]:
    return dict(re.findall(r"rank (\d+) final parameter checksum (\S+)", log))


def assert_same_states(a: dict, b: dict) -> None:
    assert a["world_size"] == b["world_size"]
    for rank, (x, y) in enumerate(zip(a["ranks"], b["ranks"], strict=True)):
        assert torch.equal(x["torch"], y["torch"]), rank
        assert x["python"] == y["python"], rank
        assert all(np.array_equal(u, v) for u, v in zip(x["numpy"], y["numpy"])), rank


def test_resume_on_another_number_of_ranks(prepared_dir: Path, monkeypatch):
    monkeypatch.chdir(prepared_dir)
    exp = prepared_dir / "exp/resume-ranks"

    # 2 ranks, uninterrupted: checkpoints at batches 3 and 6, each holding both
    # ranks' (different) RNG states.
    full_log = train(exp / "2", prepared_dir, 2, "--max-train-batches", "6")
    full_rng = rng_of(exp / "2/checkpoint-6.pt")
    assert full_rng["world_size"] == 2
    assert not torch.equal(full_rng["ranks"][0]["torch"], full_rng["ranks"][1]["torch"])

    # 2 -> 2 from batch 3: every rank draws what it drew uninterrupted, so at
    # batch 6 both ranks' generators are where they were, and the losses and
    # weights are the same (rank 1 restoring rank 0's state would change
    # rank 1's chunk sizes and hence the shared gradient).
    resume_from(exp / "2", 3, exp / "2-2")
    resumed_log = train(exp / "2-2", prepared_dir, 2, "--max-train-batches", "6",
                        "--start-batch", "3")
    assert "rank 1: restoring its RNG state from the checkpoint (written by 2 rank(s))" \
        in resumed_log
    assert_same_states(rng_of(exp / "2-2/checkpoint-6.pt"), full_rng)
    full_losses = dict(LOSS_LINE.findall(full_log))
    resumed_losses = dict(LOSS_LINE.findall(resumed_log))
    assert sorted(resumed_losses) == ["4", "5", "6"]
    assert resumed_losses == {b: v for b, v in full_losses.items() if int(b) > 3}
    assert checksums(resumed_log) == checksums(full_log) and len(checksums(full_log)) == 2

    # 2 -> 1: rank 0 takes its own state, the sampler goes on after the 2 x 3
    # batches taken; the new checkpoint holds one rank's state.
    resume_from(exp / "2", 3, exp / "2-1")
    log = train(exp / "2-1", prepared_dir, 1, "--max-train-batches", "5", "--start-batch", "3")
    assert "rank 0: restoring its RNG state from the checkpoint (written by 2 rank(s))" in log
    assert "saved by 2 rank(s) and resumes on 1: after 3 batches per rank (6 in all)" in log
    assert sorted(dict(LOSS_LINE.findall(log))) == ["4", "5"]
    assert rng_of(exp / "2-1/checkpoint-5.pt")["world_size"] == 1

    # 1 -> 2: rank 0 takes the saved state, rank 1 a derived seed; both train.
    resume_from(exp / "2-1", 5, exp / "1-2")
    log = train(exp / "1-2", prepared_dir, 2, "--max-train-batches", "6", "--start-batch", "5")
    assert "rank 0: restoring its RNG state from the checkpoint (written by 1 rank(s))" in log
    assert (f"rank 1: the checkpoint holds RNG states of 1 rank(s) only; seeding this rank "
            f"with --seed + 1000 * rank + batch = {resume_seed(42, 1, 5)}") in log
    assert "saved by 1 rank(s) and resumes on 2" in log
    rng = rng_of(exp / "1-2/checkpoint-6.pt")
    assert rng["world_size"] == 2
    assert not torch.equal(rng["ranks"][0]["torch"], rng["ranks"][1]["torch"])
    sums = checksums(log)
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"]
