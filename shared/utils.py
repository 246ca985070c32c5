"""Small recipe-agnostic helpers shared by every script."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

# torch is imported where it is used: scripts that need no torch (the corpus
# and noise generators, tools, benchmark clients) import this module for
# HelpFormatter and would otherwise pay seconds of torch import at start.
if TYPE_CHECKING:
    import torch


class RecipeError(Exception):
    """A problem with the user's input (file, option, checkpoint) that the
    scripts report as one line, without a traceback."""


def run_main(main: Callable[[], Any]) -> NoReturn:
    """Runs a script's main() and exits with its return value if that is an int
    (an exit status), else with 0 (decode.py's main returns its WERs).

    The errors a user causes (a missing file: FileNotFoundError; a bad option,
    checkpoint or input: RecipeError) end the script the way argparse reports a
    bad option: one line `<script>: error: <first line of the message>` on
    stderr and exit status 1, with nothing written so far undone.  Set
    RECIPE_DEBUG=1 to get the traceback instead.
    """
    try:
        result = main()
    except (FileNotFoundError, RecipeError) as error:
        if os.environ.get("RECIPE_DEBUG"):
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)


class AttributeDict(dict):
    """A dict whose keys can be read and written as attributes (as icefall's)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as error:
            raise AttributeError(f"no attribute '{key}'") from error

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


def setup_logging(log_file: Path | None = None, level: int = logging.INFO, rank: int = 0) -> None:
    """Logs to stderr (and to `log_file` if given) with timestamps.

    Under DDP only rank 0 logs INFO to the console, so that progress lines are
    not printed once per process; every rank still writes its own log file.
    """
    formatter = "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"
    handlers: list[logging.Handler] = []
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level if rank == 0 else logging.WARNING)
    handlers.append(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format=formatter, handlers=handlers, force=True)


def str2bool(value: str | bool) -> bool:
    """argparse type for icefall-style boolean options (true/false/1/0)."""
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got '{value}'")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every script's `formatter_class`: `--help` prints the description (the
    module docstring, with its usage block) as written and ends each option's
    help with "(default: X)", as icefall's and sherpa-onnx's scripts do.

    An option whose default is None or "" gets no "(default: None)": both mean
    "not given", and its help says what happens then.  A help that places
    `%(default)s` itself keeps its own wording (argparse's rule), so no default
    is printed twice."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == "":
            return action.help
        return super()._get_help_string(action)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save that never leaves a truncated file under `path`.

    The object is written to a temporary file in the same directory and renamed:
    a rename within one file system is atomic, so a kill leaves either the old
    file or the new one.
    """
    import torch

    path = Path(path)
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp_path)
    os.replace(tmp_path, path)


def get_device(
    rank: int | None = None,
    requested: str | None = None,
    environ: Mapping[str, str] | None = None,
    cuda_available: bool | None = None,
) -> torch.device:
    """The device of this process: the one place that decides it.

    - `requested` (a script's --device: "cpu", "cuda", "cuda:1") wins; asking
      for CUDA without CUDA is a RecipeError;
    - without CUDA: the CPU;
    - started by torchrun (LOCAL_RANK in the environment, on one node or
      several): cuda:LOCAL_RANK, the GPU of this process on its own node (the
      global RANK would point past the node's GPUs on node 2 and beyond);
    - a rank spawned by --world-size on one machine: cuda:rank;
    - otherwise (one plain process): cuda:0.

    Args:
      rank: the rank of a process spawned by train.py --world-size, None for a
        plain process.
      requested: an explicit device string, None for automatic.
      environ: the environment to read LOCAL_RANK from (default os.environ);
        tests pass torchrun's environments.
      cuda_available: default torch.cuda.is_available(); tests pass True to
        check the CUDA choice on a machine without a GPU.
    """
    import torch

    environ = os.environ if environ is None else environ
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested is not None and requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError as error:
            raise RecipeError(f"bad --device '{requested}': {error}") from None
        if device.type == "cuda" and not cuda:
            raise RecipeError(f"--device {requested}: this torch sees no CUDA GPU "
                              "(use --device cpu or install a CUDA build of torch, docs/gpu.md)")
        if device.type == "cuda" and device.index is None:
            # An explicit index: torch.cuda.set_device and memory statistics reject "cuda".
            device = torch.device("cuda", 0)
        return device
    if not cuda:
        return torch.device("cpu")
    if "LOCAL_RANK" in environ:
        return torch.device("cuda", int(environ["LOCAL_RANK"]))
    if rank is not None:
        return torch.device("cuda", rank)
    return torch.device("cuda", 0)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device for the decoding and export scripts (see get_device)."""
    parser.add_argument("--device", type=str, default="auto",
                        help="Where the model and every search state live: auto (cuda:0 when "
                        "torch sees a GPU, else cpu), cpu, cuda or cuda:N.")


def outputs_are_up_to_date(outputs: Sequence[Path], inputs: Sequence[Path]) -> bool:
    """True if every output exists and is at least as new as every input.

    A missing input makes this False, so the caller goes on to report it.
    """
    if not all(path.is_file() for path in outputs):
        return False
    if not all(path.is_file() for path in inputs):
        return False
    oldest_output = min(path.stat().st_mtime_ns for path in outputs)
    newest_input = max((path.stat().st_mtime_ns for path in inputs), default=0)
    return oldest_output >= newest_input


def load_script(script: Path) -> ModuleType:
    """An entry-point script loaded from its file, in-process, without running
    its command-line block: what the tests and tools/gpu_check.py use to call
    a script's get_parser() or main() in this process (no module imports a
    script by name)."""
    spec = importlib.util.spec_from_file_location(f"script_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    # As `python SCRIPT` does: the script's folder comes first on sys.path
    # (benchmarks import their sibling modules).
    sys.path.insert(0, str(script.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(script.parent))
    return module
