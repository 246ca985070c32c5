#!/usr/bin/env python3
"""Gather what the recipe produced in an experiment directory into RESULTS.md and plots.

Usage (from the project root, after run.sh or any of its steps):

  ./pruned_transducer_stateless4/make_results.py --exp-dir exp/pruned_transducer_stateless4

  # as run.sh calls it: with the wall time of the whole command and its step log
  ./pruned_transducer_stateless4/make_results.py --exp-dir exp/pruned_transducer_stateless4 \\
      --total-minutes 83.5 --run-log exp/pruned_transducer_stateless4/log/run-sh.log

  # print the section of this run for the project's RESULTS.md (icefall's style)
  ./pruned_transducer_stateless4/make_results.py --exp-dir exp/pruned_transducer_stateless4 \\
      --results-section true --title "default configuration" --plots false

Reads only the records the scripts write next to their outputs (shared/run_record.py),
never file names or log lines; each input is optional, and a section whose inputs are
absent says "not run":

  EXP_DIR/**/record-*.json        one per decode.py, streaming_decode.py and
                                  sherpa_onnx_decode.py run and test set: arguments,
                                  settings, WER, recogs file, RTF, latency, agreement
  EXP_DIR/train-record.json       train.py: arguments, parameters, batches, audio and
                                  training seconds
  EXP_DIR/train-points.jsonl      train.py: training loss and throughput per progress
                                  line, validation loss and WER per validation
  --run-log                       run.sh's step lines, for the wall time of each step

A record that cannot be read is named in one line at the top of the report and skipped.

Writes EXP_DIR/RESULTS.md (also printed), EXP_DIR/results-section.md and
EXP_DIR/plots/{loss,valid_wer,wer_by_method}.png:

  1. WER (%) of every decoding setting on every test part, with the settings and the
     command that produced each row; greedy search's WER per speaker (on the generated
     corpus a speaker is a TTS voice), marked by whether training heard that speaker;
  2. agreement of real streaming (streaming_decode.py) with simulated streaming
     (decode.py --simulate-streaming true), greedy search, per part, and of sherpa-onnx
     with streaming_decode.py;
  3. RTF, token latency and final-result latency of real streaming; RTF of decode.py
     and sherpa-onnx;
  4. training: parameters, training time, batches, throughput, validation loss and WER
     over time;
  5. the wall time of run.sh (--total-minutes, --run-log).

results-section.md is the run's section for the root RESULTS.md: date, commit, the
exact commands (from the records' arguments), the WER table per decoding method and
test set, model selection, parameters, training time, throughput, streaming
agreement, RTF and the hardware.
"""

import argparse
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
from shared.metrics import read_recogs
from shared.run_record import (
    FULL_CONTEXT,
    REAL,
    SHERPA_ONNX,
    SIMULATED,
    DecodeRecord,
    DecodeSettings,
    RecordError,
    RecordProblem,
    TrainPoint,
    TrainRecord,
    command_line,
    newest,
    read_decode_records,
    read_train_points,
    read_train_record,
)
from shared.utils import HelpFormatter, str2bool

# Test parts first, in this order; other parts (dev-clean, ...) follow alphabetically.
PART_ORDER = ("test-clean", "test-other")
PART_NOTES = {
    "test-clean": "voices seen in training",
    "test-other": "includes voices unseen in training",
}

DECODE_PY = "decode.py"
STREAMING_PY = "streaming_decode.py"
SHERPA_PY = "sherpa_onnx_decode.py"
PROGRAM_ORDER = {DECODE_PY: 0, STREAMING_PY: 1, SHERPA_PY: 2}
MODE_ORDER = {FULL_CONTEXT: 0, SIMULATED: 1, REAL: 2, SHERPA_ONNX: 3}
FRAME_MS = 40  # one encoder frame (after 4x subsampling of 10 ms frames)

NOT_RUN = "not run"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--exp-dir", type=Path, default=Path("exp/pruned_transducer_stateless4"),
                        help="Experiment directory to summarise; RESULTS.md, "
                        "results-section.md and plots/ are written into it.")
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
    parser.add_argument("--results-section", type=str2bool, default=False,
                        help="Print the run's section for the project's RESULTS.md "
                        "(results-section.md) instead of the report.")
    parser.add_argument("--title", type=str, default=None,
                        help="What the run was, for the heading of the RESULTS.md section "
                        "(e.g. 'default configuration'); default: the experiment directory.")
    parser.add_argument("--quiet", type=str2bool, default=False,
                        help="Print nothing to stdout (the files are still written).")
    return parser


