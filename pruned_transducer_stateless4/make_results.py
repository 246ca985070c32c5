#!/usr/bin/env python3
"""Gather what the recipe produced in an experiment directory into RESULTS.md and plots.

Usage (from the project root, after run.sh or any of its steps):

  ./pruned_transducer_stateless4/make_results.py --exp-dir exp/pruned_transducer_stateless4

  # as run.sh calls it: with the wall time of the whole command and its step log
  ./pruned_transducer_stateless4/make_results.py --exp-dir exp/pruned_transducer_stateless4 \\
      --total-minutes 83.5 --run-log exp/pruned_transducer_stateless4/log/run-sh.log

Reads (each one optional; a section whose inputs are absent says "not run"):

  EXP_DIR/<method>/wer-summary-*.txt, recogs-*.txt        decode.py (simulated streaming
                                                          or full context)
  EXP_DIR/streaming/<method>/wer-summary-*.txt, recogs-*.txt, latency-*.json
                                                          streaming_decode.py (real streaming)
  EXP_DIR/sherpa_onnx/wer-summary-PART-KEY.txt, rtf-PART-KEY.json,
      agreement-PART-KEY.json                             sherpa_onnx_decode.py
  EXP_DIR/tensorboard/                                    train.py scalars (preferred)
  EXP_DIR/log/log-train-*                                 train.py log (fallback, and the
                                                          validation times in 0.1 min)
  newest EXP_DIR/epoch-N.pt or checkpoint-B.pt            train.py counters: num_params,
                                                          train_seconds, batch_idx_train

Writes EXP_DIR/RESULTS.md (also printed) and EXP_DIR/plots/{loss,valid_wer,wer_by_method}.png:

  1. WER (%) of every decoding setting on every test part, with the settings and the
     command that reproduces each row; greedy search's WER per speaker (on the generated
     corpus a speaker is a TTS voice), marked by whether training heard that speaker;
  2. agreement of real streaming (streaming_decode.py) with simulated streaming
     (decode.py --simulate-streaming true), greedy search, per part;
  3. RTF, token latency and final-result latency of real streaming; sherpa-onnx RTF and
     agreement;
  4. training: parameters, training time, batches, throughput, validation loss and WER
     over time;
  5. the wall time of run.sh (--total-minutes, --run-log).
"""

import argparse
import json
import logging
import math
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kaldialign

from pruned_transducer_stateless4.model_config import MODEL_OPTION_NAMES
from shared.checkpoint import read_checkpoint_params
from shared.metrics import read_recogs
from shared.utils import str2bool

# The scalar tags train.py writes (tests/test_make_results.py checks that train.py
# still uses each of them).
TB_TRAIN_LOSS = "train/loss"
TB_AUDIO_RATE = "train/audio_seconds_per_second"
TB_VALID_LOSS = "valid/loss"
TB_VALID_WER = "valid/wer"
TB_VALID_WER_VS_MINUTES = "valid/wer_vs_minutes"
TB_TAGS = (TB_TRAIN_LOSS, TB_AUDIO_RATE, TB_VALID_LOSS, TB_VALID_WER, TB_VALID_WER_VS_MINUTES)

# Test parts first, in this order; other parts (dev-clean, ...) follow alphabetically.
PART_ORDER = ("test-clean", "test-other")
PART_NOTES = {
    "test-clean": "voices seen in training",
    "test-other": "includes voices unseen in training",
}
KNOWN_PARTS = ("test-clean", "test-other", "dev-clean", "dev-other")

# Subdirectories of EXP_DIR that are not decode.py result directories.
NON_METHOD_DIRS = {"streaming", "sherpa_onnx", "tensorboard", "log", "plots", ".done"}

DECODE_PY = "decode.py"
STREAMING_PY = "streaming_decode.py"
SHERPA = "sherpa-onnx"
SCRIPT_DIR = "./pruned_transducer_stateless4"

NOT_RUN = "not run"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exp-dir", type=Path, default=Path("exp/pruned_transducer_stateless4"),
                        help="Experiment directory to summarise; RESULTS.md and plots/ are "
                        "written into it.")
    parser.add_argument("--total-minutes", type=float, default=None,
                        help="Wall time of the whole run.sh command in minutes, shown in the "
                        "wall-time section (run.sh passes it).")
    parser.add_argument("--run-log", type=Path, default=None,
                        help="File with run.sh's progress lines ('[run.sh HH:MM:SS, +Ns] STEP: "
                        "starting/finished'); the wall time of each step's last completed "
                        "run is taken from it.")
    parser.add_argument("--plots", type=str2bool, default=True,
                        help="Draw EXP_DIR/plots/*.png (matplotlib, Agg backend).")
    parser.add_argument("--max-valid-rows", type=int, default=20,
                        help="At most this many validation points in the table of validation "
                        "over time (first and last always included; the plots show all).")
    parser.add_argument("--quiet", type=str2bool, default=False,
                        help="Do not print RESULTS.md to stdout.")
    return parser


# ------------------------------------------------------------ decoding results --
@dataclass(frozen=True)
class WerResult:
    """One wer-summary file: a decoding setting on one part."""

    program: str  # DECODE_PY, STREAMING_PY or SHERPA
    method: str  # decoding method (directory name; the key for sherpa-onnx)
    part: str
    key: str  # search settings, as the writer named them
    suffix: str  # model and encoding settings ("" for sherpa-onnx)
    wer: float  # percent
    path: Path

    @property
    def setting(self) -> tuple[str, str, str, str]:
        """What identifies a row of the WER table (everything but the part)."""
        return (self.program, self.method, self.key, self.suffix)

    def sibling(self, prefix: str, extension: str = ".txt") -> Path:
        """The file written next to this one for the same part, key and suffix,
        e.g. sibling("recogs-") or sibling("latency-", ".json")."""
        stem = self.path.name[len("wer-summary-"):-len(".txt")]
        return self.path.with_name(f"{prefix}{stem}{extension}")


