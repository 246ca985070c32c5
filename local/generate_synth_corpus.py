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
import functools
import hashlib
import importlib.util
import json
import logging
import math
import multiprocessing
import multiprocessing.util
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
from tqdm import tqdm

from local.generate_noise import coloured_noise
from local.text_sources import DEFAULT_TEXT_SOURCES, TEXT_SOURCES, load_sentences, split_held_out
from shared.utils import HelpFormatter

if TYPE_CHECKING:
    from hibari import Hibari

# Bump when the way audio or text is produced changes: old outputs are then regenerated.
GENERATOR_VERSION = 2

SAMPLE_RATE = 16000
TRAIN_PART = "train-clean-100"
DEV_PART = "dev-clean"
TEST_CLEAN_PART = "test-clean"
TEST_OTHER_PART = "test-other"
PARTS = (TRAIN_PART, DEV_PART, TEST_CLEAN_PART, TEST_OTHER_PART)
# Leading digit of the chapter ids of each part, so that chapter ids are globally unique.
PART_CODES = {TRAIN_PART: 1, DEV_PART: 2, TEST_CLEAN_PART: 3, TEST_OTHER_PART: 4}
CHAPTER_ID_BASE = 100_000

MAX_TRAIN_CHAPTER_UTTS = 25
MIN_CHAPTERS_PER_VOICE = 2
MAX_EVAL_CHAPTER_UTTS = 200
# Mean utterance duration assumed before any audio exists; only sets the size of the
# first batch of training chapters (later batches use the measured mean).
PRIOR_SECONDS_PER_UTT = 3.2
# Audio shorter than this, or quieter than this peak, is treated as a failed synthesis.
MIN_SECONDS = 0.3
MIN_PEAK = 1e-3
TTS_TIMEOUT_SECONDS = 60.0
HIBARI_SAMPLE_RATE = 24000

DONE_MARKER = ".done"
OPTIONS_MARKER = ".options"


# --------------------------------------------------------------------------- voices


@dataclass(frozen=True)
class Voice:
    """One TTS voice; it is one LibriSpeech speaker."""

    speaker_id: int
    engine: str  # "flite", "festival", "espeak" or "hibari"
    name: str  # the engine's voice name, e.g. "slt", "kal_diphone", "en-us+m3"
    sex: str  # "M" or "F", as in SPEAKERS.TXT
    weight: float  # relative share of the training data
    held_out: bool = False  # only in test-other, never in training
    mean_f0: float | None = None  # flite only: the voice's natural mean F0 in Hz

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.name}"


# flite's clustergen voices (rms, slt, awb) and hibari's neural voice (distilled from
# Kokoro-82M; the only one of its voices inside the wheel) are the most intelligible, so
# they carry most of the data; espeak-ng's formant synthesis sounds robotic and stays a
# minority (~10%).
# flite's kal is 8 kHz telephone-band speech and the same speaker as kal16: a small share.
# Mean F0 values were measured on this machine's voices with an autocorrelation tracker.
VOICES: tuple[Voice, ...] = (
    Voice(101, "flite", "rms", "M", 1.5, mean_f0=100.0),
    Voice(102, "flite", "slt", "F", 1.5, mean_f0=170.0),
    Voice(103, "flite", "kal", "M", 0.4, mean_f0=90.0),
    Voice(104, "flite", "kal16", "M", 1.2, mean_f0=90.0),
    Voice(105, "flite", "awb", "M", 1.5, held_out=True, mean_f0=130.0),
    Voice(201, "festival", "kal_diphone", "M", 0.8),
    Voice(202, "festival", "ked_diphone", "M", 1.0),
    Voice(203, "festival", "cmu_us_slt_arctic_hts", "F", 1.2),
    Voice(301, "espeak", "en-us+klatt4", "M", 0.12),
    Voice(302, "espeak", "en-us+f2", "F", 0.12),
    Voice(303, "espeak", "en-us+edward", "M", 0.12),
    Voice(304, "espeak", "en-us+f5", "F", 0.12),
    Voice(305, "espeak", "en-gb+m1", "M", 0.12),
    Voice(306, "espeak", "en-gb-x-rp+f1", "F", 0.12),
    Voice(307, "espeak", "en-gb-scotland+m2", "M", 0.12),
    Voice(308, "espeak", "en-029+m4", "M", 0.12),
    Voice(309, "espeak", "en-gb-x-gbcwmd+f3", "F", 0.5, held_out=True),
    Voice(401, "hibari", "heart", "F", 1.5),
)