# --------------------------------------------------------------- the records --
@dataclass
class Row:
    """A row of the WER table: one decoding setting of one script, over all parts."""

    number: int
    script: str
    settings: DecodeSettings
    records: dict[str, DecodeRecord]  # by part

    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def mode(self) -> str:
        return mode_of(self.settings)

    @property
    def label(self) -> str:
        return f"[{self.number}] {self.method} ({self.mode})"

    @property
    def commands(self) -> list[str]:
        """The distinct commands that made the row (one when every part was
        decoded by one invocation)."""
        return list(dict.fromkeys(self.records[part].command
                                  for part in ordered_parts(list(self.records))))


def mode_of(settings: DecodeSettings) -> str:
    if settings.streaming == FULL_CONTEXT:
        return "full context"
    if settings.streaming == SIMULATED:
        return "simulated streaming"
    padding = (f", {settings.tail_padding_seconds:g} s tail padding"
               if settings.tail_padding_seconds > 0 else "")
    if settings.streaming == REAL:
        return "real streaming" + padding
    kind = settings.model_format.removeprefix("onnx-")
    return f"sherpa-onnx streaming, {kind}"


def search_text(settings: DecodeSettings) -> str:
    """The search options, e.g. "beam_size 4" ("" for none)."""
    return ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in settings.search.items())


def ordered_parts(parts: Sequence[str]) -> list[str]:
    present = set(parts)
    return [p for p in PART_ORDER if p in present] + sorted(present - set(PART_ORDER))


def build_rows(records: Sequence[DecodeRecord]) -> list[Row]:
    """Records grouped by (script, settings), ordered by script, mode and method."""
    grouped: dict[tuple, dict[str, DecodeRecord]] = {}
    for record in records:
        grouped.setdefault((record.script, record.settings.identity()), {})[record.part] = record

    def order(key: tuple) -> tuple:
        settings = next(iter(grouped[key].values())).settings
        return (PROGRAM_ORDER.get(key[0], 9), MODE_ORDER.get(settings.streaming, 9),
                settings.method, repr(key[1]))

    rows = []
    for key in sorted(grouped, key=order):
        by_part = grouped[key]
        first = next(iter(by_part.values()))
        rows.append(Row(len(rows) + 1, first.script, first.settings, by_part))
    return rows


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


def streaming_agreement(records: Sequence[DecodeRecord]
                        ) -> list[tuple[DecodeRecord, Agreement]]:
    """For each real-streaming greedy record, the agreement with decode.py's
    simulated-streaming greedy record of the same part, model (checkpoints,
    averaging), chunk size, left context and max symbols per frame.  The two
    should compute the same thing; differences come from the front ends
    (online fbank on the audio vs stored, lilcom-compressed features), the
    padding of the last chunk, or bugs.  Runs with --tail-padding-seconds
    decode other samples than decode.py and are left out."""
    def match_key(record: DecodeRecord) -> tuple:
        s = record.settings
        return (record.part, s.model, s.use_averaged_model, s.chunk_size, s.left_context,
                tuple(sorted(s.search.items())))

    simulated = {match_key(r): r for r in records
                 if r.settings.streaming == SIMULATED and r.settings.method == "greedy_search"}
    pairs = []
    for real in records:
        if (real.settings.streaming != REAL or real.settings.method != "greedy_search"
                or real.settings.tail_padding_seconds > 0):
            continue
        sim = simulated.get(match_key(real))
        if sim is None:
            pairs.append((real, Agreement(real.part, note="no decode.py --simulate-streaming "
                                          "greedy_search result with the same model, chunk "
                                          "size and left context")))
            continue
        missing = [str(r.recogs_path) for r in (sim, real) if not r.recogs_path.is_file()]
        if missing:
            pairs.append((real, Agreement(real.part, note=f"missing {', '.join(missing)}")))
            continue
        try:
            pairs.append((real, compare_recogs(real.part, sim.recogs_path, real.recogs_path)))
        except (OSError, ValueError, SyntaxError) as error:
            pairs.append((real, Agreement(real.part, note=f"unreadable recogs file: {error}")))
    pairs.sort(key=lambda pair: (ordered_parts(PART_ORDER + (pair[0].part,))
                                 .index(pair[0].part), pair[0].settings.model))
    return pairs