def read_wer_summary(path: Path) -> tuple[str, float] | None:
    """(key, WER in %) from a "settings\\tWER" file (decode.py, streaming_decode.py),
    or None if it cannot be read."""
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except OSError as error:
        logging.warning(f"cannot read {path}: {error}")
        return None
    # The first data row (the recipe's writers write one; icefall's several, best first).
    for fields in lines:
        if len(fields) >= 2 and fields[0] != "settings":
            try:
                return fields[0], float(fields[1])
            except ValueError:
                break
    logging.warning(f"{path}: no 'KEY WER' line")
    return None


def normalise_part(part: str) -> str:
    """streaming_decode.py names a cut-set path by its stem; decode.py strips the
    librispeech_cuts_ prefix.  Use decode.py's names so the parts line up."""
    return part.removeprefix("librispeech_cuts_")


def split_name(name: str, key: str | None, known_parts: Sequence[str]) -> tuple[str, str]:
    """Splits "PART-KEY-SUFFIX" (or "PART-KEY") into (part, suffix).

    With the key known (from the file's contents) the split is exact, whatever
    hyphens the part or suffix hold.  Without it, a known part name is taken
    from the front and the rest is returned as the "suffix" (the key, for
    sherpa-onnx's rtf-/agreement- files)."""
    if key:
        marker = f"-{key}"
        index = name.find(marker + "-")
        if index < 0 and name.endswith(marker):
            index = len(name) - len(marker)
        if index > 0:
            return name[:index], name[index + len(marker):].lstrip("-")
    for part in sorted(known_parts, key=len, reverse=True):
        if name.startswith(part + "-"):
            return part, name[len(part) + 1:]
    # An unknown part: LibriSpeech part names have exactly one hyphen.
    fields = name.split("-")
    return "-".join(fields[:2]), "-".join(fields[2:])


def collect_wer_results(exp_dir: Path) -> list[WerResult]:
    """Every wer-summary file of decode.py, streaming_decode.py and sherpa-onnx."""
    sources: list[tuple[str, str, Path]] = []  # (program, method, directory)
    if exp_dir.is_dir():
        for sub in sorted(exp_dir.iterdir()):
            if sub.is_dir() and sub.name not in NON_METHOD_DIRS:
                sources.append((DECODE_PY, sub.name, sub))
        streaming_dir = exp_dir / "streaming"
        if streaming_dir.is_dir():
            for sub in sorted(streaming_dir.iterdir()):
                if sub.is_dir():
                    sources.append((STREAMING_PY, sub.name, sub))
        if (exp_dir / "sherpa_onnx").is_dir():
            sources.append((SHERPA, "", exp_dir / "sherpa_onnx"))

    results = []
    for program, method, directory in sources:
        for path in sorted(directory.glob("wer-summary-*.txt")):
            parsed = read_wer_summary(path)
            if parsed is None:
                continue
            key, wer = parsed
            part, suffix = split_name(path.name[len("wer-summary-"):-len(".txt")], key,
                                      KNOWN_PARTS)
            results.append(WerResult(program, method or key, normalise_part(part), key, suffix,
                                     wer, path))
    return results


def ordered_parts(parts: Sequence[str]) -> list[str]:
    present = set(parts)
    return [p for p in PART_ORDER if p in present] + sorted(present - set(PART_ORDER))


@dataclass
class Settings:
    """Model and encoding settings parsed back from a result's key and suffix."""

    model: str | None = None  # "iter-1000-avg-2" or "epoch-30-avg-9"
    averaged: bool = False  # --use-averaged-model true
    chunk_size: int | None = None  # None: full context (decode.py without simulation)
    left_context: int | None = None
    tail_padding: float = 0.0  # streaming_decode.py --tail-padding-seconds, resolved
    options: list[str] = field(default_factory=list)  # search options, as on a command line

    @property
    def max_sym_per_frame(self) -> str | None:
        if "--max-sym-per-frame" in self.options:
            return self.options[self.options.index("--max-sym-per-frame") + 1]
        return None


_FAST_BEAM = re.compile(r"beam_([\d.]+)_max_contexts_(\d+)_max_states_(\d+)")


def parse_settings(result: WerResult) -> Settings:
    """The settings encoded in the file name (decode.py's result_key/result_suffix,
    streaming_decode.py's result_key/result_suffix)."""
    settings = Settings()
    suffix, key = result.suffix, result.key
    match = re.match(r"((?:iter|epoch)-\d+-avg-\d+)", suffix)
    if match:
        settings.model = match.group(1)
    settings.averaged = "use-averaged-model" in suffix
    match = re.search(r"chunk-size-(\d+)-left-context-(\d+)", suffix)
    if match:
        settings.chunk_size, settings.left_context = int(match.group(1)), int(match.group(2))
    if match := re.search(r"-tail-padding-([\d.]+)", suffix):
        settings.tail_padding = float(match.group(1))

    options = settings.options
    if match := re.fullmatch(r"greedy_search_max_sym_per_frame_(\d+)", key):
        options += ["--max-sym-per-frame", match.group(1)]
    elif match := re.search(r"max-sym-per-frame-(\d+)", suffix):
        options += ["--max-sym-per-frame", match.group(1)]
    if match := re.fullmatch(r"(?:beam_size|num_active_paths)_(\d+)", key):
        options += ["--beam-size", match.group(1)]
    if match := _FAST_BEAM.match(key):
        options += ["--beam", match.group(1), "--max-contexts", match.group(2),
                    "--max-states", match.group(3)]
    if match := re.search(r"_num_paths_(\d+)_nbest_scale_([\d.]+)", key):
        options += ["--num-paths", match.group(1), "--nbest-scale", match.group(2)]
    if match := re.search(r"_ngram_lm_scale_([\d.]+)", key):
        options += ["--ngram-lm-scale", match.group(1)]
    return settings


_SHERPA_LOG_LINE = re.compile(r"chunks of (\d+) frames, (\d+) frames of left context")


