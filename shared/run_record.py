"""Machine-readable records of what the recipe's scripts produced.

Every script that produces a result writes a record next to its outputs, and
make_results.py builds its tables from these records alone (it never parses
file names or log lines):

  decode.py, streaming_decode.py, sherpa_onnx_decode.py
      RES_DIR/record-NAME.json (NAME as the script's wer-summary-NAME.txt), one per
      run and test set: a DecodeRecord (script, the exact arguments, the settings
      that identify the result, WER with its error counts, the recogs file, the
      script's speed measurements, time and git commit).
  train.py
      EXP_DIR/train-record.json: a TrainRecord, rewritten at every validation and
      at the end (arguments, parameters, batches, audio seconds, training seconds).
      EXP_DIR/train-points.jsonl: one TrainPoint per line, appended at every
      progress log line (kind "train") and every validation (kind "valid").

A JSON record is written to a temporary file and renamed over the old one, so a
crash leaves either the old record or the new one, never half of one.  A JSON
line is appended with a single write(); a crash can at worst leave a torn last
line, which read_train_points reports and skips.

Readers never raise on a bad record: read_decode_records and read_train_points
return the readable records and one line per unreadable one (RecordProblem).
"""

import dataclasses
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.metrics import ErrorCounts, error_counts

SCHEMA_VERSION = 1
DECODE_RECORD_PREFIX = "record-"
TRAIN_RECORD_NAME = "train-record.json"
TRAIN_POINTS_NAME = "train-points.jsonl"
PROJECT_DIR = Path(__file__).resolve().parent.parent

# How a decoding result was obtained (DecodeSettings.streaming).
FULL_CONTEXT = "full-context"  # decode.py --simulate-streaming false
SIMULATED = "simulated"  # decode.py --simulate-streaming true
REAL = "real"  # streaming_decode.py
SHERPA_ONNX = "sherpa-onnx"  # sherpa_onnx_decode.py on the ONNX export
STREAMING_MODES = (FULL_CONTEXT, SIMULATED, REAL, SHERPA_ONNX)

# When this process started: identifies one invocation of train.py in its record.
PROCESS_STARTED_UTC = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RecordError(Exception):
    """A record file that cannot be read (missing, truncated, foreign)."""


@dataclass(frozen=True)
class RecordProblem:
    """An unreadable record: make_results.py reports it as one line and goes on."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# ------------------------------------------------------------ common fields --
def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@functools.cache
def git_commit() -> str | None:
    """HEAD of the project's git checkout, with "-dirty" when tracked files
    differ from it; None outside a checkout or without git."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(PROJECT_DIR), *args], check=True,
                                  capture_output=True, text=True, timeout=20).stdout.strip()
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None


def host_info() -> dict[str, Any]:
    """What ran the script: CPU architecture and count, Python, torch and its device."""
    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count(),
                            "python": platform.python_version()}
    torch = sys.modules.get("torch")  # only if the script uses it; never imported here
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def jsonable(value: Any) -> Any:
    """`value` with Paths as strings, tuples as lists, non-finite floats as None
    (JSON has no NaN) and anything else JSON cannot hold as its str()."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def write_json_atomic(path: Path, value: Mapping[str, Any]) -> None:
    """Writes `value` as JSON to `path` through a temporary file and a rename
    (atomic within a file system): readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp_path, "w") as out:
            json.dump(jsonable(value), out, indent=2, allow_nan=False)
            out.write("\n")
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; RecordError if it cannot be read or is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as error:
        raise RecordError(f"cannot read: {error.strerror or error}") from error
    except ValueError as error:
        raise RecordError(f"not JSON ({error})") from error
    if not isinstance(data, dict):
        raise RecordError(f"not a JSON object but {type(data).__name__}")
    return data


