#!/usr/bin/env python3
"""Generate a speech corpus with local TTS engines, laid out exactly like LibriSpeech.

Stage 0 of prepare.sh. The output can be read unchanged by lhotse's
``lhotse.recipes.librispeech.prepare_librispeech``::

    OUT/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac
    OUT/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    OUT/LibriSpeech/SPEAKERS.TXT

Each TTS voice (engine + voice + variant) is one "speaker"; a "chapter" is a batch of
utterances of one voice. Parts:

- train-clean-100: ``--synth-hours`` of audio from the training voices; a quarter of
  its chapters get the harsh augmentation of test-other, the rest the clean one;
- dev-clean, test-clean: the training voices with clean augmentation, sentences never
  used in training;
- test-other: half from voices never used in training (clean augmentation), half from
  training voices with harsh augmentation (more noise and reverberation, wider prosody
  and vocal-tract changes).

Every utterance gets its own rate, F0 and apparent vocal-tract length, plus random
reverberation, band-limiting, additive coloured noise and level, all drawn from
``--seed`` and the utterance's position, so that the output is reproducible.

Each chapter is written by one worker: audio files under temporary names first, the
transcript last, so an interrupted run resumes at the first unfinished chapter. A part is
complete when its ``.done`` marker (written last, holding a hash of the options that
shaped the part) matches the current options; such parts are skipped.

Usage:
    ./local/generate_synth_corpus.py --out-dir download --synth-hours 5 --nj 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import multiprocessing
import multiprocessing.util
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from local.synth_corpus import (
    DEV_PART,
    PARTS,
    TEST_CLEAN_PART,
    TEST_OTHER_PART,
    TRAIN_PART,
    ChapterJob,
    ChapterResult,
    synthesize_chapter,
    write_text_atomically,
)
from local.text_sources import DEFAULT_TEXT_SOURCES, TEXT_SOURCES, load_sentences, split_held_out
from local.voices import (
    CLEAN,
    HARSH,
    HARSH_TRAIN_FRACTION,
    SAMPLE_RATE,
    VOICES,
    AugmentationRanges,
    Voice,
    usable_voices,
)
from shared.utils import HelpFormatter

# Bump when the way audio or text is produced changes (local/voices.py,
# local/noise.py, local/text_sources.py): old outputs are then regenerated.
GENERATOR_VERSION = 3

# Leading digit of the chapter ids of each part, so that chapter ids are globally unique.
PART_CODES = {TRAIN_PART: 1, DEV_PART: 2, TEST_CLEAN_PART: 3, TEST_OTHER_PART: 4}
CHAPTER_ID_BASE = 100_000

MAX_TRAIN_CHAPTER_UTTS = 25
MIN_CHAPTERS_PER_VOICE = 2
MAX_EVAL_CHAPTER_UTTS = 200
# Mean utterance duration assumed before any audio exists; only sets the size of the
# first batch of training chapters (later batches use the measured mean).
PRIOR_SECONDS_PER_UTT = 3.2

DONE_MARKER = ".done"
OPTIONS_MARKER = ".options"


# ------------------------------------------------------------------------- planning


def weighted_round_robin(voices: Sequence[Voice], length: int) -> list[Voice]:
    """A sequence of voices in which every prefix follows the voices' weights closely."""
    total = sum(voice.weight for voice in voices)
    credit = [0.0] * len(voices)
    order = []
    for _ in range(length):
        for i, voice in enumerate(voices):
            credit[i] += voice.weight
        best = max(range(len(voices)), key=credit.__getitem__)
        credit[best] -= total
        order.append(voices[best])
    return order


def allocate_by_weight(total: int, voices: Sequence[Voice]) -> list[tuple[Voice, int]]:
    """Split ``total`` utterances between voices in proportion to their weights."""
    weight_sum = sum(voice.weight for voice in voices)
    shares = [total * voice.weight / weight_sum for voice in voices]
    counts = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(voices)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return [(voice, count) for voice, count in zip(voices, counts) if count > 0]


def chapter_id(part: str, index: int) -> int:
    return PART_CODES[part] * CHAPTER_ID_BASE + index