def parse_sherpa_settings(result: WerResult) -> Settings:
    """sherpa_onnx_decode.py's file names hold only the key: the model comes from
    the encoder named in rtf-PART-KEY.json, chunk size and left context (the
    export's metadata) from its log-decode-KEY."""
    settings = Settings()
    rtf = result.sibling("rtf-", ".json")
    data = read_json(rtf) if rtf.is_file() else None
    if data and (match := re.search(r"encoder-((?:iter|epoch)-\d+-avg-\d+)",
                                    str(data.get("model", "")))):
        settings.model = match.group(1)
    log = result.path.with_name(f"log-decode-{result.key}")
    if log.is_file():
        matches = _SHERPA_LOG_LINE.findall(log.read_text(errors="replace"))
        if matches:  # the log is appended to by every run: the last one wrote the results
            settings.chunk_size, settings.left_context = map(int, matches[-1])
    return settings


def mode_of(result: WerResult, settings: Settings) -> str:
    if result.program == STREAMING_PY:
        if settings.tail_padding > 0:
            return f"real streaming, {settings.tail_padding:g} s tail padding"
        return "real streaming"
    if result.program == SHERPA:
        return "sherpa-onnx streaming"
    return "simulated streaming" if settings.chunk_size is not None else "full context"


def command_for(result: WerResult, settings: Settings, exp_dir: Path,
                bpe_model: str | None) -> str:
    """The command line that reproduces a result (the --bpe-model stored in the
    training checkpoint, when known)."""
    if result.program == SHERPA:
        args = [f"{SCRIPT_DIR}/sherpa_onnx_decode.py", "--exp-dir", str(exp_dir)]
        if settings.model:
            kind, number, _, avg = settings.model.split("-")
            args += [f"--{kind}", number, "--avg", avg]
        args += ["--int8", "true" if result.key.endswith("int8") else "false"]
        return " ".join(args)
    args = [f"{SCRIPT_DIR}/{result.program}"]
    if settings.model:
        kind, number, _, avg = settings.model.split("-")
        args += [f"--{kind}", number, "--avg", avg]
    args += ["--use-averaged-model", "true" if settings.averaged else "false",
             "--exp-dir", str(exp_dir)]
    if bpe_model:
        args += ["--bpe-model", bpe_model]
        if "LG" in result.method:
            args += ["--lang-dir", str(Path(bpe_model).parent)]
    args += ["--decoding-method", result.method]
    if result.program == DECODE_PY and settings.chunk_size is not None:
        args += ["--simulate-streaming", "true"]
    if settings.chunk_size is not None:
        args += ["--decode-chunk-size", str(settings.chunk_size),
                 "--left-context", str(settings.left_context)]
    args += settings.options
    if settings.tail_padding > 0:
        args += ["--tail-padding-seconds", f"{settings.tail_padding:g}"]
    return " ".join(args)


# ----------------------------------------------------------------- agreement --
@dataclass
class Agreement:
    part: str
    num_compared: int = 0
    num_equal: int = 0
    only_in_one: int = 0  # utterances decoded by only one of the two
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # (id, sim, real)
    note: str = ""

    @property
    def num_differing(self) -> int:
        return self.num_compared - self.num_equal

    @property
    def fraction(self) -> float:
        return self.num_equal / self.num_compared if self.num_compared else math.nan


def compare_recogs(part: str, simulated: Path, real: Path, max_examples: int = 3) -> Agreement:
    """Utterance-level agreement of two recogs files (hypotheses compared word for word)."""
    sim, rea = read_recogs(simulated), read_recogs(real)
    agreement = Agreement(part)
    common = sorted(set(sim) & set(rea))
    agreement.only_in_one = len(set(sim) ^ set(rea))
    agreement.num_compared = len(common)
    for cut_id in common:
        if sim[cut_id][1] == rea[cut_id][1]:
            agreement.num_equal += 1
        elif len(agreement.examples) < max_examples:
            agreement.examples.append((cut_id, " ".join(sim[cut_id][1]),
                                       " ".join(rea[cut_id][1])))
    return agreement


def streaming_agreement(results: Sequence[WerResult]) -> list[tuple[WerResult, Agreement]]:
    """For each real-streaming greedy result, the agreement with decode.py's
    simulated-streaming greedy result of the same part, model (checkpoints,
    averaging), chunk size, left context and max symbols per frame.  The two
    should compute the same thing; differences come from the front ends
    (online fbank on the audio vs stored, lilcom-compressed features), the
    padding of the last chunk, or bugs.  Runs with --tail-padding-seconds
    decode other samples than decode.py and are left out."""
    def match_key(result: WerResult) -> tuple:
        s = parse_settings(result)
        return (result.part, s.model, s.averaged, s.chunk_size, s.left_context,
                s.max_sym_per_frame)

    simulated = {match_key(r): r for r in results
                 if r.program == DECODE_PY and r.method == "greedy_search"
                 and parse_settings(r).chunk_size is not None}
    pairs = []
    for real in results:
        if (real.program != STREAMING_PY or real.method != "greedy_search"
                or parse_settings(real).tail_padding > 0):
            continue
        sim = simulated.get(match_key(real))
        if sim is None:
            pairs.append((real, Agreement(real.part, note="no decode.py --simulate-streaming "
                                          "greedy_search result with the same model, chunk "
                                          "size and left context")))
            continue
        sim_recogs, real_recogs = sim.sibling("recogs-"), real.sibling("recogs-")
        missing = [str(p) for p in (sim_recogs, real_recogs) if not p.is_file()]
        if missing:
            pairs.append((real, Agreement(real.part, note=f"missing {', '.join(missing)}")))
            continue
        try:
            pairs.append((real, compare_recogs(real.part, sim_recogs, real_recogs)))
        except (OSError, ValueError, SyntaxError) as error:
            pairs.append((real, Agreement(real.part, note=f"unreadable recogs file: {error}")))
    return pairs