# --------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugmentationRanges:
    """Where the per-utterance random style is drawn from."""

    duration_stretch: tuple[float, float]  # > 1 is slower speech
    f0_factor: tuple[float, float]  # multiplies the voice's F0 (flite, espeak only)
    # sox "pitch" shifts the whole spectrum (formants and F0) while keeping the duration:
    # the apparent vocal-tract length changes; the engine's F0 factor then moves F0
    # independently of the formants.
    spectral_shift_cents: tuple[float, float]
    reverb_probability: float
    bandlimit_probability: float
    noise_probability: float
    snr_db: tuple[float, float]
    peak_dbfs: tuple[float, float]


# dev-clean, test-clean and most of the training data. Noise stays light: training adds
# MUSAN-style noise on the fly (--enable-musan) anyway.
CLEAN = AugmentationRanges(
    duration_stretch=(0.85, 1.2),
    f0_factor=(0.85, 1.2),
    spectral_shift_cents=(-150.0, 150.0),
    reverb_probability=0.15,
    bandlimit_probability=0.1,
    noise_probability=0.2,
    snr_db=(25.0, 45.0),
    peak_dbfs=(-12.0, -1.0),
)
# The seen voices of test-other and a share of the training chapters.
HARSH = AugmentationRanges(
    duration_stretch=(0.8, 1.3),
    f0_factor=(0.75, 1.3),
    spectral_shift_cents=(-300.0, 300.0),
    reverb_probability=0.7,
    bandlimit_probability=0.4,
    noise_probability=0.9,
    snr_db=(5.0, 20.0),
    peak_dbfs=(-20.0, -1.0),
)
HARSH_TRAIN_FRACTION = 0.25
NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


@dataclass(frozen=True)
class UtteranceStyle:
    """The random choices that shape one utterance."""

    duration_stretch: float = 1.0
    f0_factor: float = 1.0
    spectral_shift_cents: float = 0.0
    reverb: tuple[float, float, float] | None = None  # reverberance, HF damping, room scale
    band_hz: tuple[float, float] | None = None
    noise_colour: str | None = None
    snr_db: float = 30.0
    peak_dbfs: float = -3.0


def draw_style(ranges: AugmentationRanges, rng: np.random.Generator) -> UtteranceStyle:
    """Draw one utterance's style. The same number of draws happens whatever is chosen."""
    uniform = rng.uniform
    reverb = (uniform(10, 70), uniform(20, 80), uniform(20, 90))
    band_hz = (uniform(80, 300), uniform(3200, 7000))
    colour = str(rng.choice(list(NOISE_EXPONENTS)))
    use_reverb, use_band, use_noise = rng.random(3) < (
        ranges.reverb_probability,
        ranges.bandlimit_probability,
        ranges.noise_probability,
    )
    return UtteranceStyle(
        duration_stretch=uniform(*ranges.duration_stretch),
        f0_factor=uniform(*ranges.f0_factor),
        spectral_shift_cents=uniform(*ranges.spectral_shift_cents),
        reverb=reverb if use_reverb else None,
        band_hz=band_hz if use_band else None,
        noise_colour=colour if use_noise else None,
        snr_db=uniform(*ranges.snr_db),
        peak_dbfs=uniform(*ranges.peak_dbfs),
    )


# -------------------------------------------------------------------------- engines


class TtsError(RuntimeError):
    """A TTS engine or sox failed, or produced no usable audio."""


