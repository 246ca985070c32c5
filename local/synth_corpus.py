"""The generated corpus's layout (its LibriSpeech parts) and its chapters: a
chapter is one voice's utterances, written as FLAC files and then a
transcript, as in LibriSpeech (local/generate_synth_corpus.py plans them).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from local.voices import (
    SAMPLE_RATE,
    AugmentationRanges,
    TtsError,
    UtteranceStyle,
    Voice,
    draw_style,
    render_utterance,
)

TRAIN_PART = "train-clean-100"
DEV_PART = "dev-clean"
TEST_CLEAN_PART = "test-clean"
TEST_OTHER_PART = "test-other"
PARTS = (TRAIN_PART, DEV_PART, TEST_CLEAN_PART, TEST_OTHER_PART)


# ------------------------------------------------------------------------- chapters


@dataclass(frozen=True)
class ChapterJob:
    """Everything a worker needs to write one chapter: one voice, several sentences."""

    chapter_dir: Path
    voice: Voice
    chapter_id: int
    texts: tuple[str, ...]
    ranges: AugmentationRanges
    seed: int

    @property
    def transcript_path(self) -> Path:
        return self.chapter_dir / f"{self.voice.speaker_id}-{self.chapter_id}.trans.txt"

    def utterance_id(self, index: int) -> str:
        return f"{self.voice.speaker_id}-{self.chapter_id}-{index:04d}"


@dataclass(frozen=True)
class ChapterResult:
    speaker_id: int
    # Lengths in samples, not seconds: integer sums do not depend on the order in which
    # workers finish, so neither do the totals nor the training plan built on them.
    num_samples: tuple[int, ...]
    num_failed: int
    num_planned: int


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before being renamed into place (hidden, other suffix)."""
    return path.with_name(f".{path.name}.partial")


def write_text_atomically(path: Path, text: str) -> None:
    partial = partial_path(path)
    partial.write_text(text)
    os.replace(partial, path)


def write_flac_atomically(path: Path, audio: np.ndarray) -> None:
    """Write 16-bit FLAC under a temporary name, then rename: never seen half-written."""
    partial = partial_path(path)
    sf.write(str(partial), audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    os.replace(partial, path)


def read_finished_chapter(job: ChapterJob) -> ChapterResult:
    """Durations of a chapter written by an earlier run (its transcript exists)."""
    num_samples = []
    for line in job.transcript_path.read_text().splitlines():
        utterance_id = line.split(maxsplit=1)[0]
        num_samples.append(sf.info(str(job.chapter_dir / f"{utterance_id}.flac")).frames)
    num_failed = len(job.texts) - len(num_samples)
    return ChapterResult(job.voice.speaker_id, tuple(num_samples), num_failed, len(job.texts))


def synthesize_chapter(job: ChapterJob) -> ChapterResult:
    """Write a chapter's FLAC files, then its transcript; skip it if already written.

    A failed utterance is tried once more with a neutral style (no prosody change, no
    effects), then skipped with a warning; the chapter keeps its other utterances.
    """
    if job.transcript_path.is_file():
        return read_finished_chapter(job)
    job.chapter_dir.mkdir(parents=True, exist_ok=True)
    transcript_lines, num_samples = [], []
    with tempfile.TemporaryDirectory(prefix="synth-") as work_dir:
        for index, text in enumerate(job.texts):
            rng = np.random.default_rng([job.seed, job.chapter_id, index])
            audio = None
            for style in (draw_style(job.ranges, rng), UtteranceStyle()):
                try:
                    audio = render_utterance(job.voice, text, style, Path(work_dir), rng)
                    break
                except TtsError as error:
                    logging.warning(
                        "%s (%s) failed: %s", job.utterance_id(index), job.voice.label, error
                    )
            if audio is None:
                logging.warning("Skipping %s: %r", job.utterance_id(index), text)
                continue
            utterance_id = job.utterance_id(index)
            write_flac_atomically(job.chapter_dir / f"{utterance_id}.flac", audio)
            transcript_lines.append(f"{utterance_id} {text.upper()}\n")
            num_samples.append(audio.size)
    write_text_atomically(job.transcript_path, "".join(transcript_lines))
    num_failed = len(job.texts) - len(num_samples)
    return ChapterResult(job.voice.speaker_id, tuple(num_samples), num_failed, len(job.texts))
