"""The README's example commands run as written: every option they use exists
in the script they call, and every data/experiment path they read is one that
an earlier example produced.

Fast: each script's argument parser is built in-process (imported from its
file, `get_parser()`), no script is started.  Shell scripts (prepare.sh,
run.sh) take `--name value` for every option their help message declares
(shared/parse_options.sh).
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import PROJECT_DIR, import_script

README = PROJECT_DIR / "README.md"


@dataclass
class Command:
    """One command of a README code block: the script path and its words."""

    script: str
    words: list[str]
    line: int

    def options(self) -> list[str]:
        """The `--name` options (a `--name=value` word counts as `--name`)."""
        return [w.split("=", 1)[0] for w in self.words if w.startswith("--") and len(w) > 2]

    def value(self, option: str) -> str | None:
        """The value given to `option` (last one wins), or None."""
        found = None
        for i, word in enumerate(self.words):
            if word == option and i + 1 < len(self.words):
                found = self.words[i + 1]
            elif word.startswith(option + "="):
                found = word.split("=", 1)[1]
        return found


def readme_commands(text: str) -> list[Command]:
    """The recipe commands in the ```bash blocks of `text`, in order.

    Continuation lines are joined, comments dropped, and `;`/`&&` split
    commands.  A command counts when its first word is a recipe script
    (`./x.sh`, `./dir/x.py`, `python dir/x.py`).  Shell variables set by a
    `name=value` word earlier in the block are substituted.
    """
    commands: list[Command] = []
    in_block = False
    logical: list[tuple[int, str]] = []
    pending = ""
    pending_line = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            if not in_block and line.strip() in ("```bash", "```sh"):
                in_block = True
                logical = []
            elif in_block:
                in_block = False
                commands.extend(_parse_block(logical))
            continue
        if not in_block:
            continue
        if not pending:
            pending_line = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((pending_line, pending + stripped))
        pending = ""
    return commands


def _parse_block(lines: list[tuple[int, str]]) -> list[Command]:
    variables: dict[str, str] = {}
    commands: list[Command] = []
    for number, line in lines:
        # Substituting before splitting gives the shell's word splitting of an
        # unquoted $sel while a quoted "--a 1 --b 2" stays one word.
        words = shlex.split(_substitute(line, variables), comments=True)
        for part in _split_commands(words):
            while part and (match := re.fullmatch(r"([A-Za-z_]\w*)=(.*)", part[0])):
                variables[match.group(1)] = match.group(2)
                part = part[1:]
            if part and part[0] == "python" and len(part) > 1:
                part = part[1:]
            if part and re.fullmatch(r"(\./)?[\w/]+\.(py|sh)", part[0]):
                script = part[0].removeprefix("./")
                if (PROJECT_DIR / script).is_file():
                    commands.append(Command(script, part[1:], number))
    return commands


def _split_commands(words: list[str]) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for word in words:
        if word in (";", "&&", "||", "|"):
            parts.append([])
        elif word.endswith(";") and len(word) > 1:
            parts[-1].append(word[:-1])
            parts.append([])
        else:
            parts[-1].append(word)
    return [p for p in parts if p]


def _substitute(word: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                  lambda m: variables.get(m.group(1), m.group(0)), word)


def python_script_options(script: Path) -> set[str]:
    """Every option string of the script's argparse parser (`get_parser()`)."""
    parser: argparse.ArgumentParser = import_script(script).get_parser()
    return {option for action in parser._actions for option in action.option_strings}


def shell_script_options(script: Path) -> set[str]:
    """The options shared/parse_options.sh accepts: each `--name` that starts a
    line of the script's help_message and whose variable the script defines
    before sourcing the parser.  A script without that parser: the `--name`
    patterns of its own `case` loop."""
    text = script.read_text()
    if "parse_options.sh" not in text:
        patterns = re.findall(r"^\s*((?:-[-\w]+\|?)+)\)", text, flags=re.MULTILINE)
        return {option for pattern in patterns for option in pattern.split("|")}
    head = text.split("parse_options.sh", 1)[0]
    defined = set(re.findall(r"^([a-z_][a-z0-9_]*)=", head, flags=re.MULTILINE))
    help_message = re.search(r'^help_message="(.*?)(?<!\\)"$', head, re.MULTILINE | re.DOTALL)
    assert help_message, f"{script.name} has no help_message"
    declared = re.findall(r"^\s+--([a-z][a-z0-9-]*)", help_message.group(1), re.MULTILINE)
    return {"--" + name for name in declared if name.replace("-", "_") in defined} | {"--help"}


def script_options(script: str) -> set[str]:
    path = PROJECT_DIR / script
    return python_script_options(path) if path.suffix == ".py" else shell_script_options(path)


@dataclass
class Produced:
    """What the README's commands have produced so far: the lang dirs of the
    latest command that made any (a later example must use those, so that it
    runs right after the one before it), and every experiment directory."""

    lang_dirs: set[str] = field(default_factory=set)
    exp_dirs: set[str] = field(default_factory=set)


def shell_default(script: str, name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", (PROJECT_DIR / script).read_text(), re.MULTILINE)
    assert match, f"{script} defines no {name}"
    return match.group(1)


def made_lang_dirs(command: Command) -> set[str]:
    """The data/lang_bpe_N dirs a prepare.sh or run.sh command makes."""
    if "--help" in command.words:
        return set()
    if command.script == "prepare.sh":
        first = int(command.value("--stage") or shell_default("prepare.sh", "stage"))
        last = int(command.value("--stop-stage") or shell_default("prepare.sh", "stop_stage"))
        if not first <= 4 <= last:  # stage 4 trains the BPE model
            return set()
        sizes = command.value("--vocab-sizes") or shell_default("prepare.sh", "vocab_sizes")
    else:
        sizes = command.value("--vocab-size") or shell_default("run.sh", "vocab_size")
    return {f"data/lang_bpe_{size}" for size in re.split(r"[\s,]+", sizes.strip("'\"")) if size}


def check_paths(command: Command, produced: Produced) -> list[str]:
    """Problems with the paths `command` reads; records what it writes."""
    problems = []
    name = Path(command.script).name
    if name in ("prepare.sh", "run.sh"):
        produced.lang_dirs = made_lang_dirs(command) or produced.lang_dirs
        if name == "run.sh" and "--help" not in command.words:
            produced.exp_dirs.add(command.value("--exp-dir")
                                  or shell_default(command.script, "exp_dir"))
        return problems
    if name == "train.py":
        exp_dir = command.value("--exp-dir")
        if exp_dir:
            produced.exp_dirs.add(exp_dir.rstrip("/"))
    for option in ("--bpe-model", "--lang-dir", "--tokens"):
        value = command.value(option)
        if value and value.startswith("data/lang_bpe_"):
            lang_dir = "/".join(value.split("/")[:2])
            if lang_dir not in produced.lang_dirs:
                problems.append(f"line {command.line}: {name} {option} {value}: the data "
                                f"command before it made {sorted(produced.lang_dirs)}")
    exp_dir = command.value("--exp-dir")
    if exp_dir and name != "train.py" and exp_dir.rstrip("/") not in produced.exp_dirs:
        problems.append(f"line {command.line}: {name} --exp-dir {exp_dir}: no earlier example "
                        f"trained into it (trained: {sorted(produced.exp_dirs)})")
    return problems


def check_readme(text: str) -> list[str]:
    """Every problem of the README `text`: unknown options and unmade paths."""
    problems: list[str] = []
    produced = Produced()
    options_of: dict[str, set[str]] = {}
    for command in readme_commands(text):
        if command.script not in options_of:
            options_of[command.script] = script_options(command.script)
        for option in command.options():
            if option not in options_of[command.script]:
                problems.append(f"line {command.line}: {command.script} has no option {option}")
        problems.extend(check_paths(command, produced))
    return problems


def test_readme_examples_use_existing_options_and_produced_paths() -> None:
    text = README.read_text()
    commands = readme_commands(text)
    scripts = {c.script for c in commands}
    # The check is only worth something if it sees the recipe's main scripts.
    assert {"prepare.sh", "pruned_transducer_stateless4/train.py",
            "pruned_transducer_stateless4/decode.py"} <= scripts, scripts
    assert check_readme(text) == []


def test_readme_check_catches_an_unknown_option_and_an_unmade_lang_dir() -> None:
    good = ("```bash\n./prepare.sh --vocab-sizes 256\n"
            "./pruned_transducer_stateless4/train.py --exp-dir exp/a \\\n"
            "  --bpe-model data/lang_bpe_256/bpe.model\n```\n")
    assert check_readme(good) == []
    bad_option = good.replace("--exp-dir exp/a", "--exp-dir exp/a --no-such-option 3")
    assert any("no option --no-such-option" in p for p in check_readme(bad_option))
    bad_lang = good.replace("--vocab-sizes 256", "--vocab-sizes 500")
    assert any("--bpe-model data/lang_bpe_256/bpe.model: the data command before it made "
               "['data/lang_bpe_500']" in p for p in check_readme(bad_lang))
    # A prepare.sh that stops before stage 4 makes no lang dir: the 256 one still holds.
    later_stage = good.replace("./pruned", "./prepare.sh --stage 3 --stop-stage 3\n./pruned", 1)
    assert check_readme(later_stage) == []
    bad_exp = good + ("```bash\n./pruned_transducer_stateless4/decode.py --exp-dir exp/b "
                      "--bpe-model data/lang_bpe_256/bpe.model\n```\n")
    assert any("--exp-dir exp/b" in p for p in check_readme(bad_exp))


@pytest.mark.parametrize("script, expected", [
    ("prepare.sh", {"--stage", "--stop-stage", "--vocab-sizes", "--synth-hours", "--corpus"}),
    ("run.sh", {"--config", "--vocab-size", "--exp-dir", "--synth-hours", "--model-args"}),
])
def test_shell_script_options_are_read_from_its_variables(script: str, expected: set) -> None:
    options = shell_script_options(PROJECT_DIR / script)
    assert expected <= options
    assert "--lang-dir" not in options  # run.sh sets lang_dir after parse_options.sh
    # Variables set before the parser that are not options.
    assert not {"--recipe-dir", "--given-options", "--help-message"} & options