# ------------------------------------------------------------------ training --
@dataclass
class Training:
    """train.py's record and curves (either may be missing)."""

    record: TrainRecord | None = None
    error: str = ""  # why the record could not be read
    points: list[TrainPoint] = field(default_factory=list)

    @property
    def train_points(self) -> list[TrainPoint]:
        return [p for p in self.points if p.kind == "train"]

    @property
    def valid_points(self) -> list[TrainPoint]:
        return [p for p in self.points if p.kind == "valid"]


def gather_training(exp_dir: Path, problems: list[RecordProblem]) -> Training:
    training = Training()
    try:
        training.record = read_train_record(exp_dir)
    except RecordError as error:
        training.error = str(error)
        path = exp_dir / "train-record.json"
        if path.exists():
            problems.append(RecordProblem(path, str(error)))
    training.points, point_problems = read_train_points(exp_dir)
    problems += point_problems
    return training


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


def model_text(settings: DecodeSettings) -> str:
    return settings.model + (", averaged" if settings.use_averaged_model else "")


def relative(path: Path | None, exp_dir: Path) -> str:
    if path is None:
        return "?"
    return str(path.relative_to(exp_dir) if path.is_relative_to(exp_dir) else path)


def problems_section(problems: Sequence[RecordProblem], exp_dir: Path) -> list[str]:
    if not problems:
        return []
    return (["Skipped (unreadable records; their results are missing below):", ""]
            + [f"- `{relative(p.path, exp_dir)}`: {p.reason}" for p in problems] + [""])


def wer_section(rows: Sequence[Row], parts: Sequence[str], exp_dir: Path) -> list[str]:
    out = ["## 1. WER (%)", ""]
    out.append("On the generated corpus (`prepare.sh --corpus synth`) test-clean is spoken by "
               "voices heard in training and test-other includes voices never heard in "
               "training; on real LibriSpeech they are its usual clean/other test sets. "
               "Chunk size and left context are in encoder frames (40 ms each); "
               "`[n]` refers to the commands below.")
    out.append("")
    header = ["setting", "program", "method", "mode", "model", "chunk", "left ctx", "search"]
    header += [part_header(part) for part in parts]
    body = []
    for row in rows:
        s = row.settings
        body.append([f"[{row.number}]", row.script, row.method, row.mode, model_text(s),
                     fmt(s.chunk_size, 0) if s.chunk_size is not None else "full",
                     fmt(s.left_context, 0) if s.left_context is not None else "-",
                     search_text(s) or "-"]
                    + [fmt(row.records[p].wer.wer) if p in row.records else "-"
                       for p in parts])
    scripts = {row.script for row in rows}
    blanks = ["-"] * (len(header) - 4)
    for script, what in ((DECODE_PY, "simulated streaming"), (STREAMING_PY, "real streaming"),
                         (SHERPA_PY, "sherpa-onnx")):
        if script not in scripts:
            body.append(["-", script, NOT_RUN, what] + blanks)
    out += table(header, body)
    if rows:
        out += ["", "Errors / reference words:", ""]
        out += table(["setting"] + list(parts),
                     [[f"[{row.number}]"] + [f"{row.records[p].wer.errors} / "
                                             f"{row.records[p].wer.words}"
                                             if p in row.records else "-" for p in parts]
                      for row in rows])
        out += ["", "Commands, run from the project root (from each record's arguments):", "",
                "```"]
        for row in rows:
            first = row.records[ordered_parts(list(row.records))[0]]
            out.append(f"# [{row.number}] {relative(first.path, exp_dir)}")
            out += row.commands
        out.append("```")
    return out


def speaker_of(cut_id: str) -> str:
    """LibriSpeech ids are speaker-chapter-utterance (speed-perturbed copies add
    a suffix to the last field)."""
    return cut_id.split("-")[0]