class FestivalProcess:
    """One long-lived ``festival --pipe`` that synthesises many sentences.

    Starting festival costs about half a second, far more than synthesising a sentence,
    so each worker keeps one process. festival buffers stdout when it is a pipe but not
    stderr, so after each command a marker printed on stderr says that it has finished.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._commands_sent = 0
        self._voice: str | None = None  # the voice selected in the running process

    def _start(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._voice = None
            self._process = subprocess.Popen(
                ["festival", "--pipe"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                bufsize=0,
            )
        return self._process

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None

    def _run(self, command: str, timeout: float) -> str:
        """Send one Scheme command and return what festival printed on stderr meanwhile."""
        process = self._start()
        self._commands_sent += 1
        marker = f"@@done{self._commands_sent}@@".encode()
        script = f'{command}\n(format stderr "{marker.decode()}\\n")\n'
        stderr = b""
        try:
            process.stdin.write(script.encode())
            process.stdin.flush()
            deadline = time.monotonic() + timeout
            while marker not in stderr:
                remaining = deadline - time.monotonic()
                ready, _, _ = select.select([process.stderr], [], [], max(remaining, 0))
                if not ready:
                    raise TtsError(f"festival timed out after {timeout:.0f} s")
                chunk = os.read(process.stderr.fileno(), 65536)
                if not chunk:
                    raise TtsError("festival exited")
                stderr += chunk
        except (OSError, TtsError) as error:
            process.kill()
            self._process = None
            raise TtsError(f"festival failed: {error}; stderr: {stderr[-300:]!r}") from error
        return stderr.replace(marker, b"").decode(errors="replace")

    def _select_voice(self, voice_name: str) -> None:
        if self._process is not None and self._process.poll() is None:
            if self._voice == voice_name:
                return
        messages = self._run(f"(voice_{voice_name})", TTS_TIMEOUT_SECONDS)
        # An unknown voice is an error message, after which festival would go on
        # speaking with its previous (or default) voice.
        if "ERROR" in messages:
            raise TtsError(f"festival cannot load voice {voice_name}: {messages.strip()[-300:]}")
        self._voice = voice_name

    def synthesize(self, voice_name: str, text: str, wav_path: Path) -> None:
        self._select_voice(voice_name)
        # The text holds only letters, apostrophes and spaces, so it is a safe Scheme string.
        command = f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{wav_path}" \'riff)'
        messages = self._run(command, TTS_TIMEOUT_SECONDS)
        if "ERROR" in messages or not wav_path.is_file():
            raise TtsError(f"festival failed: {messages.strip()[-300:]}")


_festival: FestivalProcess | None = None


def festival_process() -> FestivalProcess:
    """The festival process of this worker, started on first use."""
    global _festival
    if _festival is None:
        _festival = FestivalProcess()
        # Runs at exit of pool workers too (unlike atexit), so festival is waited for
        # instead of lingering as a zombie.
        multiprocessing.util.Finalize(_festival, _festival.close, exitpriority=10)
    return _festival


@functools.cache
def hibari_tts(voice_name: str) -> Hibari:
    """This worker's hibari synthesiser for a voice (one ONNX Runtime thread), loaded once."""
    from hibari import Hibari

    return Hibari(voice=voice_name, threads=1)


def run_command(command: list[str]) -> bytes:
    """Run a command; return its stdout or raise TtsError with its stderr."""
    try:
        result = subprocess.run(command, capture_output=True, timeout=TTS_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as error:
        raise TtsError(f"{command[0]} timed out") from error
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()[-300:]
        raise TtsError(f"{command[0]} exited with {result.returncode}: {message}")
    return result.stdout


def synthesize_raw(voice: Voice, text: str, style: UtteranceStyle, wav_path: Path) -> None:
    """Let the voice's engine say ``text`` into ``wav_path`` (engine's own sample rate).

    Speaking rate and F0 are set through the engine where it supports them; festival's
    rate is changed by sox instead (its HTS voice ignores Duration_Stretch). hibari has no
    F0 control, so only sox's spectral shift moves its pitch.
    """
    if voice.engine == "flite":
        mean_f0 = (voice.mean_f0 or 110.0) * style.f0_factor
        features = [
            f"duration_stretch={style.duration_stretch:.3f}",
            f"int_f0_target_mean={mean_f0:.1f}",
        ]
        command = ["flite", "-voice", voice.name, "-t", text, "-o", str(wav_path)]
        for feature in features:
            command += ["--setf", feature]
        run_command(command)
    elif voice.engine == "espeak":
        # espeak-ng: -s words per minute (default 175), -p pitch 0-99 (default 50).
        words_per_minute = round(175 / style.duration_stretch)
        pitch = int(np.clip(round(50 + 100 * (style.f0_factor - 1)), 0, 99))
        rate_and_pitch = ["-s", str(words_per_minute), "-p", str(pitch)]
        run_command(["espeak-ng", "-v", voice.name, *rate_and_pitch, "-w", str(wav_path), text])
    elif voice.engine == "festival":
        festival_process().synthesize(voice.name, text, wav_path)
    elif voice.engine == "hibari":
        # hibari draws a noise component at random; a seed from the text keeps the
        # corpus reproducible.
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        try:
            audio = hibari_tts(voice.name)(text, speed=1 / style.duration_stretch, seed=seed)
        except Exception as error:  # an ONNX Runtime or phonemiser failure on this text
            raise TtsError(f"hibari failed: {error}") from error
        sf.write(wav_path, audio, HIBARI_SAMPLE_RATE, subtype="FLOAT")
    else:
        raise ValueError(f"unknown engine {voice.engine}")


def sox_effects(voice: Voice, style: UtteranceStyle) -> list[str]:
    """The sox effect chain for one utterance, applied after conversion to 16 kHz mono."""
    # 6 dB of headroom: pitch shifting and reverberation can push TTS output past 0 dBFS.
    effects = ["channels", "1", "rate", "-h", str(SAMPLE_RATE), "gain", "-6"]
    if abs(style.spectral_shift_cents) >= 1:
        # sox's pitch resamples internally and leaves the rate change to the end of the
        # chain, so without an explicit rate the later effects ran at 16 kHz * 2^(c/1200)
        # and a band-pass edge above that Nyquist frequency failed the utterance.
        effects += ["pitch", f"{style.spectral_shift_cents:.0f}", "rate", "-h", str(SAMPLE_RATE)]
    if voice.engine == "festival":
        effects += ["tempo", "-s", f"{1 / style.duration_stretch:.4f}"]
    if style.reverb is not None:
        effects += ["reverb"] + [f"{value:.0f}" for value in style.reverb]
    if style.band_hz is not None:
        effects += ["sinc", f"{style.band_hz[0]:.0f}-{style.band_hz[1]:.0f}"]
    return effects


def render_utterance(
    voice: Voice, text: str, style: UtteranceStyle, work_dir: Path, rng: np.random.Generator
) -> np.ndarray:
    """Synthesise, transform and mix one utterance; return 16 kHz float samples.

    Raises TtsError if any step fails or the speech is empty or silent.
    """
    raw_wav = work_dir / "raw.wav"
    raw_wav.unlink(missing_ok=True)
    synthesize_raw(voice, text, style, raw_wav)
    if not raw_wav.is_file() or raw_wav.stat().st_size <= 44:
        raise TtsError("the engine wrote no audio")
    # -R: sox's own random numbers are the same on every run; -D: no dither.
    output_format = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1"]
    float_samples = run_command(
        ["sox", "-R", "-D", "-V1", str(raw_wav), *output_format, "-r", str(SAMPLE_RATE), "-"]
        + sox_effects(voice, style)
    )
    speech = np.frombuffer(float_samples, dtype=np.float32).astype(np.float64)
    peak = float(np.max(np.abs(speech))) if speech.size else 0.0
    if speech.size < MIN_SECONDS * SAMPLE_RATE or peak < MIN_PEAK:
        raise TtsError(f"empty or silent audio ({speech.size} samples, peak {peak:.2g})")
    if style.noise_colour is not None:
        noise = coloured_noise(speech.size, NOISE_EXPONENTS[style.noise_colour], rng)
        speech_power = np.mean(speech**2)
        noise_power = np.mean(noise**2)
        speech = speech + noise * math.sqrt(speech_power / noise_power / 10 ** (style.snr_db / 10))
    return speech * (10 ** (style.peak_dbfs / 20) / np.max(np.abs(speech)))


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
        "voices": [v.label for v in VOICES],
    }
    if part == TRAIN_PART:
        options["synth_hours"] = args.synth_hours
    return options


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