def eval_chapter_jobs(
    part_dir: Path,
    part: str,
    voice_counts: Sequence[tuple[Voice, int, AugmentationRanges]],
    sentences: Sequence[str],
    seed: int,
) -> list[ChapterJob]:
    """Chapters of a dev/test part: each voice's share of ``sentences``, in order."""
    jobs, next_sentence = [], 0
    for voice, count, ranges in voice_counts:
        for start in range(0, count, MAX_EVAL_CHAPTER_UTTS):
            size = min(MAX_EVAL_CHAPTER_UTTS, count - start)
            chapter = chapter_id(part, len(jobs))
            texts = tuple(sentences[next_sentence : next_sentence + size])
            next_sentence += size
            chapter_dir = part_dir / str(voice.speaker_id) / str(chapter)
            jobs.append(ChapterJob(chapter_dir, voice, chapter, texts, ranges, seed))
    return jobs


def sentence_stream(sentences: Sequence[str], seed: int, start: int, count: int) -> list[str]:
    """Items ``start .. start+count`` of an endless stream of reshuffled ``sentences``.

    Each pass over the sentences uses its own permutation, so a corpus larger than the
    text repeats sentences with other voices and styles, never in the same order.
    """
    out = []
    for position in range(start, start + count):
        epoch, offset = divmod(position, len(sentences))
        if offset == 0 or not out:
            permutation = np.random.default_rng([seed, epoch]).permutation(len(sentences))
        out.append(sentences[permutation[offset]])
    return out


def train_chapter_size(target_seconds: float, voices: Sequence[Voice]) -> int:
    """Utterances per training chapter: small enough that even the voice with the smallest
    weight gets ``MIN_CHAPTERS_PER_VOICE`` chapters, at most ``MAX_TRAIN_CHAPTER_UTTS``."""
    expected_utterances = target_seconds / PRIOR_SECONDS_PER_UTT
    smallest_share = min(v.weight for v in voices) / sum(v.weight for v in voices)
    size = math.floor(expected_utterances * smallest_share / MIN_CHAPTERS_PER_VOICE)
    return min(MAX_TRAIN_CHAPTER_UTTS, max(1, size))


@dataclass(frozen=True)
class TrainPlan:
    """How the training part is cut into chapters; chapter ``i`` is fully determined."""

    part_dir: Path
    voices: tuple[Voice, ...]
    sentences: tuple[str, ...]
    chapter_size: int
    seed: int

    def jobs(self, first: int, count: int) -> list[ChapterJob]:
        schedule = weighted_round_robin(self.voices, first + count)
        texts = sentence_stream(
            self.sentences, self.seed, first * self.chapter_size, count * self.chapter_size
        )
        jobs = []
        for k, index in enumerate(range(first, first + count)):
            voice = schedule[index]
            chapter = chapter_id(TRAIN_PART, index)
            chapter_texts = tuple(texts[k * self.chapter_size : (k + 1) * self.chapter_size])
            chapter_dir = self.part_dir / str(voice.speaker_id) / str(chapter)
            harsh = np.random.default_rng([self.seed, chapter]).random() < HARSH_TRAIN_FRACTION
            ranges = HARSH if harsh else CLEAN
            jobs.append(ChapterJob(chapter_dir, voice, chapter, chapter_texts, ranges, self.seed))
        return jobs


# -------------------------------------------------------------------------- running


class ChapterRunner:
    """Runs chapter jobs on ``nj`` worker processes (inline when nj is 1)."""

    def __init__(self, num_jobs: int) -> None:
        self.num_jobs = num_jobs
        self._pool = None

    def run(self, jobs: Sequence[ChapterJob], progress: tqdm) -> Iterator[ChapterResult]:
        if self.num_jobs > 1 and self._pool is None:
            self._pool = multiprocessing.get_context("fork").Pool(self.num_jobs)
        results = (
            self._pool.imap_unordered(synthesize_chapter, jobs)
            if self._pool is not None
            else map(synthesize_chapter, jobs)
        )
        for result in results:
            progress.update(result.num_planned)
            yield result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()