def read_training_speakers(training: Training) -> set[str] | None:
    """The speakers of the training cut set that train.py's data options name
    (--manifest-dir, --full-libri), or None when it is not there."""
    from pruned_transducer_stateless4.asr_datamodule import LibriSpeechAsrDataModule

    if training.record is None or training.record.args.get("manifest_dir") is None:
        return None
    args = training.record.args
    data = LibriSpeechAsrDataModule(argparse.Namespace(manifest_dir=Path(args["manifest_dir"])))
    try:
        cuts = (data.train_all_shuf_cuts() if args.get("full_libri")
                else data.train_clean_100_cuts())
        return {supervision.speaker for cut in cuts for supervision in cut.supervisions}
    except FileNotFoundError:
        return None


def speaker_section(rows: Sequence[Row], parts: Sequence[str],
                    training_speakers: set[str] | None) -> list[str]:
    """WER per speaker of the first greedy-search row of decode.py."""
    row = next((r for r in rows if r.script == DECODE_PY and r.method == "greedy_search"), None)
    out = ["### WER per speaker", ""]
    if row is None:
        return out + [f"{NOT_RUN} (needs decode.py greedy_search)"]
    out += [f"Greedy search, row [{row.number}]. \"heard in training\" comes from the training "
            "cut set of train.py's `--manifest-dir`"
            + (" (not found: `?`)." if training_speakers is None else "."), ""]
    body = []
    missing = []
    for part in parts:
        if part not in row.records:
            continue
        if not row.records[part].recogs_path.is_file():
            missing.append(f"{part}: recogs file missing ({row.records[part].recogs_path})")
            continue
        errors: dict[str, int] = defaultdict(int)
        words: dict[str, int] = defaultdict(int)
        for cut_id, (ref, hyp) in read_recogs(row.records[part].recogs_path).items():
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
    out += table(["part", "speaker", "heard in training", "words", "WER (%)"], body)
    return out + (["", *missing] if missing else [])


def _percent(value: Any) -> float | None:
    """A fraction as a percentage."""
    try:
        return float(value) * 100
    except (TypeError, ValueError):
        return None


def sherpa_agreements(records: Sequence[DecodeRecord]) -> list[DecodeRecord]:
    found = [r for r in records if r.script == SHERPA_PY and r.agreement]
    return sorted(found, key=lambda r: (ordered_parts(PART_ORDER + (r.part,)).index(r.part),
                                        r.settings.model_format))


def agreement_section(pairs: Sequence[tuple[DecodeRecord, Agreement]],
                      records: Sequence[DecodeRecord]) -> list[str]:
    out = ["## 2. Simulated vs real streaming (greedy search)", ""]
    if not pairs:
        out.append(f"{NOT_RUN}: no streaming_decode.py greedy_search records "
                   "(EXP_DIR/streaming/greedy_search/record-*.json).")
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
            s = real.settings
            setting = f"{s.model}, chunk {s.chunk_size}, left {s.left_context}"
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
    out.append("sherpa-onnx agreement with streaming_decode.py (sherpa_onnx_decode.py's "
               "records):")
    out.append("")
    sherpa = sherpa_agreements(records)
    if not sherpa:
        out.append(f"{NOT_RUN} (no sherpa_onnx_decode.py record with an agreement).")
    else:
        body = []
        for record in sherpa:
            data = record.agreement or {}
            compare = data.get("compare_file")
            body.append([part_header(record.part), mode_of(record.settings),
                         data.get("num_utts", "n/a"), data.get("num_equal", "n/a"),
                         fmt(_percent(data.get("agreement")), 2, "%"),
                         Path(compare).name if compare else "n/a"])
        out += table(["part", "setting", "utterances", "equal", "agreement", "compared with"],
                     body)
    return out