# ---------------------------------------------------------------- json files --
def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        logging.warning(f"cannot read {path}: {error}")
        return None
    return data if isinstance(data, dict) else None


def collect_sherpa_json(exp_dir: Path, prefix: str,
                        known_parts: Sequence[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """[(part, key, contents)] of EXP_DIR/sherpa_onnx/PREFIX-PART-KEY.json."""
    directory = exp_dir / "sherpa_onnx"
    found = []
    for path in sorted(directory.glob(f"{prefix}-*.json")) if directory.is_dir() else []:
        data = read_json(path)
        if data is None:
            continue
        part, key = split_name(path.stem[len(prefix) + 1:], None, known_parts)
        found.append((normalise_part(part), key, data))
    return found


# ------------------------------------------------------------------ training --
@dataclass
class ValidPoint:
    batch: int
    minutes: float | None = None
    loss: float | None = None
    wer: float | None = None  # percent


@dataclass
class TrainingInfo:
    checkpoint: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint_error: str = ""
    sources: list[str] = field(default_factory=list)  # what the numbers came from
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (batch, loss)
    audio_rates: list[float] = field(default_factory=list)  # s of audio / s, per interval
    valid: list[ValidPoint] = field(default_factory=list)
    log_num_params: float | None = None  # from "model: X M parameters"

    @property
    def empty(self) -> bool:
        return not (self.params or self.train_loss or self.valid or self.audio_rates)


def newest_checkpoint(exp_dir: Path) -> Path | None:
    """The most recently written epoch-N.pt or checkpoint-B.pt (not exports)."""
    paths = [p for pattern in ("epoch-*.pt", "checkpoint-*.pt") for p in exp_dir.glob(pattern)
             if re.fullmatch(r"(epoch|checkpoint)-\d+\.pt", p.name)]
    return max(paths, key=lambda p: p.stat().st_mtime, default=None)


def read_tensorboard(tb_dir: Path) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, value, wall_time)]} of train.py's scalars, all events kept.

    EventAccumulator reads every event file of the directory in order and drops
    the events that a resumed run wrote again (out-of-order steps), so a
    resumed run reads as one."""
    if not tb_dir.is_dir() or not any(tb_dir.glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    # Its directory watcher logs every file it looks for at INFO.
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    accumulator = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0})
    accumulator.Reload()
    available = set(accumulator.Tags().get("scalars", []))
    return {tag: [(event.step, event.value, event.wall_time)
                  for event in accumulator.Scalars(tag)]
            for tag in TB_TAGS if tag in available}


_FLOAT = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
_TRAIN_LINE = re.compile(rf"epoch \d+, batch (\d+), loss ({_FLOAT}),.*? ({_FLOAT}) s audio/s")
_VALID_LINE = re.compile(rf"validation at batch (\d+) \(({_FLOAT}) min of training\): "
                         rf"loss ({_FLOAT}),.*greedy WER ({_FLOAT})%")
_PARAMS_LINE = re.compile(rf"model: ({_FLOAT}) M parameters")


def read_train_logs(log_dir: Path) -> tuple[list[tuple[int, float, float]], list[ValidPoint],
                                            float | None]:
    """([(batch, train loss, audio rate)], [ValidPoint], M parameters) from the
    rank-0 train logs, oldest first; a batch logged again by a resumed run
    keeps its newest values."""
    train: dict[int, tuple[int, float, float]] = {}
    valid: dict[int, ValidPoint] = {}
    num_params = None
    paths = sorted(p for p in log_dir.glob("log-train-*")
                   if "-rank" not in p.name or p.name.endswith("-rank0")) \
        if log_dir.is_dir() else []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError as error:
            logging.warning(f"cannot read {path}: {error}")
            continue
        for line in text.splitlines():
            if match := _TRAIN_LINE.search(line):
                batch = int(match.group(1))
                train[batch] = (batch, float(match.group(2)), float(match.group(3)))
            elif match := _VALID_LINE.search(line):
                batch = int(match.group(1))
                valid[batch] = ValidPoint(batch, float(match.group(2)), float(match.group(3)),
                                          float(match.group(4)))
            elif match := _PARAMS_LINE.search(line):
                num_params = float(match.group(1)) * 1e6
    return ([train[b] for b in sorted(train)], [valid[b] for b in sorted(valid)], num_params)


def gather_training(exp_dir: Path) -> TrainingInfo:
    """Training numbers from the newest checkpoint, tensorboard (preferred for
    curves) and the train logs (fallback; their validation times have 0.1 min
    resolution, tensorboard's whole minutes)."""
    info = TrainingInfo()
    info.checkpoint = newest_checkpoint(exp_dir) if exp_dir.is_dir() else None
    if info.checkpoint is not None:
        try:
            info.params = read_checkpoint_params(info.checkpoint)
            info.sources.append(f"checkpoint {info.checkpoint.name}")
        except Exception as error:  # any unreadable file: report it, summarise the rest
            first_line = (str(error).splitlines() or [""])[0]
            info.checkpoint_error = f"{type(error).__name__}: {first_line}"

    log_train, log_valid, info.log_num_params = read_train_logs(exp_dir / "log")
    try:
        scalars = read_tensorboard(exp_dir / "tensorboard")
    except Exception as error:  # a corrupt event file must not hide the other sections
        logging.warning(f"cannot read {exp_dir / 'tensorboard'}: {error}")
        scalars = {}
    if scalars:
        info.sources.append("tensorboard")
    if log_train or log_valid:
        info.sources.append("train log")

    if TB_TRAIN_LOSS in scalars:
        info.train_loss = [(step, value) for step, value, _ in scalars[TB_TRAIN_LOSS]]
    else:
        info.train_loss = [(batch, loss) for batch, loss, _ in log_train]
    if TB_AUDIO_RATE in scalars:
        info.audio_rates = [value for _, value, _ in scalars[TB_AUDIO_RATE]]
    else:
        info.audio_rates = [rate for _, _, rate in log_train]

    if TB_VALID_LOSS in scalars or TB_VALID_WER in scalars:
        points: dict[int, ValidPoint] = {}
        for step, value, _ in scalars.get(TB_VALID_LOSS, []):
            points.setdefault(step, ValidPoint(step)).loss = value
        # valid/wer_vs_minutes is written in the same call as valid/wer, so the
        # event with the nearest wall time gives the (whole) minutes.
        by_minutes = scalars.get(TB_VALID_WER_VS_MINUTES, [])
        for step, value, wall in scalars.get(TB_VALID_WER, []):
            point = points.setdefault(step, ValidPoint(step))
            point.wer = value
            nearest = min(by_minutes, key=lambda e: abs(e[2] - wall), default=None)
            if nearest is not None and abs(nearest[2] - wall) < 5.0:
                point.minutes = float(nearest[0])
        log_minutes = {p.batch: p.minutes for p in log_valid}
        for point in points.values():
            if log_minutes.get(point.batch) is not None:
                point.minutes = log_minutes[point.batch]
        info.valid = [points[b] for b in sorted(points)]
    else:
        info.valid = log_valid
    return info


# ------------------------------------------------------------------- run log --
_RUN_LINE = re.compile(r"^\[run\.sh [\d:]+, \+(\d+)s\] (\S+): (starting|finished)")


def read_run_log(path: Path) -> dict[str, float]:
    """{step: seconds} of the last completed run of each run.sh step.  The +Ns
    offsets restart with every invocation, and a step starts and finishes in
    the same invocation, so finished minus starting is its wall time."""
    durations: dict[str, float] = {}
    started: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = _RUN_LINE.match(line)
        if not match:
            continue
        offset, name, event = int(match.group(1)), match.group(2), match.group(3)
        if event == "starting":
            started[name] = offset
        elif name in started and offset >= started[name]:
            durations[name] = float(offset - started.pop(name))
    return durations


# ----------------------------------------------------------------- rendering --
def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    """A number for a table; n/a for missing or NaN."""
    if value is None:
        return "n/a"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "n/a"
    return f"{number:.{digits}f}{unit}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def part_header(part: str) -> str:
    return f"{part} ({PART_NOTES[part]})" if part in PART_NOTES else part


@dataclass
class Row:
    """A row of the WER table: one decoding setting over all parts."""

    number: int
    program: str
    method: str
    key: str
    settings: Settings
    mode: str
    wers: dict[str, WerResult]
    command: str
    example: str  # one of its wer-summary files, relative to EXP_DIR

    @property
    def label(self) -> str:
        return f"[{self.number}] {self.method} ({self.mode})"


def build_rows(results: Sequence[WerResult], exp_dir: Path, bpe_model: str | None) -> list[Row]:
    program_order = {DECODE_PY: 0, STREAMING_PY: 1, SHERPA: 2}
    grouped: dict[tuple[str, str, str, str], dict[str, WerResult]] = {}
    for result in results:
        grouped.setdefault(result.setting, {})[result.part] = result
    rows = []
    for setting in sorted(grouped, key=lambda s: (program_order.get(s[0], 9), s[1], s[3], s[2])):
        wers = grouped[setting]
        first = next(iter(wers.values()))
        settings = (parse_sherpa_settings(first) if first.program == SHERPA
                    else parse_settings(first))
        example = (first.path.relative_to(exp_dir) if first.path.is_relative_to(exp_dir)
                   else first.path)
        rows.append(Row(len(rows) + 1, first.program, first.method, first.key, settings,
                        mode_of(first, settings), wers,
                        command_for(first, settings, exp_dir, bpe_model), str(example)))
    return rows


def wer_section(rows: Sequence[Row], parts: Sequence[str]) -> list[str]:
    out = ["## 1. WER (%)", ""]
    out.append("On the generated corpus (`prepare.sh --corpus synth`) test-clean is spoken by "
               "voices heard in training and test-other includes voices never heard in "
               "training; on real LibriSpeech they are its usual clean/other test sets. "
               "Chunk size and left context are in encoder frames (40 ms each); "
               "`[n]` refers to the commands below.")
    out.append("")
    header = ["setting", "program", "method", "mode", "model", "chunk", "left ctx", "key"]
    header += [part_header(part) for part in parts]
    body = []
    for row in rows:
        s = row.settings
        model = (s.model or "") + (", averaged" if s.averaged else "")
        body.append([f"[{row.number}]", row.program, row.method, row.mode, model or "n/a",
                     fmt(s.chunk_size, 0) if s.chunk_size is not None else "full",
                     fmt(s.left_context, 0) if s.left_context is not None else "-",
                     f"`{row.key}`"]
                    + [fmt(row.wers[p].wer) if p in row.wers else "-" for p in parts])
    programs = {row.program for row in rows}
    blanks = ["-"] * (len(header) - 4)
    for program, what in ((DECODE_PY, "simulated streaming"), (STREAMING_PY, "real streaming"),
                          (SHERPA, "sherpa-onnx")):
        if program not in programs:
            body.append(["-", program, NOT_RUN, what] + blanks)
    out += table(header, body)
    if rows:
        out += ["", "Commands (plus the data options of training, e.g. `--manifest-dir`); "
                "the suffix of each result file names the same settings:", "", "```"]
        for row in rows:
            out.append(f"# [{row.number}] {row.example}")
            out.append(row.command)
        out.append("```")
    return out


def speaker_of(cut_id: str) -> str:
    """LibriSpeech ids are speaker-chapter-utterance (speed-perturbed copies add
    a suffix to the last field)."""
    return cut_id.split("-")[0]


def read_training_speakers(params: dict[str, Any]) -> set[str] | None:
    """The speakers of the training cut set that the checkpoint's data options
    name (--manifest-dir, --full-libri), or None when it is not there."""
    from pruned_transducer_stateless4.asr_datamodule import LibriSpeechAsrDataModule

    if params.get("manifest_dir") is None:
        return None
    data = LibriSpeechAsrDataModule(argparse.Namespace(manifest_dir=Path(params["manifest_dir"])))
    try:
        cuts = (data.train_all_shuf_cuts() if params.get("full_libri")
                else data.train_clean_100_cuts())
        return {supervision.speaker for cut in cuts for supervision in cut.supervisions}
    except FileNotFoundError:
        return None


def speaker_section(rows: Sequence[Row], parts: Sequence[str],
                    training_speakers: set[str] | None) -> list[str]:
    """WER per speaker of the first greedy-search row of decode.py."""
    row = next((r for r in rows if r.program == DECODE_PY and r.method == "greedy_search"), None)
    out = ["### WER per speaker", ""]
    if row is None:
        return out + [f"{NOT_RUN} (needs decode.py greedy_search)"]
    out += [f"Greedy search, row [{row.number}]. \"heard in training\" comes from the training "
            "cut set of the checkpoint's `--manifest-dir`"
            + (" (not found: `?`)." if training_speakers is None else "."), ""]
    body = []
    for part in parts:
        if part not in row.wers:
            continue
        errors: dict[str, int] = defaultdict(int)
        words: dict[str, int] = defaultdict(int)
        for cut_id, (ref, hyp) in read_recogs(row.wers[part].sibling("recogs-")).items():
            speaker = speaker_of(cut_id)
            errors[speaker] += kaldialign.edit_distance(ref, hyp)["total"]
            words[speaker] += len(ref)
        heard_totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # errors, words
        for speaker in sorted(words, key=lambda s: (len(s), s)):
            heard = ("?" if training_speakers is None
                     else "yes" if speaker in training_speakers else "no")
            body.append([part, speaker, heard, words[speaker],
                         fmt(100.0 * errors[speaker] / max(words[speaker], 1))])
            heard_totals[heard][0] += errors[speaker]
            heard_totals[heard][1] += words[speaker]
        if training_speakers is not None:
            for heard, (num_errors, num_words) in sorted(heard_totals.items(), reverse=True):
                body.append([part, "**all**", f"**{heard}**", num_words,
                             f"**{fmt(100.0 * num_errors / max(num_words, 1))}**"])
    return out + table(["part", "speaker", "heard in training", "words", "WER (%)"], body)


def agreement_section(pairs: Sequence[tuple[WerResult, Agreement]],
                      sherpa_agreement: Sequence[tuple[str, str, dict[str, Any]]]) -> list[str]:
    out = ["## 2. Simulated vs real streaming (greedy search)", ""]
    if not pairs:
        out.append(f"{NOT_RUN}: no streaming_decode.py greedy_search results "
                   "(EXP_DIR/streaming/greedy_search/).")
    else:
        out.append("Fraction of utterances whose streaming_decode.py transcript equals "
                   "decode.py --simulate-streaming true (same checkpoints, chunk size and left "
                   "context) word for word. Both compute the same encoder and search; "
                   "differences come from the front ends (online fbank on the audio vs stored "
                   "lilcom-compressed features), the padding of the last chunk, or bugs.")
        out.append("")
        body = []
        examples = []
        for real, agreement in pairs:
            s = parse_settings(real)
            setting = f"{s.model or '?'}, chunk {s.chunk_size}, left {s.left_context}"
            if agreement.note:
                body.append([part_header(agreement.part), setting, "n/a", "n/a", "n/a",
                             agreement.note])
                continue
            note = (f"{agreement.only_in_one} utterances decoded by only one"
                    if agreement.only_in_one else "")
            body.append([part_header(agreement.part), setting,
                         f"{agreement.num_equal}/{agreement.num_compared}",
                         fmt(agreement.fraction * 100, 2, "%"), agreement.num_differing, note])
            examples += [(agreement.part, *example) for example in agreement.examples]
        out += table(["part", "setting", "equal", "agreement", "differing", "note"], body)
        if examples:
            out += ["", "Examples of differing transcripts:", ""]
            for part, cut_id, sim, real_text in examples:
                out.append(f"- {part} `{cut_id}`: simulated \"{sim}\" / real \"{real_text}\"")
    out.append("")
    out.append("sherpa-onnx agreement (sherpa_onnx_decode.py's agreement-PART-KEY.json):")
    out.append("")
    if not sherpa_agreement:
        out.append(f"{NOT_RUN} (no EXP_DIR/sherpa_onnx/agreement-*.json).")
    else:
        body = [[part_header(part), f"`{key}`", data.get("num_utts", "n/a"),
                 data.get("num_equal", "n/a"), fmt(_percent(data.get("agreement")), 2, "%"),
                 Path(data["compare_file"]).name if data.get("compare_file") else "n/a"]
                for part, key, data in sherpa_agreement]
        out += table(["part", "key", "utterances", "equal", "agreement", "compared with"],
                     body)
    return out


def _percent(value: Any) -> float | None:
    """A fraction (<= 1) as a percentage; a value already in percent unchanged."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number * 100 if number <= 1.0 else number


def latency_section(rows: Sequence[Row],
                    sherpa_rtf: Sequence[tuple[str, str, dict[str, Any]]]) -> list[str]:
    out = ["## 3. Speed and latency", "", "Real streaming (streaming_decode.py, simulated "
           "real-time audio delivery; latencies in ms, see its latency-*.txt for the "
           "definitions):", ""]
    body = []
    for row in rows:
        if row.program != STREAMING_PY:
            continue
        for part in ordered_parts(list(row.wers)):
            path = row.wers[part].sibling("latency-", ".json")
            data = read_json(path) if path.is_file() else None
            if data is None:
                body.append([row.label, part_header(part)] + ["n/a"] * 8)
                continue
            token, frame, final = (data.get("token_latency_ms") or {},
                                   data.get("frame_latency_ms") or {},
                                   data.get("final_delay_ms") or {})
            body.append([row.label, part_header(part), data.get("num_utterances", "n/a"),
                         fmt(data.get("rtf"), 4), fmt(token.get("mean"), 1),
                         fmt(token.get("p95"), 1), fmt(frame.get("mean"), 1),
                         fmt(frame.get("p95"), 1), fmt(final.get("mean"), 1),
                         fmt(final.get("p95"), 1)])
    if body:
        out += table(["setting", "part", "utts", "RTF", "token mean", "token p95",
                      "frame mean", "frame p95", "final-result mean", "final-result p95"],
                     body)
    else:
        out.append(f"{NOT_RUN} (no EXP_DIR/streaming/*/latency-*.json).")
    out += ["", "sherpa-onnx (sherpa_onnx_decode.py's rtf-PART-KEY.json):", ""]
    if not sherpa_rtf:
        out.append(f"{NOT_RUN} (no EXP_DIR/sherpa_onnx/rtf-*.json).")
    else:
        body = [[part_header(part), f"`{key}`", fmt(data.get("rtf"), 4),
                 data.get("num_utterances", data.get("num_utts", "n/a")),
                 fmt(data.get("audio_seconds"), 1), fmt(data.get("processing_seconds"), 1),
                 data.get("num_threads", "n/a")]
                for part, key, data in sherpa_rtf]
        out += table(["part", "key", "RTF", "utterances", "audio s", "processing s",
                      "threads"], body)
    return out


def training_section(info: TrainingInfo, exp_dir: Path, max_valid_rows: int) -> list[str]:
    out = ["## 4. Training", ""]
    if info.empty:
        note = f" ({info.checkpoint}: unreadable, {info.checkpoint_error})" \
            if info.checkpoint_error else ""
        return out + [f"{NOT_RUN}: no checkpoint, tensorboard events or train log in "
                      f"{exp_dir}{note}."]
    params = info.params
    out.append(f"From: {', '.join(info.sources)}.")
    if info.checkpoint_error:
        out.append(f"(The newest checkpoint {info.checkpoint} is unreadable: "
                   f"{info.checkpoint_error}.)")
    out.append("")
    num_params = params.get("num_params", info.log_num_params)
    train_seconds = params.get("train_seconds")
    batches = params.get("batch_idx_train")
    if batches is None and info.train_loss:
        batches = info.train_loss[-1][0]
    items = [
        ("parameters", f"{num_params / 1e6:.2f} M" if num_params else "n/a"),
        ("training time (optimizer steps only; validation, checkpointing excluded)",
         fmt(train_seconds / 60 if train_seconds is not None else None, 1, " min")),
        ("batches", batches if batches is not None else "n/a"),
        ("epoch reached", params.get("cur_epoch", "n/a")),
    ]
    if info.audio_rates:
        rates = info.audio_rates
        items.append(("throughput (s of audio per s, mean of logged intervals)",
                      f"{sum(rates) / len(rates):.1f} (min {min(rates):.1f}, "
                      f"max {max(rates):.1f}, {len(rates)} intervals)"))
    else:
        items.append(("throughput (s of audio per s)", "n/a"))
    if info.train_loss:
        items.append(("training loss, first / last logged",
                      f"{fmt(info.train_loss[0][1], 4)} (batch {info.train_loss[0][0]}) / "
                      f"{fmt(info.train_loss[-1][1], 4)} (batch {info.train_loss[-1][0]})"))
    with_loss = [p for p in info.valid if p.loss is not None]
    if with_loss:
        items.append(("validation loss, first / last",
                      f"{fmt(with_loss[0].loss, 4)} (batch {with_loss[0].batch}) / "
                      f"{fmt(with_loss[-1].loss, 4)} (batch {with_loss[-1].batch})"))
    if "best_valid_loss" in params and math.isfinite(float(params["best_valid_loss"])):
        items.append(("best validation loss", fmt(params["best_valid_loss"], 4)))
    with_wer = [p for p in info.valid if p.wer is not None]
    if with_wer:
        items.append(("validation greedy WER (simulated streaming, dev-clean subset), "
                      "first / last",
                      f"{fmt(with_wer[0].wer)}% / {fmt(with_wer[-1].wer)}%"))
    out += table(["", "value"], items)
    model = {name: params[name] for name in MODEL_OPTION_NAMES if name in params}
    training = {name: params[name] for name in
                ("world_size", "max_duration", "initial_lr", "num_epochs", "max_train_minutes",
                 "dynamic_chunk_training", "short_chunk_size", "num_left_chunks", "use_fp16",
                 "valid_wer_utts", "valid_chunk_size", "valid_left_context") if name in params}
    for title, options in (("Model", model), ("Training options", training)):
        if options:
            out += ["", f"{title}: " + ", ".join(f"{k}={v}" for k, v in options.items())]
    out += ["", "Validation over time:", ""]
    if info.valid:
        points = info.valid
        if len(points) > max_valid_rows >= 2:
            # Evenly spaced, always with the first and the last point.
            step = (len(points) - 1) / (max_valid_rows - 1)
            points = [points[round(i * step)] for i in range(max_valid_rows)]
        out += table(["batch", "minutes of training", "valid loss", "greedy WER (%)"],
                     [[p.batch, fmt(p.minutes, 1), fmt(p.loss, 4), fmt(p.wer)]
                      for p in points])
    else:
        out.append(f"{NOT_RUN} (no validation yet).")
    return out


def wall_time_section(total_minutes: float | None, step_seconds: dict[str, float],
                      run_log: Path | None) -> list[str]:
    out = ["## 5. Wall time", ""]
    if total_minutes is None and not step_seconds:
        return out + [f"{NOT_RUN}: pass --total-minutes or --run-log (run.sh does)."]
    if total_minutes is not None:
        out.append(f"This run.sh invocation: {total_minutes:.1f} min (steps finished in "
                   "earlier invocations are skipped and not counted).")
    if step_seconds:
        out += ["", f"Last completed run of each step (from {run_log}):", ""]
        out += table(["step", "minutes"],
                     [[name, fmt(seconds / 60, 1)] for name, seconds in step_seconds.items()]
                     + [["**sum**", fmt(sum(step_seconds.values()) / 60, 1)]])
    return out


# --------------------------------------------------------------------- plots --
def _pyplot():
    """pyplot on the Agg backend (no display on a server; must precede the import)."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache chatter
    import matplotlib.pyplot as plt

    return plt


def plot_loss(info: TrainingInfo, path: Path) -> bool:
    valid = [(p.batch, p.loss) for p in info.valid if p.loss is not None]
    if not info.train_loss and not valid:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if info.train_loss:
        ax.plot(*zip(*info.train_loss), label="training loss")
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation loss")
    ax.set_xlabel("batch")
    ax.set_ylabel("loss per frame")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_valid_wer(info: TrainingInfo, path: Path) -> bool:
    points = [(p.minutes, p.wer) for p in info.valid if p.minutes is not None
              and p.wer is not None]
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*points), "o-")
    ax.set_xlabel("minutes of training")
    ax.set_ylabel("greedy WER (%), dev-clean subset")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_wer_by_method(rows: Sequence[Row], parts: Sequence[str], path: Path) -> bool:
    if not rows or not parts:
        return False
    plt = _pyplot()
    width = 0.8 / len(parts)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.5))
    for index, part in enumerate(parts):
        xs = [i + (index - (len(parts) - 1) / 2) * width for i in range(len(rows))]
        values = [row.wers[part].wer if part in row.wers else 0.0 for row in rows]
        bars = ax.bar(xs, values, width, label=part_header(part))
        ax.bar_label(bars, labels=[f"{v:.1f}" if part in row.wers else ""
                                   for v, row in zip(values, rows)], fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"[{row.number}] {row.method}\n{row.mode}" for row in rows],
                       rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("WER (%)")
    top = max((r.wer for row in rows for r in row.wers.values()), default=0.0)
    ax.set_ylim(0, max(top * 1.12, 1.0))  # room for the bar labels
    # Above the axes, where it cannot hide a bar.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(parts), fontsize=8,
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------- main --
def guarded(name: str, function: Callable[[], list[str]]) -> list[str]:
    """A section, or one line saying why it failed: an unexpected file must cost
    one section, never the report."""
    try:
        return function()
    except Exception as error:
        logging.exception(f"section {name} failed")
        return [f"## {name}", "", f"could not be made: {type(error).__name__}: {error}"]