# --------------------------------------------------------------------------- checks


@functools.cache
def installed_flite_voices() -> frozenset[str]:
    listing = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
    return frozenset(listing.partition(":")[2].split())  # "Voices available: kal awb ..."


@functools.cache
def installed_espeak_languages() -> frozenset[str]:
    """Language codes of espeak-ng's own voices (MBROLA ones need separate databases)."""
    listing = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True).stdout
    # Columns: Pty Language Age/Gender VoiceName File Other-languages
    rows = [line.split() for line in listing.splitlines()[1:]]
    return frozenset(row[1] for row in rows if len(row) >= 5 and not row[4].startswith("mb/"))


@functools.cache
def espeak_data_dir() -> Path:
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    return Path(version.partition("Data at:")[2].strip())


def voice_is_installed(voice: Voice) -> bool:
    """Whether the engine really has this voice.

    flite and espeak-ng silently fall back to a default voice for an unknown name (and
    exit with status 0), so a failed synthesis alone would not reveal a missing voice.
    """
    if voice.engine == "flite":
        return voice.name in installed_flite_voices()
    if voice.engine == "espeak":
        language, _, variant = voice.name.partition("+")
        variant_file = espeak_data_dir() / "voices" / "!v" / variant
        return language in installed_espeak_languages() and (not variant or variant_file.is_file())
    if voice.engine == "hibari":
        # Only "heart" is inside the wheel; hibari would try to download the others.
        return importlib.util.find_spec("hibari") is not None and voice.name == "heart"
    return True  # festival reports an unknown voice as an error


def usable_voices(voices: Iterable[Voice]) -> tuple[Voice, ...]:
    """Voices that synthesise a test sentence here; the others are left out with a warning."""
    usable = []
    with tempfile.TemporaryDirectory(prefix="synth-probe-") as work_dir:
        for voice in voices:
            if not voice_is_installed(voice):
                logging.warning("Voice %s is not installed, leaving it out", voice.label)
                continue
            try:
                render_utterance(
                    voice,
                    "this is a test",
                    UtteranceStyle(),
                    Path(work_dir),
                    np.random.default_rng(0),
                )
                usable.append(voice)
            except (TtsError, FileNotFoundError) as error:
                logging.warning(
                    "Voice %s does not work here, leaving it out: %s", voice.label, error
                )
    if _festival is not None:
        _festival.close()  # workers start their own
    return tuple(usable)


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
    voices = usable_voices(VOICES)
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
