"""Shared fixtures: one tiny generated corpus, prepared once per test session
through the real prepare.sh, reused by the training and decoding tests.

Every test that uses one of these fixtures (directly or through another
fixture) is marked `slow`, since the first of them prepares data and trains;
`pytest -m "not slow"` runs the unit and oracle tests alone, in seconds.
"""

import shutil
from pathlib import Path

import pytest

from tests.helpers import CPU_TRAIN_ARGS, TINY_MODEL_ARGS, run_script

# Fixtures that prepare data, generate a corpus or train: whoever uses them
# is a slow test (corpus_dir and synth_dir live in test_synth_corpus.py,
# librispeech_dir in test_prepare_librispeech.py).
SLOW_FIXTURES = {"prepared_dir", "trained_exp_dir", "corpus_dir", "synth_dir", "librispeech_dir"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    """A directory with data/ filled by prepare.sh stages 0-5 on a tiny
    generated corpus (vocabulary 100).  Tests chdir into it: manifests hold
    paths relative to it, as in icefall."""
    work_dir = tmp_path_factory.mktemp("recipe")
    result = run_script(
        ["prepare.sh", "--synth-hours", "0.03", "--dev-utts", "12", "--test-utts", "12",
         "--vocab-sizes", "100", "--nj", "2"],
        work_dir, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work_dir


@pytest.fixture(scope="session")
def trained_exp_dir(prepared_dir: Path) -> Path:
    """A tiny streaming model trained for 2 epochs, with checkpoints; decoding
    and export tests start from it."""
    exp_dir = prepared_dir / "exp/tiny"
    if not (exp_dir / "epoch-2.pt").exists():
        shutil.rmtree(exp_dir, ignore_errors=True)
        result = run_script(
            ["pruned_transducer_stateless4/train.py", "--exp-dir", str(exp_dir),
             "--bpe-model", "data/lang_bpe_100/bpe.model", "--num-epochs", "2",
             "--max-duration", "8", "--enable-musan", "false", "--save-every-n", "10",
             "--average-period", "2", "--valid-interval", "1000", "--valid-wer-utts", "4",
             "--model-warm-step", "5", "--log-interval", "3", *CPU_TRAIN_ARGS,
             *TINY_MODEL_ARGS],
            prepared_dir, timeout=1800,  # a shared 2-core machine can be 5x slower
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return exp_dir
