"""The run's section for the project's RESULTS.md (icefall's style): make_results.py's
EXP_DIR/results-section.md.

render_section() writes, from an experiment's gathered results
(experiment_results.py): date, commit, hardware, parameter count, the exact
commands (train.py's invocations, then every decoding command, from the records'
arguments), the WER table per decoding method and test set with the model
selection and chunk settings, streaming agreement, RTF and latency, batches,
training time, throughput, validation WER over time and run.sh's wall times.
"""

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from pruned_transducer_stateless4.experiment_results import (
    ExperimentResults,
    Row,
    Training,
    model_text,
    ordered_parts,
    search_text,
    sherpa_agreements,
    thin,
)
from pruned_transducer_stateless4.model_config import MODEL_OPTION_NAMES
from pruned_transducer_stateless4.results_report import NOT_RUN, fmt, table
from shared.run_record import SHERPA_ONNX, DecodeRecord, DecodeSettings, command_line, newest

FRAME_MS = 40  # one encoder frame (after 4x subsampling of 10 ms frames)


def short_commit(commit: str | None) -> str:
    """"f9d8af9", "f9d8af9 (with uncommitted changes)" or "unknown"."""
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
    """The machine of train.py's record (else of the first decoding record)."""
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
    """The method and its search options, e.g. "modified_beam_search (beam_size 4)"."""
    if row.settings.streaming == SHERPA_ONNX:
        return f"{row.method}, {row.settings.model_format.removeprefix('onnx-')}"
    options = search_text(row.settings)
    return f"{row.method} ({options})" if options and row.method != "greedy_search" \
        else row.method


def program_text(row: Row) -> str:
    """What decoded, e.g. "decode.py, simulated streaming"."""
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


def selection_options(model: str, averaged: bool) -> str:
    """"iter-8812-avg-2", True -> "--iter 8812 --avg 2 --use-averaged-model true"."""
    kind, number, _, avg = model.split("-")
    return (f"--{kind} {number} --avg {avg} --use-averaged-model "
            f"{'true' if averaged else 'false'}")


def render_section(results: ExperimentResults, title: str, step_seconds: dict[str, float],
                   total_minutes: float | None) -> str:
    """The section of this run for the project's RESULTS.md (icefall's style).

    title: what the run was, for the heading; step_seconds: read_run_log()'s
    wall time of each run.sh step; total_minutes: the whole run.sh command's."""
    records, rows, parts = results.records, results.rows, results.parts
    training, pairs = results.training, results.pairs
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


