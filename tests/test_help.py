"""Every script's `--help` shows each option's default and prints its usage
block (the module docstring, its parser's description) as written.

Fast: each parser is built in-process (the script's `get_parser()`) and
formatted with `format_help()`; no script is started.  The scripts are found
by their `argparse.ArgumentParser(` call, so a new script is checked too.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
from pathlib import Path

import pytest

from shared.utils import HelpFormatter
from tests.helpers import PROJECT_DIR, import_script

# Scripts that must not import the project's modules, so they cannot use
# shared.utils.HelpFormatter (the test still checks what their --help shows).
STANDALONE = {
    # Runs with any PYTHON given to shared/build_fast_rnnt.sh, before the
    # project is installed; uses argparse.ArgumentDefaultsHelpFormatter.
    "shared/build_fast_rnnt.py",
    # Standard library only: runs before the GPU bundle's packages import.
    "tools/unpack_missing_wheels.py",
}
SKIP_DIRS = {".venv", "tests", ".git", ".cache"}


def parser_scripts() -> list[str]:
    scripts = []
    for path in sorted(PROJECT_DIR.rglob("*.py")):
        relative = path.relative_to(PROJECT_DIR)
        if SKIP_DIRS & set(relative.parts[:-1]):
            continue
        if "def get_parser(" in path.read_text():
            scripts.append(str(relative))
    return scripts


SCRIPTS = parser_scripts()


def test_every_script_with_a_parser_is_found() -> None:
    # Guards the discovery: the recipe's, tools', benchmarks' and local/ parsers.
    assert len(SCRIPTS) >= 29, SCRIPTS
    assert "pruned_transducer_stateless4/train.py" in SCRIPTS


@pytest.fixture
def parser(request: pytest.FixtureRequest,
           monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    # A fixed width: argparse wraps help text to $COLUMNS.
    monkeypatch.setenv("COLUMNS", "100")
    return import_script(PROJECT_DIR / request.param).get_parser()


def option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """What --help prints for one option, without whitespace: argparse wraps
    long help at spaces and hyphens ("train-clean-100" may split)."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return "".join(formatter.format_help().split())


@pytest.mark.parametrize("parser", SCRIPTS, indirect=True, ids=SCRIPTS)
def test_help_shows_every_default(parser: argparse.ArgumentParser, request) -> None:
    script = request.node.callspec.params["parser"]
    if script not in STANDALONE:
        assert parser.formatter_class is HelpFormatter, f"{script}: use shared.utils.HelpFormatter"
    missing = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.default in (None, "", argparse.SUPPRESS):
            continue  # "" and None mean "not given": the help says what happens then
        if not action.option_strings and action.nargs not in ("?", "*"):
            continue  # a required positional: its default is never used
        shown = f"default: {action.default}"
        if "".join(shown.split()).lower() not in option_help(parser, action).lower():
            missing.append(f"{action.option_strings or action.dest} ({shown})")
    assert not missing, f"{script}: --help does not show " + ", ".join(missing)


def docstring_joins_lines(path: Path) -> bool:
    """Whether the module docstring's value has fewer lines than its source
    (a `\\` at the end of a line of a non-raw string joins two lines)."""
    module = ast.parse(path.read_text())
    node = module.body[0]
    assert isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant), path
    source_lines = node.end_lineno - node.lineno + 1
    return node.value.value.count("\n") + 1 != source_lines


@pytest.mark.parametrize("parser", SCRIPTS, indirect=True, ids=SCRIPTS)
def test_help_prints_usage_as_written(parser: argparse.ArgumentParser, request) -> None:
    script = request.node.callspec.params["parser"]
    assert not docstring_joins_lines(PROJECT_DIR / script), (
        f"{script}: a '\\' at a line end of the docstring joins lines; write '\\\\' or r\"\"\"")
    help_lines = {line.rstrip() for line in parser.format_help().splitlines()}
    description = parser.description or ""
    missing = [line for line in description.splitlines()
               if line.strip() and line.rstrip() not in help_lines]
    assert not missing, f"{script}: --help reflows or drops these description lines: {missing}"


def test_help_formatter_rule() -> None:
    """Defaults appended once; None shows nothing; the description stays raw."""
    parser = argparse.ArgumentParser(description="Usage:\n  a.py \\\n    --x 1",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--x", type=int, default=3, help="An x.")
    parser.add_argument("--y", default=None, help="A y (default: all).")
    parser.add_argument("--z", default="q", help="A z (default: %(default)s).")
    parser.add_argument("--w", default="", help="A w.")
    parser.add_argument("--flag", action="store_true", help="A flag.")
    text = parser.format_help()
    assert "Usage:\n  a.py \\\n    --x 1\n" in text
    assert re.search(r"An x\. \(default: 3\)", text)
    assert "None" not in text and "A w.\n" in text
    assert text.count("default: q") == 1
    assert "A flag. (default: False)" in text


# Variables the shell scripts set for themselves before sourcing
# shared/parse_options.sh; they are not options (parse_options.sh takes only
# the names the help message declares), so their help needs no default.
SHELL_INTERNAL = {"help_message", "recipe_dir", "given_options"}


@pytest.mark.parametrize("script", ["prepare.sh", "run.sh"])
def test_shell_help_shows_every_default(script: str) -> None:
    head = (PROJECT_DIR / script).read_text().split("parse_options.sh", 1)[0]
    names = set(re.findall(r"^([a-z_][a-z0-9_]*)=", head, flags=re.MULTILINE)) - SHELL_INTERNAL
    help_text = subprocess.run(["bash", script, "--help"], cwd=PROJECT_DIR, check=True,
                               capture_output=True, text=True, timeout=60).stdout
    values = dict(re.findall(r"^([a-z_][a-z0-9_]*)=(\S*)$", head, flags=re.MULTILINE))
    missing = []
    for name in sorted(names):
        option = "--" + name.replace("_", "-")
        # The help prints each default in [brackets] after the option's text.
        documented = re.search(rf"^\s+{option}\b(.*?)(?=^\s+--|\Z)", help_text, re.M | re.S)
        if documented is None or "[" not in documented.group(1):
            missing.append(option)
        elif name in values and f"[{values[name].strip(chr(34))}]" not in documented.group(1):
            missing.append(f"{option} (default {values[name]})")
    assert not missing, f"{script} --help does not document: {missing}"