def make_report(args: argparse.Namespace) -> str:
    """Builds RESULTS.md's text and draws the plots."""
    exp_dir: Path = args.exp_dir
    results = collect_wer_results(exp_dir)
    parts = ordered_parts([r.part for r in results])
    known_parts = sorted(set(KNOWN_PARTS) | set(parts))
    info = gather_training(exp_dir)
    bpe_model = info.params.get("bpe_model")
    rows = build_rows(results, exp_dir, str(bpe_model) if bpe_model else None)
    sherpa_agreement = collect_sherpa_json(exp_dir, "agreement", known_parts)
    sherpa_rtf = collect_sherpa_json(exp_dir, "rtf", known_parts)

    step_seconds: dict[str, float] = {}
    if args.run_log is not None:
        if args.run_log.is_file():
            step_seconds = read_run_log(args.run_log)
        else:
            logging.warning(f"--run-log {args.run_log} does not exist")

    plots: dict[str, bool] = {}
    if args.plots:
        plot_dir = exp_dir / "plots"
        plot_dir.mkdir(parents=True, exist_ok=True)
        for name, draw in (("loss", lambda p: plot_loss(info, p)),
                           ("valid_wer", lambda p: plot_valid_wer(info, p)),
                           ("wer_by_method", lambda p: plot_wer_by_method(rows, parts, p))):
            try:
                plots[name] = draw(plot_dir / f"{name}.png")
            except Exception:  # a plot is never worth losing the report
                logging.exception(f"plot {name} failed")
                plots[name] = False

    lines = [f"# Results: {exp_dir}", "",
             f"Made by `make_results.py` on {time.strftime('%Y-%m-%d %H:%M')} from the files in "
             f"`{exp_dir}`.", ""]
    sections = [
        ("1. WER (%)", lambda: wer_section(rows, parts)),
        ("WER per speaker", lambda: speaker_section(rows, parts,
                                                    read_training_speakers(info.params))),
        ("2. Simulated vs real streaming",
         lambda: agreement_section(streaming_agreement(results), sherpa_agreement)),
        ("3. Speed and latency", lambda: latency_section(rows, sherpa_rtf)),
        ("4. Training", lambda: training_section(info, exp_dir, args.max_valid_rows)),
        ("5. Wall time",
         lambda: wall_time_section(args.total_minutes, step_seconds, args.run_log)),
    ]
    for name, section in sections:
        lines += guarded(name, section) + [""]
    lines += ["## 6. Plots", ""]
    captions = {"loss": "training and validation loss against batches",
                "valid_wer": "validation greedy WER against minutes of training",
                "wer_by_method": "WER by decoding setting and part"}
    for name, caption in captions.items():
        if plots.get(name):
            lines.append(f"![{caption}](plots/{name}.png)")
        else:
            lines.append(f"- {caption}: {NOT_RUN if args.plots else 'not drawn (--plots false)'}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s "
                        "[%(filename)s:%(lineno)d] %(message)s")
    args = get_parser().parse_args(argv)
    if not args.exp_dir.is_dir():
        # A mistyped --exp-dir; an existing but empty one gives a report of "not run"s.
        print(f"make_results.py: error: {args.exp_dir} is not a directory", file=sys.stderr)
        return 1
    text = make_report(args)
    output = args.exp_dir / "RESULTS.md"
    output.write_text(text)
    if not args.quiet:
        print(text)
    logging.info(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
