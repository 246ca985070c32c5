"""shared/setup.sh without root on a machine that lacks the TTS packages:
the LibriSpeech path completes without them, --dev says what it skipped and
what that disables, and a run on a set-up environment does no work again.

Runs against the project's own .venv (set up by ./run_tests.sh before the
tests), with two seams: SETUP_FAKE_NONROOT=1 (setup.sh behaves as a user
without root) and a dpkg-query on PATH that reports the TTS, sox and
chromium packages missing.  A fake apt-get records any call."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PROJECT_DIR

MISSING = ["sox", "libsox-fmt-all", "flite", "espeak-ng", "festival", "festvox-kallpc16k",
           "festvox-kdlpc16k", "festvox-us-slt-hts", "chromium", "chromium-driver"]


def fake_tools(bin_dir: Path, apt_log: Path) -> None:
    real_dpkg_query = shutil.which("dpkg-query")
    assert real_dpkg_query, "the tests run on Debian (setup.sh asks dpkg-query)"
    bin_dir.mkdir()
    scripts = {
        "dpkg-query": "#!/bin/sh\nfor arg in \"$@\"; do case \"$arg\" in "
                      + "|".join(MISSING) + ") exit 1;; esac; done\n"
                      f"exec {real_dpkg_query} \"$@\"\n",
        "apt-get": f"#!/bin/sh\necho \"apt-get $*\" >> {apt_log}\nexit 1\n",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def setup(*args: str, bin_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SETUP_FAKE_NONROOT="1", PATH=f"{bin_dir}:{os.environ['PATH']}")
    return subprocess.run([str(PROJECT_DIR / "shared/setup.sh"), *args], cwd=PROJECT_DIR,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # runs a script as a process
def test_setup_without_root_and_without_tts_packages(tmp_path: Path):
    apt_log = tmp_path / "apt-get.log"
    fake_tools(tmp_path / "bin", apt_log)

    # The LibriSpeech path: nothing it needs is missing, nothing to skip.
    result = setup(bin_dir=tmp_path / "bin")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "environment ready" in output
    assert "skipping" not in output, output
    # Set up before (./run_tests.sh): no pip install, no fast_rnnt build again.
    assert "installing" not in output and "building fast_rnnt" not in output, output

    # --dev: the generated corpus and the browser test lose their packages, and
    # set-up says so and completes.
    result = setup("--dev", bin_dir=tmp_path / "bin")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "environment ready" in output
    assert ("not root: skipping Debian packages sox libsox-fmt-all flite espeak-ng festival "
            "festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts: no generated corpus") \
        in output, output
    assert ("not root: skipping Debian packages chromium chromium-driver: no browser test"
            in output), output
    assert "sudo apt-get install -y chromium chromium-driver" in output
    assert "installing" not in output, output
    assert not apt_log.exists(), apt_log.read_text()

    result = setup("--bogus", bin_dir=tmp_path / "bin")
    assert result.returncode == 1 and "unknown option '--bogus'" in result.stderr