@dataclass
class PartStats:
    """Running totals of a part, written into its ``.done`` marker at the end."""

    samples_per_speaker: dict[int, int] = field(default_factory=dict)
    utterances: int = 0
    failed: int = 0

    def add(self, result: ChapterResult) -> None:
        samples = self.samples_per_speaker.get(result.speaker_id, 0) + sum(result.num_samples)
        self.samples_per_speaker[result.speaker_id] = samples
        self.utterances += len(result.num_samples)
        self.failed += result.num_failed

    @property
    def seconds(self) -> float:
        return sum(self.samples_per_speaker.values()) / SAMPLE_RATE

    def to_json(self) -> dict:
        return {
            "utterances": self.utterances,
            "hours": round(self.seconds / 3600, 4),
            "failed": self.failed,
            "seconds_per_speaker": {
                str(speaker): round(self.samples_per_speaker[speaker] / SAMPLE_RATE, 2)
                for speaker in sorted(self.samples_per_speaker)
            },
        }


def run_eval_part(runner: ChapterRunner, jobs: Sequence[ChapterJob], part: str) -> PartStats:
    stats = PartStats()
    total = sum(len(job.texts) for job in jobs)
    with tqdm(total=total, desc=part, unit="utt", dynamic_ncols=True) as progress:
        for result in runner.run(jobs, progress):
            stats.add(result)
            progress.set_postfix(hours=f"{stats.seconds / 3600:.3f}")
    return stats


def run_train_part(runner: ChapterRunner, plan: TrainPlan, target_seconds: float) -> PartStats:
    """Generate training chapters in batches until ``target_seconds`` of audio exist.

    The number of chapters in each batch is estimated from the mean utterance duration
    measured so far; durations are deterministic, so the plan is too.
    """
    stats = PartStats()
    next_chapter = 0
    seconds_per_utt = PRIOR_SECONDS_PER_UTT
    estimated_total = math.ceil(target_seconds / seconds_per_utt)
    with tqdm(total=estimated_total, desc=TRAIN_PART, unit="utt", dynamic_ncols=True) as progress:
        while stats.seconds < target_seconds:
            missing = target_seconds - stats.seconds
            count = max(1, math.ceil(missing / seconds_per_utt / plan.chapter_size))
            for result in runner.run(plan.jobs(next_chapter, count), progress):
                stats.add(result)
                progress.set_postfix(hours=f"{stats.seconds / 3600:.3f}")
            next_chapter += count
            if stats.utterances == 0:
                raise RuntimeError("no training utterance could be synthesised")
            seconds_per_utt = stats.seconds / stats.utterances
            progress.total = progress.n + max(
                0, math.ceil((target_seconds - stats.seconds) / seconds_per_utt)
            )
            progress.refresh()
    return stats


# ------------------------------------------------------------------------- markers