def _from_dict(cls: type, data: Mapping[str, Any], what: str) -> Any:
    """cls(**data) for a dataclass, with the fields it knows; RecordError if a
    required field is missing."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as error:
        raise RecordError(f"not a {what}: {error}") from error


def _check_kind(data: Mapping[str, Any], kind: str) -> None:
    if data.get("kind") != kind:
        raise RecordError(f"not a {kind} record (kind {data.get('kind')!r})")
    if data.get("schema") != SCHEMA_VERSION:
        raise RecordError(f"schema {data.get('schema')!r}, this reader knows {SCHEMA_VERSION}")


# ---------------------------------------------------------- decoding records --
def model_selection(epoch: int, iteration: int, avg: int) -> str:
    """The checkpoints decoded, as the result files name them: "iter-B-avg-A"
    (--iter B > 0) or "epoch-E-avg-A"."""
    return f"iter-{iteration}-avg-{avg}" if iteration > 0 else f"epoch-{epoch}-avg-{avg}"


@dataclass(frozen=True)
class DecodeSettings:
    """What identifies a decoding result apart from the test set.

    model: the checkpoints, model_selection()'s "iter-B-avg-A"/"epoch-E-avg-A";
    streaming: one of STREAMING_MODES; chunk_size, left_context: encoder frames
    (40 ms each), None for full context; tail_padding_seconds: silence appended
    to every utterance (resolved, never -1); search: the options the method's
    search reads (decoding_methods.search_settings), so that two results of
    one method differ in it only if their searches differ;
    model_format: "pytorch", "onnx-float" or "onnx-int8"."""

    method: str
    model: str
    use_averaged_model: bool
    streaming: str
    chunk_size: int | None = None
    left_context: int | None = None
    tail_padding_seconds: float = 0.0
    search: dict[str, Any] = field(default_factory=dict)
    model_format: str = "pytorch"

    @classmethod
    def from_options(cls, options: Any, streaming: str, search: dict[str, Any],
                     tail_padding_seconds: float = 0.0) -> "DecodeSettings":
        """From the parsed options of decode.py or streaming_decode.py and the
        settings of their search."""
        chunked = streaming != FULL_CONTEXT
        return cls(method=options.decoding_method,
                   model=model_selection(options.epoch, options.iter, options.avg),
                   use_averaged_model=bool(options.use_averaged_model), streaming=streaming,
                   chunk_size=options.decode_chunk_size if chunked else None,
                   left_context=options.left_context if chunked else None,
                   tail_padding_seconds=float(tail_padding_seconds),
                   search=search)

    def identity(self) -> tuple:
        """A hashable key: equal for the results of one setting on other test sets."""
        return (self.method, self.model, self.use_averaged_model, self.streaming,
                self.chunk_size, self.left_context, round(self.tail_padding_seconds, 6),
                tuple(sorted(self.search.items())), self.model_format)


@dataclass(frozen=True)
class DecodeRecord:
    """One run of a decoding script on one test set.

    script: "decode.py", "streaming_decode.py" or "sherpa_onnx_decode.py";
    argv: its command-line arguments as given (the command is
    ./pruned_transducer_stateless4/SCRIPT ARGV...); args: every parsed option;
    wer: errors over reference words; recogs: the recogs file, relative to the
    record's directory; speed: the script's own measurements (RTF, latency ...);
    agreement: sherpa_onnx_decode.py's comparison with streaming_decode.py."""

    script: str
    part: str
    settings: DecodeSettings
    wer: ErrorCounts
    num_utterances: int
    recogs: str
    argv: list[str]
    args: dict[str, Any]
    speed: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] | None = None
    utc: str = field(default_factory=utc_now)
    commit: str | None = None
    host: dict[str, Any] = field(default_factory=dict)
    # Where the record was read from (not stored).
    path: Path | None = field(default=None, compare=False)

    @property
    def recogs_path(self) -> Path:
        base = self.path.parent if self.path is not None else Path(".")
        return base / self.recogs

    @property
    def command(self) -> str:
        """The command line that made this result, run from the project root
        (from the directory the script was run in, strictly)."""
        return command_line(self.script, self.argv)

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": "decode", "schema": SCHEMA_VERSION}
        data.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                     if f.name != "path"})
        data["settings"] = dataclasses.asdict(self.settings)
        data["wer"] = {**dataclasses.asdict(self.wer), "wer": self.wer.wer}
        return data


def command_line(script: str, argv: Sequence[str]) -> str:
    """./pruned_transducer_stateless4/SCRIPT ARGV..., quoted for a POSIX shell."""
    import shlex

    return shlex.join([f"./pruned_transducer_stateless4/{script}", *argv])