def latency_section(rows: Sequence[Row]) -> list[str]:
    out = ["## 3. Speed and latency", "", "Real streaming (streaming_decode.py, simulated "
           "real-time audio delivery; latencies in ms, see its latency-*.txt for the "
           "definitions):", ""]
    body = []
    for row in rows:
        if row.script != STREAMING_PY:
            continue
        for part in ordered_parts(list(row.records)):
            data = row.records[part].speed
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
        out.append(f"{NOT_RUN} (no streaming_decode.py records).")
    for script, title in ((DECODE_PY, "decode.py (batches of stored features)"),
                          (SHERPA_PY, "sherpa-onnx (sherpa_onnx_decode.py)")):
        out += ["", f"{title}:", ""]
        body = []
        for row in rows:
            if row.script != script:
                continue
            for part in ordered_parts(list(row.records)):
                data = row.records[part].speed
                seconds = data.get("processing_seconds", data.get("decoding_seconds"))
                body.append([row.label, part_header(part), fmt(data.get("rtf"), 4),
                             data.get("num_utterances", data.get("utterances", "n/a")),
                             fmt(data.get("audio_seconds"), 1), fmt(seconds, 1),
                             data.get("num_threads", "n/a")])
        if body:
            out += table(["setting", "part", "RTF", "utterances", "audio s", "processing s",
                          "threads"], body)
        else:
            out.append(f"{NOT_RUN} (no {script} records).")
    return out


def thin(points: Sequence[TrainPoint], max_rows: int) -> list[TrainPoint]:
    """At most max_rows evenly spaced points, always with the first and the last."""
    if len(points) <= max_rows or max_rows < 2:
        return list(points)
    step = (len(points) - 1) / (max_rows - 1)
    return [points[round(i * step)] for i in range(max_rows)]


def training_section(training: Training, exp_dir: Path, max_valid_rows: int) -> list[str]:
    out = ["## 4. Training", ""]
    record = training.record
    if record is None and not training.points:
        return out + [f"{NOT_RUN}: no train.py records in {exp_dir} "
                      f"(train-record.json: {training.error})."]
    if record is None:
        out += [f"(train-record.json: {training.error}; curves from train-points.jsonl.)", ""]
    rates = [p.audio_rate for p in training.train_points if p.audio_rate is not None]
    losses = [p for p in training.train_points if p.loss is not None]
    valid = training.valid_points
    items: list[tuple[str, Any]] = []
    if record is not None:
        items += [
            ("parameters", f"{record.num_params / 1e6:.2f} M"),
            ("training time (optimizer steps only; validation, checkpointing excluded)",
             fmt(record.train_seconds / 60, 1, " min")),
            ("batches", record.batches),
            ("epoch reached", record.epoch),
            ("audio trained on", fmt(record.audio_seconds / 3600, 2, " h")),
            ("throughput (s of audio per s of training)", fmt(record.throughput, 1)),
            ("finished", "yes" if record.finished else "no (running, or stopped early)"),
        ]
    if rates:
        items.append(("throughput per logged interval (mean, min, max)",
                      f"{sum(rates) / len(rates):.1f}, {min(rates):.1f}, {max(rates):.1f} "
                      f"({len(rates)} intervals)"))
    if losses:
        items.append(("training loss, first / last logged",
                      f"{fmt(losses[0].loss, 4)} (batch {losses[0].batch}) / "
                      f"{fmt(losses[-1].loss, 4)} (batch {losses[-1].batch})"))
    with_loss = [p for p in valid if p.loss is not None]
    if with_loss:
        items.append(("validation loss, first / last",
                      f"{fmt(with_loss[0].loss, 4)} (batch {with_loss[0].batch}) / "
                      f"{fmt(with_loss[-1].loss, 4)} (batch {with_loss[-1].batch})"))
    if record is not None and record.best_valid_loss is not None:
        items.append(("best validation loss", fmt(record.best_valid_loss, 4)))
    with_wer = [p for p in valid if p.wer is not None]
    if with_wer:
        items.append(("validation greedy WER (simulated streaming, dev-clean subset), "
                      "first / last", f"{fmt(with_wer[0].wer)}% / {fmt(with_wer[-1].wer)}%"))
    out += table(["", "value"], items)
    if record is not None:
        args = record.args
        model = {name: args[name] for name in MODEL_OPTION_NAMES if name in args}
        options = {name: args[name] for name in
                   ("world_size", "max_duration", "initial_lr", "num_epochs", "max_train_minutes",
                    "dynamic_chunk_training", "short_chunk_size", "num_left_chunks",
                    "use_fp16", "valid_wer_utts", "valid_chunk_size", "valid_left_context")
                   if name in args}
        for title, values in (("Model", model), ("Training options", options)):
            if values:
                out += ["", f"{title}: " + ", ".join(f"{k}={v}" for k, v in values.items())]
        out += ["", "Commands (every invocation, oldest first):", "", "```"]
        out += [command_line(record.script, i.get("argv", [])) for i in record.invocations]
        out.append("```")
    out += ["", "Validation over time:", ""]
    if valid:
        out += table(["batch", "minutes of training", "valid loss", "greedy WER (%)"],
                     [[p.batch, fmt(p.minutes, 1), fmt(p.loss, 4), fmt(p.wer)]
                      for p in thin(valid, max_valid_rows)])
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


