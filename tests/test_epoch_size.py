"""No silent empty training: an epoch that yields no batch (or far fewer than
its data should give) stops train.py with an error that says why."""

import socket
from pathlib import Path

import pytest

from tests.conftest import CPU_TRAIN_ARGS, TINY_MODEL_ARGS
from tests.helpers import run_script


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(prepared_dir: Path, exp_dir: Path, *extra: str):
    return run_script(
        ["pruned_transducer_stateless4/train.py", "--exp-dir", str(exp_dir),
         "--bpe-model", "data/lang_bpe_100/bpe.model", "--num-epochs", "1",
         "--enable-musan", "false", "--valid-wer-utts", "2", "--tensorboard", "false",
         *CPU_TRAIN_ARGS, *TINY_MODEL_ARGS, *extra], prepared_dir, timeout=600)


@pytest.mark.slow
def test_world_size_2_with_batches_larger_than_the_buckets_is_an_error(prepared_dir: Path):
    """The issue's case: 30 buckets of a tiny corpus, --max-duration 60 and 2
    ranks; every bucket holds less than one batch, so drop_last drops all."""
    exp_dir = prepared_dir / "exp/empty_epoch"
    result = train(prepared_dir, exp_dir, "--world-size", "2", "--max-duration", "60",
                   "--num-buckets", "30", "--master-port", str(free_port()))
    assert result.returncode == 1, result.stderr[-3000:]
    # one line from rank 0 (torch may log the other rank's termination after it)
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("train.py: error: epoch 1 yielded 0 batches per rank")
    for option in ("--max-duration 60", "--num-buckets 30", "--drop-last false"):
        assert option in errors[0]
    assert "Traceback" not in result.stderr
    assert not (exp_dir / "epoch-1.pt").exists()  # nothing saved as if it had trained


@pytest.mark.slow
def test_the_advised_option_fixes_it(prepared_dir: Path):
    exp_dir = prepared_dir / "exp/empty_epoch_fixed"
    result = train(prepared_dir, exp_dir, "--max-duration", "60", "--num-buckets", "30",
                   "--drop-last", "false", "--valid-interval", "1000")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (exp_dir / "epoch-1.pt").is_file()
