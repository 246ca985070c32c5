"""The README's and docs/*.md's commands run as written, and what they name exists.

For README.md, every docs/*.md and tests/data/*/README.md:

- every command that runs a recipe script, in a ```bash block or an inline
  `code span`, names a script that exists, uses only options of that script
  and parses with the script's own parser (values of the right type and in
  its choices);
- every `--option` named in a code span outside such a command is an option
  of some recipe script (or of one of the few other tools the docs show);
- every project file named (`shared/x.py`, `tests/test_x.py::test_name`,
  `shared/utils.get_device`) and every relative link, with its #anchor, exists.

README.md also: every data/experiment path its examples read is one that an
earlier example produced, and the commands it calls run.sh's are run.sh's.

Fast: each script's argument parser is built in-process (imported from its
file, `get_parser()`), no script is started.  Shell scripts (prepare.sh,
run.sh) take `--name value` for every option their help message declares
(shared/parse_options.sh); the others, what their own `case` loop accepts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import PROJECT_DIR, import_script

README = PROJECT_DIR / "README.md"
# The docs, and the READMEs of the test data (the demo model's names its options).
DOCS = sorted((PROJECT_DIR / "docs").glob("*.md")) + sorted(
    (PROJECT_DIR / "tests/data").glob("*/README.md"))

# Options of the other programs the docs show in code spans (torchrun's,
# sherpa-onnx's websocket client's); every other --option must be the recipe's.
FOREIGN_OPTIONS = {
    "--nnodes", "--nproc-per-node", "--node-rank", "--master-addr", "--master-port",
    "--standalone", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id",
    "--server-ip", "--server-port", "--seconds-per-message", "--samples-per-message",
}
# Scripts that hand the words after `--` to another script.
FORWARDS_TO = {
    "benchmarks/server_benchmark.py": "pruned_transducer_stateless4/streaming_server.py",
    "tools/gpu_check.sh": "tools/gpu_check.py",
}
# Top-level folders of the project: a word starting with one names a project file.
PROJECT_FOLDERS = ("pruned_transducer_stateless4", "shared", "local", "tools", "benchmarks",
                   "tests", "docs")


@dataclass
class Command:
    """One command of a code block or span: the script path and its words."""

    script: str
    words: list[str]
    line: int

    def options(self) -> list[str]:
        """The `--name` options up to a `--` (a `--name=value` word counts as `--name`)."""
        words = self.words[:self.words.index("--")] if "--" in self.words else self.words
        # A word with a blank is a quoted value ("--a 1 --b 2"), not an option.
        return [w.split("=", 1)[0] for w in words
                if w.startswith("--") and len(w) > 2 and " " not in w]

    def value(self, option: str) -> str | None:
        """The value given to `option` (last one wins), or None."""
        found = None
        for i, word in enumerate(self.words):
            if word == option and i + 1 < len(self.words):
                found = self.words[i + 1]
            elif word.startswith(option + "="):
                found = word.split("=", 1)[1]
        return found

    def forwarded(self) -> Command | None:
        """The command the words after `--` make, for a script that forwards them."""
        if self.script not in FORWARDS_TO or "--" not in self.words:
            return None
        return Command(FORWARDS_TO[self.script], self.words[self.words.index("--") + 1:],
                       self.line)


def readme_commands(text: str) -> list[Command]:
    """The recipe commands in the ```bash blocks of `text`, in order.

    Continuation lines are joined, comments dropped, and `;`/`&&` split
    commands.  A command counts when its first word is a recipe script
    (`./x.sh`, `./dir/x.py`, `python dir/x.py`, `torchrun ... dir/x.py`,
    `/path/to/recipe/dir/x.py`).  Shell variables set by a `name=value` word
    earlier in the block are substituted.
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
            if part and part[0] == "torchrun":  # torchrun [its options] SCRIPT ...
                part = part[next((i for i, w in enumerate(part) if w.endswith(".py")), 0):]
            run_by_python = bool(part) and part[0] == "python" and len(part) > 1
            if run_by_python:
                part = part[1:]
            if part and re.fullmatch(r"[\w/.-]*\.(py|sh)", part[0]):
                script = script_path(part[0])
                # An unknown path is the recipe's (and missing) when it says so;
                # else it is another project's (icefall's x/conformer.py).
                if ((PROJECT_DIR / script).is_file() or part[0].startswith("./") or run_by_python
                        or script.split("/")[0] in PROJECT_FOLDERS):
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


@functools.cache
def _scripts_by_name() -> dict[str, list[str]]:
    """The project's .py and .sh files outside tests/, by file name."""
    files = [*PROJECT_DIR.glob("*.sh")]
    for folder in set(PROJECT_FOLDERS) - {"tests"}:
        files += [*(PROJECT_DIR / folder).rglob("*.py"), *(PROJECT_DIR / folder).rglob("*.sh")]
    by_name: dict[str, list[str]] = {}
    for path in sorted(files):
        by_name.setdefault(path.name, []).append(str(path.relative_to(PROJECT_DIR)))
    return by_name


def script_path(word: str) -> str:
    """The project-relative path of the script a command word runs: the word
    itself (`./` dropped), its part from a project folder on
    (`/path/to/recipe/shared/setup.sh`), or a bare name's one script
    (`train.py`).  A word that names no project script comes back as it is."""
    word = word.removeprefix("./")
    if (PROJECT_DIR / word).is_file():
        return word
    parts = Path(word).parts
    for i in range(1, len(parts)):
        if (PROJECT_DIR.joinpath(*parts[i:])).is_file() and parts[i] in PROJECT_FOLDERS:
            return str(Path(*parts[i:]))
    if "/" not in word and len(_scripts_by_name().get(word, [])) == 1:
        return _scripts_by_name()[word][0]
    return word


@functools.cache
def python_script_parser(script: str) -> argparse.ArgumentParser:
    """The script's own argparse parser (`get_parser()`)."""
    return import_script(PROJECT_DIR / script).get_parser()


def python_script_options(script: Path) -> set[str]:
    """Every option string of the script's argparse parser (`get_parser()`)."""
    parser = python_script_parser(str(script.relative_to(PROJECT_DIR)))
    return {option for action in parser._actions for option in action.option_strings}


def shell_script_options(script: Path) -> set[str]:
    """The options shared/parse_options.sh accepts: each `--name` that starts a
    line of the script's help_message and whose variable the script defines
    before sourcing the parser.  A script without that parser: the `--name`
    patterns of its own `case` loop."""
    text = script.read_text()
    if not re.search(r"^\.\s.*/parse_options\.sh", text, re.MULTILINE):
        patterns = re.findall(r"^\s*((?:-[-\w]+\|?)+)\)", text, flags=re.MULTILINE)
        return {option for pattern in patterns for option in pattern.split("|")}
    head = text.split("parse_options.sh", 1)[0]
    defined = set(re.findall(r"^([a-z_][a-z0-9_]*)=", head, flags=re.MULTILINE))
    help_message = re.search(r'^help_message="(.*?)(?<!\\)"$', head, re.MULTILINE | re.DOTALL)
    assert help_message, f"{script.name} has no help_message"
    declared = re.findall(r"^\s+--([a-z][a-z0-9-]*)", help_message.group(1), re.MULTILINE)
    return {"--" + name for name in declared if name.replace("-", "_") in defined} | {"--help"}


@functools.cache
def script_options(script: str) -> frozenset[str]:
    path = PROJECT_DIR / script
    options = python_script_options(path) if path.suffix == ".py" else shell_script_options(path)
    return frozenset(options)


@functools.cache
def every_recipe_option() -> frozenset[str]:
    """Every option any recipe script or library declares: the "--name" string
    literals of the project's Python files outside tests/, and the shell
    scripts' options."""
    options: set[str] = set()
    for paths in _scripts_by_name().values():
        for name in paths:
            if name.endswith(".py"):
                text = (PROJECT_DIR / name).read_text()
                options.update(re.findall(r"""["'](--[a-z][a-z0-9-]*)["']""", text))
            else:
                options.update(shell_script_options(PROJECT_DIR / name))
    return frozenset(options)


def check_command(command: Command, parse: bool = True) -> list[str]:
    """The command's script exists, has each option it uses, and (`parse`) its
    parser accepts the words (a Python script's; unknown words are left to the
    option check, `...` and FILE.wav to the reader)."""
    where = f"line {command.line}: {command.script}"
    path = PROJECT_DIR / command.script
    if not path.is_file():
        return [f"{where}: no such script"]
    if path.suffix == ".py" and "__main__" not in path.read_text():
        # A library module named in a span (`shared/x.py`) is no command.
        return [f"{where} is no script"] if command.words else []
    problems = [f"{where} has no option {option}" for option in command.options()
                if option not in script_options(command.script)]
    if parse and command.script.endswith(".py") and not {"--help", "-h"} & set(command.words):
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                python_script_parser(command.script).parse_known_args(command.words)
        except SystemExit:
            problems.append(f"{where} does not parse: {stderr.getvalue().strip().splitlines()[-1]}")
    if (forwarded := command.forwarded()) is not None:
        problems.extend(check_command(forwarded, parse))
    return problems


def _without_fenced_blocks(text: str) -> str:
    """`text` with every line of a ``` block emptied (line numbers kept)."""
    lines, in_block = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            lines.append("")
        else:
            lines.append("" if in_block else line)
    return "\n".join(lines)


def code_spans(text: str) -> list[tuple[int, str]]:
    """The inline `code spans` outside fenced blocks, with their line numbers
    (a span may run over a line break, not over a blank line)."""
    prose = _without_fenced_blocks(text)
    return [(prose.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split()))
            for match in re.finditer(r"`([^`]+)`", prose) if "\n\n" not in match.group(1)]


def check_code_spans(text: str) -> list[str]:
    """Commands in code spans use only their script's options (a span is a
    fragment: `train.py --rnnt-backend {auto,torch}` is not parsed); any other
    `--option` in a span must be an option of some recipe script."""
    problems = []
    for line, span in code_spans(text):
        try:
            commands = _parse_block([(line, span)])
        except ValueError:  # not shell words (unbalanced quotes of a JSON key, ...)
            commands = []
        for command in commands:
            problems.extend(check_command(command, parse=False))
        if not commands:
            for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span):
                if option not in every_recipe_option() | FOREIGN_OPTIONS:
                    problems.append(f"line {line}: no recipe script has the option {option}")
    return problems


def _expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [expanded for choice in match.group(1).split(",")
            for expanded in _expand_braces(path[:match.start()] + choice + path[match.end():])]


def _defines(source: Path, name: str) -> bool:
    return re.search(rf"^\s*(def|class)\s+{name}\b|^{name}\s*[:=]", source.read_text(),
                     re.MULTILINE) is not None


def check_project_file(name: str) -> str | None:
    """Why `name` (`shared/x.py`, `tests/t.py::test_f`, `shared/x.func`,
    `dir/{a,b}.py`) names nothing in the project, or None."""
    for path in _expand_braces(name):
        path, _, test_name = path.partition("::")
        target = PROJECT_DIR / path
        if target.exists():
            if test_name and not _defines(target, test_name):
                return f"{path} has no {test_name}"
            continue
        module, _, attribute = path.rpartition(".")
        if attribute.isidentifier() and (PROJECT_DIR / f"{module}.py").is_file():
            if not _defines(PROJECT_DIR / f"{module}.py", attribute):
                return f"{module}.py has no {attribute}"
            continue
        return f"no file {path}"
    return None


def check_project_files(text: str) -> list[str]:
    problems = []
    folders = "|".join(PROJECT_FOLDERS)
    for number, line in enumerate(text.splitlines(), start=1):
        for match in re.finditer(rf"(?<![\w./$-])((?:{folders})/[\w./{{}},:-]*[\w/}}])", line):
            if "*" not in match.group(1) and (why := check_project_file(match.group(1))):
                problems.append(f"line {number}: {why}")
    return problems


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of `markdown`."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.*)$", _without_fenced_blocks(markdown), re.MULTILINE):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def check_links(text: str, document: Path) -> list[str]:
    """Relative links [..](path#anchor) lead to a file, and to one of its
    headings (#anchor alone: one of `text`'s, the document at `document`)."""
    problems = []
    for number, line in enumerate(_without_fenced_blocks(text).splitlines(), start=1):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (document.parent / path).resolve()
            if path and not linked.exists():
                problems.append(f"line {number}: link to a missing file {target}")
            elif anchor and anchor not in heading_anchors(linked.read_text() if path else text):
                problems.append(f"line {number}: {path or document.name} has no heading #{anchor}")
    return problems


def check_document(text: str, document: Path) -> list[str]:
    """Every problem of a README or docs page: commands, options, files, links."""
    problems = [p for command in readme_commands(text) for p in check_command(command)]
    return (problems + check_code_spans(text) + check_project_files(text)
            + check_links(text, document))


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
    """Every problem of the README `text`: those of any document, and unmade paths."""
    problems = check_document(text, README)
    produced = Produced()
    for command in readme_commands(text):
        problems.extend(check_paths(command, produced))
    return problems


def run_sh_command(script: str) -> list[str]:
    """The words run.sh runs `script` (prepare.sh, train.py) with in a default
    run: its command in run.sh, expanded by bash with run.sh's option
    defaults (and no checkpoint to resume from)."""
    text = (PROJECT_DIR / "run.sh").read_text()
    head = text.split(". shared/parse_options.sh", 1)[0]
    match = re.search(rf"(\./{re.escape(script)}(?:.*\\\n)*.*)$", text, re.MULTILINE)
    assert match, f"run.sh does not run {script}"
    program = (f'{head}\nlang_dir=data/lang_bpe_$vocab_size\nresume=()\n'
               f'words() {{ printf "%s\\n" "$@"; }}\nwords {match.group(1)}\n')
    words = subprocess.run(["bash", "-c", program], cwd=PROJECT_DIR, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    return words[1:]


def test_readme_examples_use_existing_options_and_produced_paths() -> None:
    text = README.read_text()
    commands = readme_commands(text)
    scripts = {c.script for c in commands}
    # The check is only worth something if it sees the recipe's main scripts.
    assert {"prepare.sh", "pruned_transducer_stateless4/train.py",
            "pruned_transducer_stateless4/decode.py"} <= scripts, scripts
    assert check_readme(text) == []


def test_readme_copies_no_result_of_a_run() -> None:
    """A run's figures (WER, RTF, minutes with two decimals) live in RESULTS.md;
    README's text links there instead of copying them (its commands may hold
    any number)."""
    figures = r"(?<![\w.])\d+\.\d\d+(?![\w.])"
    results = set(re.findall(figures, (PROJECT_DIR / "RESULTS.md").read_text()))
    prose = re.sub(r"`[^`]*`", "", _without_fenced_blocks(README.read_text()))
    assert not set(re.findall(figures, prose)) & results


@pytest.mark.parametrize("document", DOCS, ids=[str(d.relative_to(PROJECT_DIR)) for d in DOCS])
def test_docs_commands_options_files_and_links_exist(document: Path) -> None:
    assert check_document(document.read_text(), document) == []


def test_readme_trains_and_prepares_what_run_sh_does() -> None:
    """README says its train.py command is run.sh's and its prepare.sh command
    prepares what run.sh does: the same words, the same effective settings."""
    commands = readme_commands(README.read_text())
    train = next(c for c in commands if c.script.endswith("train.py"))
    assert train.words == run_sh_command("pruned_transducer_stateless4/train.py")
    prepare = next(c for c in commands if c.script == "prepare.sh")
    ours = Command("prepare.sh", run_sh_command("prepare.sh"), 0)
    for option in sorted(shell_script_options(PROJECT_DIR / "prepare.sh") - {"--help"}):
        default = shell_default("prepare.sh", option[2:].replace("-", "_"))
        assert (prepare.value(option) or default) == (ours.value(option) or default), option


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


def test_document_check_catches_what_does_not_exist(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    good = ("# A page\n\nSee [the README](../README.md#tests) and [below](#a-page).\n"
            "`decode.py --avg 2`, `--lr-batches`,\n"
            "`shared/{checkpoint,utils}.py`, `shared/utils.get_device`,\n"
            "`tests/test_readme.py::test_document_check_catches_what_does_not_exist`.\n"
            "```bash\npython benchmarks/server_benchmark.py --wavs a.wav -- --port 6006\n"
            "./pruned_transducer_stateless4/decode.py --decoding-method greedy_search\n```\n")
    (tmp_path / "README.md").write_text("## Tests\n")
    assert check_document(good, page) == []
    cases = {
        "greedy_search\n": ("greedy\n", "decode.py does not parse: "),
        "`decode.py --avg 2`": ("`decode.py --agv 2`", "decode.py has no option --agv"),
        "`--lr-batches`": ("`--lr-batchez`", "no recipe script has the option --lr-batchez"),
        "{checkpoint,utils}": ("{checkpoint,util}", "no file shared/util.py"),
        "utils.get_device": ("utils.get_devices", "shared/utils.py has no get_devices"),
        "::test_document": ("::test_documents", "test_readme.py has no test_documents"),
        "#tests": ("#testing", "README.md has no heading #testing"),
        "../README.md": ("../READ.md", "link to a missing file ../READ.md"),
        "--port 6006": ("--prt 6006", "streaming_server.py has no option --prt"),
        "python benchmarks/": ("python benchmark/", "benchmark/server_benchmark.py: no such"),
    }
    for old, (new, expected) in cases.items():
        problems = check_document(good.replace(old, new), page)
        assert any(expected in p for p in problems), (new, problems)


@pytest.mark.parametrize("script, expected", [
    ("prepare.sh", {"--stage", "--stop-stage", "--vocab-sizes", "--synth-hours", "--corpus"}),
    ("run.sh", {"--config", "--vocab-size", "--exp-dir", "--synth-hours", "--model-args"}),
    ("tools/gpu_check.sh", {"--bundle", "--python", "--device", "--guard"}),
])
def test_shell_script_options_are_the_declared_ones(script: str, expected: set) -> None:
    options = shell_script_options(PROJECT_DIR / script)
    assert expected <= options
    assert "--lang-dir" not in options  # run.sh sets lang_dir after parse_options.sh
    # Variables set before the parser that are not options.
    assert not {"--recipe-dir", "--given-options", "--help-message"} & options