# ------------------------------------------------------ the RESULTS.md section --
def short_commit(commit: str | None) -> str:
    if not commit:
        return "unknown"
    dirty = commit.endswith("-dirty")
    return commit.removesuffix("-dirty")[:7] + (" (with uncommitted changes)" if dirty else "")


def commit_text(records: Sequence[DecodeRecord], training: Training) -> str:
    """The commit of the run, or each script's when they differ."""
    by_script: dict[str, set[str]] = defaultdict(set)
    if training.record is not None:
        by_script["train.py"].add(short_commit(training.record.commit))
    for record in records:
        by_script[record.script].add(short_commit(record.commit))
    commits = {c for values in by_script.values() for c in values}
    if not commits:
        return "commit unknown"
    if len(commits) == 1:
        return f"commit {commits.pop()}"
    return "commits " + "; ".join(f"{script}: {', '.join(sorted(values))}"
                                  for script, values in by_script.items())


def hardware_text(records: Sequence[DecodeRecord], training: Training) -> str:
    host = (training.record.host if training.record is not None and training.record.host
            else records[0].host if records else {})
    if not host:
        return "Hardware: not recorded."
    text = f"Hardware: {host.get('cpus', '?')} CPU cores ({host.get('machine', '?')})"
    if host.get("cuda_device"):
        text += f", GPU {host['cuda_device']}"
    if training.record is not None:
        text += f"; training on {training.record.device}"
        if training.record.world_size > 1:
            text += f" with {training.record.world_size} processes"
    text += f"; Python {host.get('python', '?')}"
    if host.get("torch"):
        text += f", torch {host['torch']} ({host.get('torch_threads', '?')} threads)"
    return text + "."


def method_text(row: Row) -> str:
    if row.settings.streaming == SHERPA_ONNX:
        return f"{row.method}, {row.settings.model_format.removeprefix('onnx-')}"
    options = search_text(row.settings)
    return f"{row.method} ({options})" if options and row.method != "greedy_search" \
        else row.method


def program_text(row: Row) -> str:
    if row.settings.streaming == SHERPA_ONNX:
        return "sherpa-onnx on the ONNX export"
    return f"{row.script}, {row.mode}"


def shared_value(rows: Sequence[Row], get: Callable[[DecodeSettings], Any]) -> Any:
    """The value all rows share, or None."""
    values = {repr(get(row.settings)) for row in rows}
    return get(rows[0].settings) if rows and len(values) == 1 else None


def per_part(values: dict[str, str], parts: Sequence[str]) -> str:
    """"a (test-clean) and b (test-other)"."""
    shown = [f"{values[p]} ({p})" for p in parts if p in values]
    return " and ".join([", ".join(shown[:-1]), shown[-1]] if len(shown) > 1 else shown)


