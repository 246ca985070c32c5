"""The report of an experiment directory: make_results.py's EXP_DIR/RESULTS.md.

render_report() writes, in markdown, from an experiment's gathered results
(experiment_results.py):

  1. WER (%) of every decoding setting on every test part, with the settings and the
     command that produced each row; greedy search's WER per speaker, marked by
     whether training heard that speaker;
  2. agreement of real with simulated streaming, and of sherpa-onnx with
     streaming_decode.py;
  3. RTF and latencies;
  4. training: parameters, time, batches, throughput, options, validation over time;
  5. run.sh's wall time;
  6. the plots (results_plots.py).

A section that fails is one line saying why (guarded()); a section whose records
are absent says "not run".  fmt() and table() are the markdown helpers that the
RESULTS.md section (results_section.py) shares.
"""

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pruned_transducer_stateless4.experiment_results import (
    DECODE_PY,
    SHERPA_PY,
    STREAMING_PY,
    Agreement,
    ExperimentResults,
    Row,
    Training,
    errors_per_speaker,
    mode_of,
    model_text,
    ordered_parts,
    part_header,
    read_training_speakers,
    search_text,
    sherpa_agreements,
    thin,
)
from pruned_transducer_stateless4.model_config import MODEL_OPTION_NAMES
from shared.run_record import DecodeRecord, RecordProblem, command_line

NOT_RUN = "not run"

# The captions of results_plots.PLOT_NAMES in section 6.
PLOT_CAPTIONS = {"loss": "training and validation loss against batches",
                 "valid_wer": "validation greedy WER against minutes of training",
                 "wer_by_method": "WER by decoding setting and part"}


# ------------------------------------------------------------------ markdown --
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
    """A markdown table's lines: the header, the separator, a line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


# ------------------------------------------------------------------ sections --
def relative(path: Path | None, exp_dir: Path) -> str:
    """`path` relative to exp_dir when it lies inside ("?" for no path)."""
    if path is None:
        return "?"
    return str(path.relative_to(exp_dir) if path.is_relative_to(exp_dir) else path)


def problems_section(problems: Sequence[RecordProblem], exp_dir: Path) -> list[str]:
    """A line per unreadable record (nothing when all were read)."""
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
        counts = errors_per_speaker(row.records[part].recogs_path)
        heard_totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # errors, words
        for speaker in sorted(counts, key=lambda s: (len(s), s)):
            num_errors, num_words = counts[speaker]
            heard = ("?" if training_speakers is None
                     else "yes" if speaker in training_speakers else "no")
            body.append([part, speaker, heard, num_words,
                         fmt(100.0 * num_errors / max(num_words, 1))])
            heard_totals[heard][0] += num_errors
            heard_totals[heard][1] += num_words
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
                    "use_fp16", "amp_dtype", "valid_wer_utts", "valid_chunk_size",
                    "valid_left_context")
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


# ---------------------------------------------------------------- the report --
def guarded(name: str, function: Callable[[], list[str]]) -> list[str]:
    """A section, or one line saying why it failed: an unexpected file must cost
    one section, never the report."""
    try:
        return function()
    except Exception as error:
        logging.exception(f"section {name} failed")
        return [f"## {name}", "", f"could not be made: {type(error).__name__}: {error}"]


def render_report(results: ExperimentResults, plots: dict[str, bool] | None,
                  max_valid_rows: int, total_minutes: float | None,
                  step_seconds: dict[str, float], run_log: Path | None) -> str:
    """EXP_DIR/RESULTS.md's text.

    plots: {name: drawn} of results_plots.draw_plots(), None when plots were
    not asked for (--plots false); step_seconds: read_run_log()'s wall time of
    each run.sh step, read from run_log; total_minutes: the wall time of the
    whole run.sh command."""
    exp_dir = results.exp_dir
    lines = [f"# Results: {exp_dir}", "",
             f"Made by `make_results.py` on {time.strftime('%Y-%m-%d %H:%M')} from the records "
             f"in `{exp_dir}`.", ""]
    lines += problems_section(results.problems, exp_dir)
    rows, parts = results.rows, results.parts
    sections = [
        ("1. WER (%)", lambda: wer_section(rows, parts, exp_dir)),
        ("WER per speaker", lambda: speaker_section(
            rows, parts, read_training_speakers(results.training))),
        ("2. Simulated vs real streaming",
         lambda: agreement_section(results.pairs, results.records)),
        ("3. Speed and latency", lambda: latency_section(rows)),
        ("4. Training", lambda: training_section(results.training, exp_dir, max_valid_rows)),
        ("5. Wall time", lambda: wall_time_section(total_minutes, step_seconds, run_log)),
    ]
    for name, section in sections:
        lines += guarded(name, section) + [""]
    lines += ["## 6. Plots", ""]
    for name, caption in PLOT_CAPTIONS.items():
        if plots and plots.get(name):
            lines.append(f"![{caption}](plots/{name}.png)")
        else:
            lines.append(f"- {caption}: "
                         f"{NOT_RUN if plots is not None else 'not drawn (--plots false)'}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
