"""No silent empty training: an epoch that yields no batch (or far fewer than
its data should give) stops train.py with an error that says why."""

import socket
from pathlib import Path

import pytest

from pruned_transducer_stateless4.training import check_epoch_size
from shared.utils import AttributeDict, RecipeError
from tests.helpers import CPU_TRAIN_ARGS, TINY_MODEL_ARGS, run_script, small_manifest_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_world_size_2_with_batches_larger_than_the_buckets_is_an_error(prepared_dir: Path):
    """The issue's case: 30 buckets of a tiny corpus, --max-duration 60 and 2
    ranks; every bucket holds less than one batch, so drop_last drops all."""
    exp_dir = prepared_dir / "exp/empty_epoch"
    manifests = small_manifest_dir(prepared_dir, prepared_dir / "exp/empty_epoch_fbank", 40)
    result = run_script(
        ["pruned_transducer_stateless4/train.py", "--exp-dir", str(exp_dir),
         "--bpe-model", "data/lang_bpe_100/bpe.model", "--manifest-dir", str(manifests),
         "--num-epochs", "1", "--enable-musan", "false", "--valid-wer-utts", "2",
         "--tensorboard", "false", "--world-size", "2", "--max-duration", "60",
         "--num-buckets", "30", "--master-port", str(free_port()),
         *CPU_TRAIN_ARGS, *TINY_MODEL_ARGS], prepared_dir, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    # one line from rank 0 (torch may log the other rank's termination after it)
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("train.py: error: epoch 1 yielded 0 batches per rank")
    for option in ("--max-duration 60", "--num-buckets 30", "--drop-last false"):
        assert option in errors[0]
    assert "Traceback" not in result.stderr
    assert not (exp_dir / "epoch-1.pt").exists()  # nothing saved as if it had trained


def _params(**overrides) -> AttributeDict:
    params = AttributeDict(cur_epoch=3, max_duration=200.0, num_buckets=30,
                           bucketing_sampler=True, drop_last=True)
    params.update(overrides)
    return params


@pytest.mark.parametrize("num_batches, seconds, resumed, fails", [
    (0, 0.0, False, True),        # nothing at all
    (0, 0.0, True, True),         # nothing, even in a resumed epoch
    (3, 400.0, False, True),      # 40% of the audio: far fewer than the data gives
    (5, 499.0, False, True),
    (5, 500.0, False, False),     # half is the limit
    (9, 950.0, False, False),     # drop_last's usual loss
    (1, 100.0, True, False),      # a resumed epoch trains only its rest
])
def test_check_epoch_size(num_batches, seconds, resumed, fails):
    params = _params()
    if fails:
        with pytest.raises(RecipeError) as error:
            check_epoch_size(params, num_batches, seconds, 1000.0, 4, resumed)
        message = str(error.value)
        assert message.startswith(f"epoch 3 yielded {num_batches} batches per rank")
        assert f"{seconds:.0f} s of its 1000 s" in message and "4 rank(s)" in message
        assert "lower --max-duration or --num-buckets, or pass --drop-last false" in message
    else:
        check_epoch_size(params, num_batches, seconds, 1000.0, 4, resumed)