def record_decode(path: Path, script: str, part: str, settings: DecodeSettings,
                  results: Sequence[tuple[str, str, str]], recogs: Path | str,
                  args: Mapping[str, Any], argv: Sequence[str] | None = None,
                  speed: Mapping[str, Any] | None = None,
                  agreement: Mapping[str, Any] | None = None) -> DecodeRecord:
    """Writes the DecodeRecord of `results` ([(cut_id, ref, hyp)]) to `path` and
    returns it (as it reads back: args, speed, agreement made jsonable()).

    recogs: the recogs file written for them (stored by name when it lies in
    path's directory); argv: the script's arguments (default sys.argv[1:]).
    A cut-set path's part ("librispeech_cuts_test-clean") is stored as the
    LibriSpeech part name ("test-clean")."""
    path = Path(path)
    recogs = Path(recogs)
    if recogs.parent == path.parent or not recogs.parent.parts:
        recogs_name = recogs.name
    else:
        recogs_name = os.path.relpath(recogs, path.parent)
    record = DecodeRecord(
        script=script, part=part.removeprefix("librispeech_cuts_"), settings=settings,
        wer=error_counts(results), num_utterances=len(results), recogs=recogs_name,
        argv=list(sys.argv[1:] if argv is None else argv), args=jsonable(args),
        speed=jsonable(speed or {}), agreement=None if agreement is None else jsonable(agreement),
        commit=git_commit(), host=host_info(), path=path)
    write_json_atomic(path, record.to_dict())
    return record


def read_decode_record(path: Path) -> DecodeRecord:
    """The DecodeRecord in `path`; RecordError if it is unreadable or foreign."""
    data = read_json_object(path)
    _check_kind(data, "decode")
    settings = data.get("settings")
    wer = data.get("wer")
    if not isinstance(settings, dict) or not isinstance(wer, dict):
        raise RecordError("no settings or wer object")
    record = _from_dict(DecodeRecord, {
        **data, "settings": _from_dict(DecodeSettings, settings, "settings object"),
        "wer": _from_dict(ErrorCounts, wer, "wer object"), "path": Path(path)},
        "decode record")
    if record.settings.streaming not in STREAMING_MODES:
        raise RecordError(f"unknown streaming mode {record.settings.streaming!r}")
    for name, kind in (("part", str), ("script", str), ("argv", list), ("args", dict)):
        if not isinstance(getattr(record, name), kind):
            raise RecordError(f"{name} is not a {kind.__name__}")
    return record


def find_decode_records(exp_dir: Path) -> list[Path]:
    """Every record-*.json under exp_dir (decode.py's EXP_DIR/METHOD/,
    streaming_decode.py's EXP_DIR/streaming/METHOD/, EXP_DIR/sherpa_onnx/)."""
    return sorted(p for p in Path(exp_dir).rglob(f"{DECODE_RECORD_PREFIX}*.json")
                  if p.is_file())


def read_decode_records(exp_dir: Path) -> tuple[list[DecodeRecord], list[RecordProblem]]:
    """The readable decoding records under exp_dir, and a problem per unreadable one.
    When a result was written again (same script, settings, part), the newest wins."""
    records: dict[tuple, DecodeRecord] = {}
    problems = []
    for path in find_decode_records(exp_dir):
        try:
            record = read_decode_record(path)
        except RecordError as error:
            problems.append(RecordProblem(path, str(error)))
            continue
        key = (record.script, record.settings.identity(), record.part)
        if key not in records or record.utc >= records[key].utc:
            records[key] = record
    return list(records.values()), problems


# ---------------------------------------------------------- training records --
@dataclass(frozen=True)
class TrainRecord:
    """The state of a training run (all invocations of train.py in one EXP_DIR).

    argv/args: the latest invocation; invocations: [{"argv", "started_utc"}] of
    every invocation, oldest first (a resumed run adds one); batches: optimizer
    steps so far; audio_seconds: seconds of audio trained on (all processes);
    train_seconds: wall time of the optimizer steps (validation and
    checkpointing excluded); finished: the invocation ran to its end."""

    argv: list[str]
    args: dict[str, Any]
    num_params: int
    batches: int
    epoch: int
    audio_seconds: float
    train_seconds: float
    world_size: int = 1
    device: str = "cpu"
    best_valid_loss: float | None = None
    finished: bool = False
    invocations: list[dict[str, Any]] = field(default_factory=list)
    script: str = "train.py"
    utc: str = field(default_factory=utc_now)
    commit: str | None = None
    host: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float | None:
        """Seconds of audio per second of training (None before the first step)."""
        return self.audio_seconds / self.train_seconds if self.train_seconds > 0 else None

    @property
    def command(self) -> str:
        return command_line(self.script, self.argv)

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": "train", "schema": SCHEMA_VERSION}
        data.update(dataclasses.asdict(self))
        data["throughput"] = self.throughput
        return data