def options_hash(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def part_options(part: str, args: argparse.Namespace) -> dict:
    """The options that shape ``part``: a change in any of them regenerates it."""
    options = {
        "generator_version": GENERATOR_VERSION,
        "part": part,
        "seed": args.seed,
        "dev_utts": args.dev_utts,
        "test_utts": args.test_utts,
        "text_sources": list(args.text_sources),
        "voices": [v.label for v in selected_voices(args.voices)],
    }
    if part == TRAIN_PART:
        options["synth_hours"] = args.synth_hours
    return options


def selected_voices(speaker_ids: Sequence[int] | None) -> tuple[Voice, ...]:
    """The voices of ``VOICES`` with the given speaker ids, in ``VOICES``' order (all of
    them for None). An unknown id is a one-line error."""
    if speaker_ids is None:
        return VOICES
    known = {voice.speaker_id for voice in VOICES}
    unknown = sorted(set(speaker_ids) - known)
    if unknown:
        raise SystemExit(
            f"--voices: no voice has speaker id {', '.join(map(str, unknown))} "
            f"(local/voices.py has {', '.join(str(v.speaker_id) for v in VOICES)})"
        )
    chosen = set(speaker_ids)
    return tuple(voice for voice in VOICES if voice.speaker_id in chosen)


def read_done_marker(part_dir: Path) -> dict | None:
    try:
        return json.loads((part_dir / DONE_MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_complete(part_dir: Path, digest: str) -> bool:
    """True if the part was finished with the options whose hash is ``digest``."""
    marker = read_done_marker(part_dir)
    return marker is not None and marker.get("options_hash") == digest


def prepare_part_dir(part_dir: Path, digest: str) -> None:
    """Make an incomplete part's directory ready for work.

    A directory left by an interrupted run with the same options is resumed (finished
    chapters are kept); one made with other options is removed, because its chapters
    would not match the new plan.
    """
    options_file = part_dir / OPTIONS_MARKER
    if part_dir.exists() and (
        not options_file.is_file() or options_file.read_text().strip() != digest
    ):
        logging.warning("%s was made with other options: removing it", part_dir)
        shutil.rmtree(part_dir)
    part_dir.mkdir(parents=True, exist_ok=True)
    (part_dir / DONE_MARKER).unlink(missing_ok=True)
    options_file.write_text(digest + "\n")


def log_part_summary(part: str, marker: dict) -> None:
    logging.info(
        "%s: %d utterances, %.3f hours, %d speakers (%s), %d failed utterances skipped",
        part,
        marker["utterances"],
        marker["hours"],
        len(marker["seconds_per_speaker"]),
        " ".join(sorted(marker["seconds_per_speaker"])),
        marker["failed"],
    )


def write_speakers_file(corpus_dir: Path) -> None:
    """Write a LibriSpeech-like SPEAKERS.TXT from the ``.done`` markers of all parts."""
    voices = {voice.speaker_id: voice for voice in VOICES}
    lines = [
        "; Generated speech: every speaker is one TTS voice (engine:voice+variant).\n",
        "; Unlike LibriSpeech a speaker can occur in several subsets: one line per pair.\n",
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n",
    ]
    for part in PARTS:
        marker = read_done_marker(corpus_dir / part)
        if marker is None:
            continue
        for speaker, seconds in sorted(marker["seconds_per_speaker"].items()):
            voice = voices.get(int(speaker))
            sex, name = (voice.sex, voice.label) if voice else ("?", "unknown")
            lines.append(f"{speaker:<5}| {sex} | {part:<17}| {seconds / 60:5.2f} | {name}\n")
    speakers_file = corpus_dir / "SPEAKERS.TXT"
    text = "".join(lines)
    if not speakers_file.is_file() or speakers_file.read_text() != text:
        write_text_atomically(speakers_file, text)


# ---------------------------------------------------------------------------- main


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("download"),
        help="Directory that receives LibriSpeech/ (default: %(default)s).",
    )
    parser.add_argument(
        "--synth-hours",
        type=float,
        default=5.0,
        help="Hours of audio in train-clean-100 (default: %(default)s).",
    )
    parser.add_argument(
        "--dev-utts",
        type=int,
        default=300,
        help="Utterances in dev-clean (default: %(default)s).",
    )
    parser.add_argument(
        "--test-utts",
        type=int,
        default=300,
        help="Utterances in each of test-clean and test-other (default: %(default)s).",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="Seed of every random choice; the same seed gives the same corpus "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--nj",
        type=int,
        default=2,
        help="Number of worker processes (default: %(default)s).",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="Parts to generate.",
    )
    parser.add_argument(
        "--text-sources",
        nargs="+",
        choices=TEXT_SOURCES,
        default=list(DEFAULT_TEXT_SOURCES),
        help="Where sentences come from (default: %(default)s). Changing this changes every part.",
    )
    parser.add_argument(
        "--voices",
        nargs="+",
        type=int,
        default=None,
        metavar="SPEAKER_ID",
        help="Use only these voices of local/voices.py, by speaker id; at least one "
        "training and one held-out voice (default: all). Changing this changes every "
        "part. The test suite uses it to keep its tiny corpus to a few voices.",
    )
    return parser


def eval_voice_counts(
    part: str, num_utts: int, seen: Sequence[Voice], unseen: Sequence[Voice]
) -> list[tuple[Voice, int, AugmentationRanges]]:
    """How many utterances each voice says in a dev/test part, and with which ranges."""
    if part != TEST_OTHER_PART:
        return [(v, n, CLEAN) for v, n in allocate_by_weight(num_utts, seen)]
    # Unseen voices with clean augmentation isolate the effect of a new voice; seen voices
    # with harsh augmentation that of harder acoustics.
    num_unseen = math.ceil(num_utts / 2)
    return [(v, n, CLEAN) for v, n in allocate_by_weight(num_unseen, unseen)] + [
        (v, n, HARSH) for v, n in allocate_by_weight(num_utts - num_unseen, seen)
    ]


def generate_parts(
    args: argparse.Namespace, corpus_dir: Path, parts: Sequence[str], digests: dict[str, str]
) -> None:
    """Generate the incomplete ``parts``; write each part's ``.done`` marker last."""
    for program in ("sox", "flite", "espeak-ng", "festival"):
        if shutil.which(program) is None:
            raise SystemExit(f"{program} is not installed (see shared/setup.sh)")
    # The split depends on the seed and the dev/test sizes only, never on --synth-hours.
    train_sentences, (dev, test_clean, test_other) = split_held_out(
        load_sentences(args.text_sources),
        [args.dev_utts, args.test_utts, args.test_utts],
        args.seed,
    )
    eval_sentences = {DEV_PART: dev, TEST_CLEAN_PART: test_clean, TEST_OTHER_PART: test_other}
    logging.info(
        "Sentences: %d for training, %d dev, %d + %d test",
        len(train_sentences),
        len(dev),
        len(test_clean),
        len(test_other),
    )
    voices = usable_voices(selected_voices(args.voices))
    seen = tuple(v for v in voices if not v.held_out)
    unseen = tuple(v for v in voices if v.held_out)
    if not seen or not unseen:
        raise SystemExit("need at least one training voice and one held-out voice")
    logging.info("Training voices: %s", ", ".join(v.label for v in seen))
    logging.info("Held-out voices (test-other only): %s", ", ".join(v.label for v in unseen))

    runner = ChapterRunner(args.nj)
    try:
        for part in parts:
            part_dir = corpus_dir / part
            prepare_part_dir(part_dir, digests[part])
            start = time.monotonic()
            part_seed = args.seed * 10 + PART_CODES[part]
            if part == TRAIN_PART:
                target_seconds = args.synth_hours * 3600
                chapter_size = train_chapter_size(target_seconds, seen)
                plan = TrainPlan(part_dir, seen, tuple(train_sentences), chapter_size, part_seed)
                stats = run_train_part(runner, plan, target_seconds)
            else:
                texts = eval_sentences[part]
                voice_counts = eval_voice_counts(part, len(texts), seen, unseen)
                jobs = eval_chapter_jobs(part_dir, part, voice_counts, texts, part_seed)
                stats = run_eval_part(runner, jobs, part)
            elapsed = time.monotonic() - start
            marker = {"options_hash": digests[part], **stats.to_json()}
            write_text_atomically(part_dir / DONE_MARKER, json.dumps(marker, indent=1))
            log_part_summary(part, marker)
            logging.info(
                "%s took %.0f s: %.2f hours of audio per wall-clock minute",
                part,
                elapsed,
                stats.seconds / 3600 / (elapsed / 60),
            )
    finally:
        runner.close()


def main() -> None:
    args = get_parser().parse_args()
    logging.basicConfig(
        format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
        level=logging.INFO,
    )
    corpus_dir = args.out_dir / "LibriSpeech"
    digests = {part: options_hash(part_options(part, args)) for part in args.parts}
    pending = []
    for part in args.parts:
        if is_complete(corpus_dir / part, digests[part]):
            logging.info("%s is complete: skipping it", corpus_dir / part)
            log_part_summary(part, read_done_marker(corpus_dir / part))
        else:
            pending.append(part)
    if pending:
        generate_parts(args, corpus_dir, pending, digests)
    write_speakers_file(corpus_dir)


if __name__ == "__main__":
    main()
