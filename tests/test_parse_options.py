"""shared/parse_options.sh accepts exactly the options its script documents.

The recipe's shell scripts are run for real (a bad option stops them in
parse_options.sh, before any work): copies of them with shared/'s parser, without
the rest of the recipe, so that a parser that let the option through would fail
at the first step instead of starting the recipe.  A scratch script sourcing
the parser checks the accepted forms.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PROJECT_DIR


@pytest.mark.parametrize("script, option", [
    ("run.sh", "--given-options"),   # run.sh's own variable, set before the parser
    ("run.sh", "--help-message"),
    ("run.sh", "--lang-dir"),        # set after the parser
    ("prepare.sh", "--recipe-dir"),  # prepare.sh's own variable
    ("prepare.sh", "--stages"),      # a typo of --stage
])
def test_script_rejects_an_undeclared_option_in_one_line(
        tmp_path: Path, script: str, option: str) -> None:
    shutil.copy(PROJECT_DIR / script, tmp_path / script)
    (tmp_path / "shared").mkdir()
    for name in ("parse_options.sh", "path.sh"):
        shutil.copy(PROJECT_DIR / "shared" / name, tmp_path / "shared" / name)
    result = run(tmp_path / script, option, "x")
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr == f"{script}: unknown option {option} (see {script} --help)\n"


SCRATCH = """#!/usr/bin/env bash
set -euo pipefail
stage=0
dl_dir=download
internal=secret
help_message="Usage: scratch.sh [options] FILE...
  --stage N     first stage [$stage]
  --dl-dir DIR  where corpora live (not --internal) [$dl_dir]"
. {parser}
echo "stage=$stage dl_dir=$dl_dir internal=$internal args=$*"
"""


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    script = tmp_path / "scratch.sh"
    script.write_text(SCRATCH.format(parser=PROJECT_DIR / "shared/parse_options.sh"))
    script.chmod(0o755)
    return script


def run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60)


def test_declared_options_set_their_variables_and_leave_positionals(scratch: Path) -> None:
    result = run(scratch, "--stage", "3", "--dl-dir=/data/x y", "a.wav", "--stage", "b")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stage=3 dl_dir=/data/x y internal=secret args=a.wav --stage b\n"


def test_a_variable_the_help_does_not_declare_is_no_option(scratch: Path) -> None:
    result = run(scratch, "--internal", "1")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "scratch.sh: unknown option --internal (see scratch.sh --help)\n"


def test_help_and_a_missing_value(scratch: Path) -> None:
    help_result = run(scratch, "--help")
    assert help_result.returncode == 0 and "--dl-dir DIR  where corpora live" in help_result.stdout
    missing = run(scratch, "--stage")
    assert (missing.returncode, missing.stderr) == (1, "scratch.sh: option --stage needs a value\n")