def results_section(records: Sequence[DecodeRecord], rows: Sequence[Row],
                    parts: Sequence[str], training: Training,
                    pairs: Sequence[tuple[DecodeRecord, Agreement]], title: str,
                    step_seconds: dict[str, float], total_minutes: float | None) -> str:
    """The section of this run for the project's RESULTS.md (icefall's style)."""
    when = newest([r.utc for r in records]
                  + [training.record.utc if training.record is not None else None])
    date = when[:10] if when else time.strftime("%Y-%m-%d")
    out = [f"## {date}: {title}, {commit_text(records, training)}", "",
           hardware_text(records, training), ""]
    record = training.record
    if record is not None:
        model = ", ".join(f"{name}={record.args[name]}" for name in MODEL_OPTION_NAMES
                          if name in record.args)
        out += [f"Model: {record.num_params / 1e6:.2f} M parameters ({model}).", ""]

    out += ["### Commands", "", "```bash",
            "# (prepare.sh and export.py write no records; run.sh shows how they were run)"]
    if record is not None:
        out += [command_line(record.script, i.get("argv", [])) for i in record.invocations]
    for row in rows:
        out += [c for c in row.commands if c not in out]
    out += ["```", ""]

    out += ["### WER (%)", ""]
    if rows:
        notes = []
        model = shared_value(rows, lambda s: (s.model, s.use_averaged_model))
        if model is not None:
            notes.append(f"Model selection `{selection_options(*model)}`")
        chunk = shared_value([r for r in rows if r.settings.chunk_size is not None],
                             lambda s: (s.chunk_size, s.left_context))
        if chunk is not None:
            notes.append(f"decoding chunk {chunk[0]} ({chunk[0] * FRAME_MS} ms), left context "
                         f"{chunk[1]}")
        if notes:
            out += ["; ".join(notes) + ".", ""]
        header = ["program", "decoding method"]
        if model is None:
            header.append("model")
        header += list(parts)
        body = []
        for row in rows:
            cells = [program_text(row), method_text(row)]
            if model is None:
                cells.append(model_text(row.settings))
            body.append(cells + [fmt(row.records[p].wer.wer) if p in row.records else "-"
                                 for p in parts])
        out += table(header, body)
    else:
        out.append(f"{NOT_RUN}: no decoding records.")
    out.append("")

    out += ["### Streaming agreement and speed", ""]
    agreed = {a.part: f"{a.num_equal}/{a.num_compared}" for _, a in pairs if not a.note}
    if agreed:
        out.append(f"- Simulated vs real streaming (greedy search): the same transcript for "
                   f"{per_part(agreed, parts)} utterances.")
    elif pairs:
        out.append(f"- Simulated vs real streaming (greedy search): not compared; "
                   f"{pairs[0][1].note}.")
    sherpa = sherpa_agreements(records)
    for kind in dict.fromkeys(r.settings.model_format for r in sherpa):
        values = {r.part: f"{r.agreement.get('num_equal')}/{r.agreement.get('num_utts')}"
                  for r in sherpa if r.settings.model_format == kind and r.agreement}
        out.append(f"- sherpa-onnx {kind.removeprefix('onnx-')} vs streaming_decode.py "
                   f"(same tail padding when run): {per_part(values, parts)}.")
    for row in rows:
        rtf = {p: fmt(r.speed.get("rtf"), 4) for p, r in row.records.items()
               if r.speed.get("rtf") is not None}
        if not rtf:
            continue
        line = f"- RTF of {program_text(row)}, {method_text(row)}: {per_part(rtf, parts)}"
        first = row.records[ordered_parts(list(row.records))[0]]
        token = first.speed.get("token_latency_ms") or {}
        if token.get("mean") is not None:
            line += (f"; token latency {fmt(token['mean'], 1)} ms mean "
                     f"({fmt(token.get('p95'), 0)} ms p95) on {first.part}")
        out.append(line + ".")
    if not agreed and not sherpa and not any(r.speed for r in records):
        out.append(f"{NOT_RUN}.")
    out.append("")

    out += ["### Training and times", ""]
    if record is not None:
        line = (f"- {record.batches:,} batches in {record.train_seconds / 60:.1f} min of "
                f"optimizer steps, {record.epoch} epochs, {fmt(record.throughput, 1)} s of "
                f"audio per second ({record.audio_seconds / 3600:.2f} h of audio in all)")
        out.append(line + ("." if record.finished else "; training had not finished."))
    valid = [p for p in training.valid_points if p.wer is not None]
    if valid:
        points = ", ".join(f"{p.wer:.1f}% ({p.minutes:.1f})" for p in thin(valid, 10))
        out.append(f"- Validation greedy WER against minutes of training: {points}.")
    with_loss = [p for p in training.valid_points if p.loss is not None]
    if with_loss:
        out.append(f"- Validation loss {with_loss[0].loss:.3f} -> {with_loss[-1].loss:.3f}.")
    if total_minutes is not None or step_seconds:
        line = "- Wall time"
        if total_minutes is not None:
            line += f" {total_minutes:.1f} min"
        if step_seconds:
            line += ": " + ", ".join(f"{name} {seconds / 60:.1f}"
                                     for name, seconds in step_seconds.items())
        out.append(line + ".")
    if record is None and not valid:
        out.append(f"{NOT_RUN}: no train.py records.")
    return "\n".join(out).rstrip() + "\n"