def write_train_record(exp_dir: Path, record: TrainRecord) -> Path:
    """Writes EXP_DIR/train-record.json; the invocations of the record already
    there are kept, with this process's added if it is new."""
    path = Path(exp_dir) / TRAIN_RECORD_NAME
    invocations: list[dict[str, Any]] = []
    if path.is_file():
        try:
            invocations = list(read_train_record(exp_dir).invocations)
        except RecordError:
            pass  # a foreign or broken record: this one replaces it
    this = {"argv": list(record.argv), "started_utc": PROCESS_STARTED_UTC}
    invocations = [i for i in invocations if i.get("started_utc") != PROCESS_STARTED_UTC]
    record = dataclasses.replace(record, invocations=invocations + [this])
    write_json_atomic(path, record.to_dict())
    return path


def train_record_from_params(params: Mapping[str, Any], device: Any, finished: bool = False,
                             argv: Sequence[str] | None = None) -> TrainRecord:
    """A TrainRecord from train.py's params (its options plus the counters
    batch_idx_train, cur_epoch, train_seconds, train_audio_seconds, num_params,
    best_valid_loss that its checkpoints store)."""
    counters = ("batch_idx_train", "cur_epoch", "train_seconds", "train_audio_seconds",
                "num_params", "best_valid_loss")
    best = params.get("best_valid_loss")
    return TrainRecord(
        argv=list(sys.argv[1:] if argv is None else argv),
        args=jsonable({k: v for k, v in params.items() if k not in counters}),
        num_params=int(params.get("num_params", 0)),
        batches=int(params.get("batch_idx_train", 0)), epoch=int(params.get("cur_epoch", 0)),
        audio_seconds=float(params.get("train_audio_seconds", 0.0)),
        train_seconds=float(params.get("train_seconds", 0.0)),
        world_size=int(params.get("world_size", 1)), device=str(device),
        best_valid_loss=float(best) if best is not None and math.isfinite(best) else None,
        finished=finished, commit=git_commit(), host=host_info())


def read_train_record(exp_dir: Path) -> TrainRecord:
    """EXP_DIR/train-record.json; RecordError if missing, unreadable or foreign."""
    data = read_json_object(Path(exp_dir) / TRAIN_RECORD_NAME)
    _check_kind(data, "train")
    record = _from_dict(TrainRecord, data, "train record")
    if not isinstance(record.args, dict) or not isinstance(record.argv, list):
        raise RecordError("args is not an object or argv not a list")
    return record


@dataclass(frozen=True)
class TrainPoint:
    """A point of the training curves.

    kind "train": the average of the interval since the previous progress line
    (loss per frame, audio_rate = seconds of audio per second); kind "valid": a
    validation (loss per frame, wer = greedy WER in % on the validation subset).
    minutes: minutes of training (TrainRecord.train_seconds) at that batch."""

    kind: str
    batch: int
    minutes: float
    loss: float | None = None
    wer: float | None = None
    audio_rate: float | None = None
    epoch: int | None = None


def append_train_point(exp_dir: Path, point: TrainPoint) -> None:
    """Appends `point` as one line of EXP_DIR/train-points.jsonl (one write(),
    so concurrent appends never interleave and a crash tears at most that line)."""
    path = Path(exp_dir) / TRAIN_POINTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(jsonable(dataclasses.asdict(point)), allow_nan=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_train_points(exp_dir: Path) -> tuple[list[TrainPoint], list[RecordProblem]]:
    """The points of EXP_DIR/train-points.jsonl sorted by (kind, batch); a batch
    written again (by a resumed run) keeps its last point.  Unreadable lines are
    returned as problems (one per file, with their line numbers)."""
    path = Path(exp_dir) / TRAIN_POINTS_NAME
    if not path.is_file():
        return [], []
    points: dict[tuple[str, int], TrainPoint] = {}
    bad_lines = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        return [], [RecordProblem(path, f"cannot read: {error.strerror or error}")]
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise RecordError("not an object")
            point = _from_dict(TrainPoint, data, "train point")
            if point.kind not in ("train", "valid") or not isinstance(point.batch, int):
                raise RecordError("bad kind or batch")
        except (ValueError, RecordError):
            bad_lines.append(number)
            continue
        points[(point.kind, point.batch)] = point
    problems = []
    if bad_lines:
        shown = ", ".join(map(str, bad_lines[:5])) + (" ..." if len(bad_lines) > 5 else "")
        problems.append(RecordProblem(path, f"{len(bad_lines)} unreadable line(s) skipped "
                                      f"(line {shown})"))
    return [points[key] for key in sorted(points)], problems


def newest(values: Iterable[str | None]) -> str | None:
    """The largest of ISO-8601 UTC times (they sort as strings), None if none."""
    return max((v for v in values if v), default=None)
