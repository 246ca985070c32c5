"""Word error rate and icefall-style error reports (via kaldialign)."""

import ast
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import kaldialign

EPS = "*"


@dataclass(frozen=True)
class ErrorCounts:
    """Word errors of a set of hypotheses against their references."""

    errors: int  # insertions + deletions + substitutions
    words: int  # reference words
    insertions: int = 0
    deletions: int = 0
    substitutions: int = 0

    @property
    def wer(self) -> float:
        """In percent (0 if there are no reference words)."""
        return 100.0 * self.errors / self.words if self.words else 0.0


def error_counts(results: Sequence[tuple[str, str, str]]) -> ErrorCounts:
    """Corpus-level error counts of [(cut_id, ref, hyp)] (texts split on spaces)."""
    totals = Counter()
    words = 0
    for _, ref, hyp in results:
        result = kaldialign.edit_distance(ref.split(), hyp.split())
        totals.update({k: result[k] for k in ("ins", "del", "sub", "total")})
        words += len(ref.split())
    return ErrorCounts(errors=totals["total"], words=words, insertions=totals["ins"],
                       deletions=totals["del"], substitutions=totals["sub"])


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus-level WER: total edits over total reference words (0 if no words)."""
    assert len(refs) == len(hyps), (len(refs), len(hyps))
    counts = error_counts([("", ref, hyp) for ref, hyp in zip(refs, hyps)])
    return counts.errors / counts.words if counts.words else 0.0


def write_recogs(path: Path, results: Sequence[tuple[str, str, str]],
                 word_times: Mapping[str, Sequence[float]] | None = None) -> None:
    """recogs file: for each (cut_id, ref, hyp), sorted by id, two lines
    `id:\tref=[...]` and `id:\thyp=[...]` as icefall writes them, and with
    word_times ({cut_id: start second of each hyp word}) a third line
    `id:\ttimestamp_hyp=[0.12, 0.56, ...]` (icefall's name for it)."""
    with open(path, "w") as out:
        for cut_id, ref, hyp in sorted(results):
            out.write(f"{cut_id}:\tref={ref.split()}\n")
            out.write(f"{cut_id}:\thyp={hyp.split()}\n")
            if word_times is not None and cut_id in word_times:
                times = [round(float(t), 2) for t in word_times[cut_id]]
                out.write(f"{cut_id}:\ttimestamp_hyp={times}\n")


def _read_recogs_lines(path: Path):
    """(cut_id, kind, parsed list) of every line of a recogs file."""
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            cut_id, _, field = line.rstrip("\n").partition(":\t")
            kind, _, words = field.partition("=")
            try:
                parsed = ast.literal_eval(words)
            except (SyntaxError, ValueError):
                parsed = None
            if kind not in ("ref", "hyp", "timestamp_hyp") or not isinstance(parsed, list):
                raise ValueError(f"{path}:{line_number}: not a recogs line: {line.strip()!r}")
            yield cut_id, kind, parsed


def read_recogs(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Reads a file of write_recogs: {cut_id: (ref words, hyp words)}."""
    recogs: dict[str, tuple[list[str], list[str]]] = {}
    refs: dict[str, list[str]] = {}
    for cut_id, kind, parsed in _read_recogs_lines(path):
        if kind == "ref":
            refs[cut_id] = parsed
        elif kind == "hyp":
            recogs[cut_id] = (refs.pop(cut_id, []), parsed)
    return recogs


def read_recogs_word_times(path: Path) -> dict[str, list[float]]:
    """The timestamp_hyp lines of a recogs file: {cut_id: word start seconds}."""
    return {cut_id: [float(t) for t in parsed]
            for cut_id, kind, parsed in _read_recogs_lines(path) if kind == "timestamp_hyp"}


def write_error_stats(path: Path, test_set_name: str,
                      results: Sequence[tuple[str, str, str]]) -> float:
    """Writes an icefall-style errs file and returns the WER (a fraction).

    Sections: the overall WER with its insertions/deletions/substitutions, the
    per-utterance alignment (`ref->hyp` for substitutions, `(*->hyp)` for
    insertions, `(ref->*)` for deletions), the most frequent substitutions,
    deletions and insertions, and per-word counts.
    """
    substitutions: Counter[tuple[str, str]] = Counter()
    deletions: Counter[str] = Counter()
    insertions: Counter[str] = Counter()
    word_counts: Counter[str] = Counter()
    word_errors: Counter[str] = Counter()
    alignments: list[tuple[str, list[tuple[str, str]]]] = []
    num_ref_words = 0
    for cut_id, ref, hyp in sorted(results):
        ref_words = ref.split()
        num_ref_words += len(ref_words)
        word_counts.update(ref_words)
        alignment = kaldialign.align(ref_words, hyp.split(), EPS)
        alignments.append((cut_id, alignment))
        for ref_word, hyp_word in alignment:
            if ref_word == EPS:
                insertions[hyp_word] += 1
                word_errors[hyp_word] += 1
            elif hyp_word == EPS:
                deletions[ref_word] += 1
                word_errors[ref_word] += 1
            elif ref_word != hyp_word:
                substitutions[(ref_word, hyp_word)] += 1
                word_errors[ref_word] += 1

    num_sub = sum(substitutions.values())
    num_del = sum(deletions.values())
    num_ins = sum(insertions.values())
    num_errors = num_sub + num_del + num_ins
    wer = num_errors / num_ref_words if num_ref_words else 0.0
    with open(path, "w") as out:
        out.write(f"%WER = {wer * 100:.2f}\n")
        out.write(f"Errors: {num_ins} insertions, {num_del} deletions, {num_sub} substitutions, "
                  f"over {num_ref_words} reference words ({num_ref_words - num_sub - num_del} "
                  f"correct) in {test_set_name}\n")
        out.write("\nPER-UTT DETAILS: corr or (ref->hyp)\n")
        for cut_id, alignment in alignments:
            out.write(f"{cut_id}:\t{_format_alignment(alignment)}\n")
        _write_counter(out, "SUBSTITUTIONS: count ref -> hyp",
                       ((f"{ref} -> {hyp}", n) for (ref, hyp), n in substitutions.most_common()))
        _write_counter(out, "DELETIONS: count ref", deletions.most_common())
        _write_counter(out, "INSERTIONS: count hyp", insertions.most_common())
        out.write("\nPER-WORD STATS: word  errors  occurrences-in-ref\n")
        for word in sorted(set(word_counts) | set(word_errors),
                           key=lambda w: (-word_errors[w], w)):
            out.write(f"{word}   {word_errors[word]}   {word_counts[word]}\n")
    return wer


def _format_alignment(alignment: list[tuple[str, str]]) -> str:
    return " ".join(ref if ref == hyp else f"({ref}->{hyp})" for ref, hyp in alignment)


def _write_counter(out: TextIO, title: str, items) -> None:
    out.write(f"\n{title}\n")
    for key, count in items:
        out.write(f"{count}   {key}\n")