def selection_options(model: str, averaged: bool) -> str:
    """"iter-8812-avg-2", True -> "--iter 8812 --avg 2 --use-averaged-model true"."""
    kind, number, _, avg = model.split("-")
    return (f"--{kind} {number} --avg {avg} --use-averaged-model "
            f"{'true' if averaged else 'false'}")


# --------------------------------------------------------------------- plots --
def _pyplot():
    """pyplot on the Agg backend (no display on a server; must precede the import)."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache chatter
    import matplotlib.pyplot as plt

    return plt


def plot_loss(training: Training, path: Path) -> bool:
    train = [(p.batch, p.loss) for p in training.train_points if p.loss is not None]
    valid = [(p.batch, p.loss) for p in training.valid_points if p.loss is not None]
    if not train and not valid:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss")
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


def plot_valid_wer(training: Training, path: Path) -> bool:
    points = [(p.minutes, p.wer) for p in training.valid_points if p.wer is not None]
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
        values = [row.records[part].wer.wer if part in row.records else 0.0 for row in rows]
        bars = ax.bar(xs, values, width, label=part_header(part))
        ax.bar_label(bars, labels=[f"{v:.1f}" if part in row.records else ""
                                   for v, row in zip(values, rows)], fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"[{row.number}] {row.method}\n{row.mode}" for row in rows],
                       rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("WER (%)")
    top = max((r.wer.wer for row in rows for r in row.records.values()), default=0.0)
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


def make_report(args: argparse.Namespace) -> tuple[str, str]:
    """(RESULTS.md's text, the RESULTS.md section); draws the plots."""
    exp_dir: Path = args.exp_dir
    records, problems = read_decode_records(exp_dir)
    for problem in problems:
        logging.warning(f"skipped {problem}")
    training = gather_training(exp_dir, problems)
    rows = build_rows(records)
    parts = ordered_parts([r.part for r in records])
    pairs = streaming_agreement(records)

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
        for name, draw in (("loss", lambda p: plot_loss(training, p)),
                           ("valid_wer", lambda p: plot_valid_wer(training, p)),
                           ("wer_by_method", lambda p: plot_wer_by_method(rows, parts, p))):
            try:
                plots[name] = draw(plot_dir / f"{name}.png")
            except Exception:  # a plot is never worth losing the report
                logging.exception(f"plot {name} failed")
                plots[name] = False

    lines = [f"# Results: {exp_dir}", "",
             f"Made by `make_results.py` on {time.strftime('%Y-%m-%d %H:%M')} from the records "
             f"in `{exp_dir}`.", ""]
    lines += problems_section(problems, exp_dir)
    sections = [
        ("1. WER (%)", lambda: wer_section(rows, parts, exp_dir)),
        ("WER per speaker", lambda: speaker_section(rows, parts,
                                                    read_training_speakers(training))),
        ("2. Simulated vs real streaming", lambda: agreement_section(pairs, records)),
        ("3. Speed and latency", lambda: latency_section(rows)),
        ("4. Training", lambda: training_section(training, exp_dir, args.max_valid_rows)),
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
    report = "\n".join(lines).rstrip() + "\n"
    try:
        section = results_section(records, rows, parts, training, pairs,
                                  args.title or str(exp_dir), step_seconds, args.total_minutes)
    except Exception as error:
        logging.exception("the RESULTS.md section failed")
        section = f"could not be made: {type(error).__name__}: {error}\n"
    return report, section


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s "
                        "[%(filename)s:%(lineno)d] %(message)s")
    args = get_parser().parse_args(argv)
    if not args.exp_dir.is_dir():
        # A mistyped --exp-dir; an existing but empty one gives a report of "not run"s.
        print(f"make_results.py: error: {args.exp_dir} is not a directory", file=sys.stderr)
        return 1
    report, section = make_report(args)
    output = args.exp_dir / "RESULTS.md"
    output.write_text(report)
    (args.exp_dir / "results-section.md").write_text(section)
    if not args.quiet:
        print(section if args.results_section else report)
    logging.info(f"wrote {output} and {args.exp_dir / 'results-section.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
