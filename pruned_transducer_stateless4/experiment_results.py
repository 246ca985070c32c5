"""The records of one experiment directory, gathered for make_results.py's reports.

shared/run_record.py reads the records one by one; this module groups them:

  - Row: one decoding setting of one script (the settings a DecodeRecord holds
    apart from the test set) with its record per test part; a row of the WER table;
  - Agreement: the utterances on which two recogs files agree word for word
    (real streaming against decode.py's simulated streaming);
  - Training: train.py's record and curves;
  - ExperimentResults: all of these for one EXP_DIR (gather_experiment()).

Nothing here formats text for a report beyond the short names of a setting
(mode_of, search_text, model_text, part_header) that the tables and plots share.
"""

import argparse
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import kaldialign

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
    read_decode_records,
    read_train_points,
    read_train_record,
)

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


# ------------------------------------------------------- parts and settings --
def ordered_parts(parts: Sequence[str]) -> list[str]:
    """The distinct parts, PART_ORDER's first, then the others alphabetically."""
    present = set(parts)
    return [p for p in PART_ORDER if p in present] + sorted(present - set(PART_ORDER))


def part_header(part: str) -> str:
    """"test-clean (voices seen in training)"; other parts as they are."""
    return f"{part} ({PART_NOTES[part]})" if part in PART_NOTES else part


def mode_of(settings: DecodeSettings) -> str:
    """How the result was decoded, e.g. "real streaming, 0.76 s tail padding"."""
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


def model_text(settings: DecodeSettings) -> str:
    """The checkpoints decoded, e.g. "iter-8812-avg-2, averaged"."""
    return settings.model + (", averaged" if settings.use_averaged_model else "")


# --------------------------------------------------------------------- rows --
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


def build_rows(records: Sequence[DecodeRecord]) -> list[Row]:
    """Records grouped by (script, settings), ordered by script, mode and method
    and numbered from 1."""
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


# ---------------------------------------------------------------- agreement --
@dataclass
class Agreement:
    """How many utterances of `part` two recogs files transcribe identically;
    `note` says why they were not compared (the counts are then 0)."""

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


def sherpa_agreements(records: Sequence[DecodeRecord]) -> list[DecodeRecord]:
    """sherpa_onnx_decode.py's records that hold an agreement with
    streaming_decode.py, by part, then float before int8."""
    found = [r for r in records if r.script == SHERPA_PY and r.agreement]
    return sorted(found, key=lambda r: (ordered_parts(PART_ORDER + (r.part,)).index(r.part),
                                        r.settings.model_format))


# ----------------------------------------------------------------- speakers --
def speaker_of(cut_id: str) -> str:
    """LibriSpeech ids are speaker-chapter-utterance (speed-perturbed copies add
    a suffix to the last field)."""
    return cut_id.split("-")[0]


def errors_per_speaker(recogs_path: Path) -> dict[str, tuple[int, int]]:
    """{speaker: (word errors, reference words)} of a recogs file."""
    errors: dict[str, int] = defaultdict(int)
    words: dict[str, int] = defaultdict(int)
    for cut_id, (ref, hyp) in read_recogs(recogs_path).items():
        speaker = speaker_of(cut_id)
        errors[speaker] += kaldialign.edit_distance(ref, hyp)["total"]
        words[speaker] += len(ref)
    return {speaker: (errors[speaker], words[speaker]) for speaker in words}


# ----------------------------------------------------------------- training --
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
    """EXP_DIR's training record and points; appends to `problems` an
    unreadable record (a missing one is no problem) and unreadable points."""
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


def thin(points: Sequence[TrainPoint], max_rows: int) -> list[TrainPoint]:
    """At most max_rows evenly spaced points, always with the first and the last."""
    if len(points) <= max_rows or max_rows < 2:
        return list(points)
    step = (len(points) - 1) / (max_rows - 1)
    return [points[round(i * step)] for i in range(max_rows)]


# ---------------------------------------------------------- the experiment --
@dataclass
class ExperimentResults:
    """Everything the records of one experiment directory say.

    records: the readable decoding records; problems: one per unreadable record
    or points file; rows: the records grouped by setting (build_rows); parts:
    the test parts decoded, ordered_parts(); pairs: each real-streaming greedy
    record with its agreement with simulated streaming (streaming_agreement)."""

    exp_dir: Path
    records: list[DecodeRecord]
    problems: list[RecordProblem]
    training: Training
    rows: list[Row]
    parts: list[str]
    pairs: list[tuple[DecodeRecord, Agreement]]


def gather_experiment(exp_dir: Path) -> ExperimentResults:
    """Reads and groups every record under exp_dir; never raises on a bad record
    (it becomes a problem)."""
    records, problems = read_decode_records(exp_dir)
    for problem in problems:
        logging.warning(f"skipped {problem}")
    training = gather_training(exp_dir, problems)
    return ExperimentResults(exp_dir=exp_dir, records=records, problems=problems,
                             training=training, rows=build_rows(records),
                             parts=ordered_parts([r.part for r in records]),
                             pairs=streaming_agreement(records))
