"""The generated corpus's TTS voices (each one LibriSpeech speaker), the random
style of an utterance (rate, F0, vocal-tract length, reverberation, band
limit, noise, level) and the rendering of one utterance: the TTS engine's
audio through sox's effects, with coloured noise, as 16 kHz float samples.

local/generate_synth_corpus.py writes the corpus with them; a change to what
they render needs a bump of its GENERATOR_VERSION, so that old outputs are
regenerated.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import logging
import math
import multiprocessing
import multiprocessing.util
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from local.noise import coloured_noise

if TYPE_CHECKING:
    from hibari import Hibari

SAMPLE_RATE = 16000
# Audio shorter than this, or quieter than this peak, is treated as a failed synthesis.
MIN_SECONDS = 0.3
MIN_PEAK = 1e-3
TTS_TIMEOUT_SECONDS = 60.0
HIBARI_SAMPLE_RATE = 24000


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
    # hibari only: a pseudo-speaker made inside hibari's vocoder from its one voice. The
    # spectral envelope is stretched along the frequency axis (formants at
    # formant_scale x f: a shorter or longer vocal tract) and F0 scaled independently of
    # it; british picks hibari's British spelling-to-sound rules (another accent).
    formant_scale: float = 1.0
    f0_scale: float = 1.0
    british: bool = False

    @property
    def label(self) -> str:
        label = f"{self.engine}:{self.name}"
        if self.british:
            label += "+gb"
        if self.formant_scale != 1.0 or self.f0_scale != 1.0:
            label += f"+formants{self.formant_scale:g}+f0x{self.f0_scale:g}"
        return label


# flite's clustergen voices (rms, slt, awb) and hibari's neural voice (distilled from
# Kokoro-82M; the only one of its voices inside the wheel) are the most intelligible, so
# they carry most of the data; espeak-ng's formant synthesis sounds robotic and stays a
# minority (~13%).
# flite's kal is 8 kHz telephone-band speech and the same speaker as kal16: a small share.
# Mean F0 values were measured on this machine's voices with an autocorrelation tracker.
# Voices 310-317 (espeak-ng's two further English accents and variants not used above)
# and the hibari pseudo-speakers 402-406 add speakers so that the model meets more than
# a handful of vocal tracts; none of them uses the held-out espeak accent (gbcwmd) or
# variant (f3).
# The test suite's tiny corpus keeps to the voices before them (generate_synth_corpus.py
# --voices; tests/conftest.py): two epochs of 0.03 h teach its tiny model nothing when
# spread over all of them.
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
    Voice(310, "espeak", "en-us-nyc+m3", "M", 0.12),
    Voice(311, "espeak", "en-gb-x-gbclan+f4", "F", 0.12),
    Voice(312, "espeak", "en-us+m6", "M", 0.12),
    Voice(313, "espeak", "en-gb-x-rp+m5", "M", 0.12),
    Voice(314, "espeak", "en-029+f1", "F", 0.12),
    Voice(315, "espeak", "en-gb-scotland+f4", "F", 0.12),
    Voice(316, "espeak", "en-us-nyc+Annie", "F", 0.12),
    Voice(317, "espeak", "en-gb-x-gbclan+m7", "M", 0.12),
    Voice(401, "hibari", "heart", "F", 1.5),
    Voice(402, "hibari", "heart", "M", 1.0, formant_scale=0.84, f0_scale=0.56),
    Voice(403, "hibari", "heart", "M", 1.0, formant_scale=0.88, f0_scale=0.62, british=True),
    Voice(404, "hibari", "heart", "M", 0.8, formant_scale=0.93, f0_scale=0.72),
    Voice(405, "hibari", "heart", "F", 0.8, british=True),
    Voice(406, "hibari", "heart", "F", 0.6, formant_scale=1.08, f0_scale=1.15),
)


# --------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugmentationRanges:
    """Where the per-utterance random style is drawn from."""

    duration_stretch: tuple[float, float]  # > 1 is slower speech
    f0_factor: tuple[float, float]  # multiplies the voice's F0 (flite, espeak, hibari)
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


# Each rendering keeps one part of a fully augmented style and drops the rest.
RENDERINGS: dict[str, Callable[[UtteranceStyle], UtteranceStyle]] = {
    "none": lambda style: UtteranceStyle(),
    "reverberation": lambda style: UtteranceStyle(reverb=style.reverb),
    "band-limiting": lambda style: UtteranceStyle(band_hz=style.band_hz),
    "noise": lambda style: UtteranceStyle(noise_colour=style.noise_colour, snr_db=style.snr_db),
    "level": lambda style: UtteranceStyle(peak_dbfs=style.peak_dbfs),
    "prosody": lambda style: UtteranceStyle(
        duration_stretch=style.duration_stretch,
        f0_factor=style.f0_factor,
        spectral_shift_cents=style.spectral_shift_cents,
    ),
}
# The clean part's ranges with every effect switched on (tools/augmentation_cost.py).
EVERY_EFFECT = dataclasses.replace(
    CLEAN, reverb_probability=1.0, bandlimit_probability=1.0, noise_probability=1.0
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
def hibari_tts(voice_name: str, british: bool = False) -> Hibari:
    """This worker's hibari synthesiser for a voice (one ONNX Runtime thread), loaded once.

    british: hibari's British spelling-to-sound rules instead of those of the voice."""
    from hibari import Hibari
    from hibari.g2p import G2P

    return Hibari(voice=voice_name, threads=1, g2p=G2P(british=british) if british else None)


def warp_frequency_axis(spectrum: np.ndarray, scale: float) -> np.ndarray:
    """Stretch per-frame spectra along frequency: what was at bin b moves to bin scale * b.

    spectrum: (num_bins, num_frames), any per-bin quantity (log magnitudes, phases).
    Returns the same shape; bins that would read beyond the top repeat the top bin.
    """
    num_bins = spectrum.shape[0]
    source = np.arange(num_bins, dtype=np.float64) / scale
    lower = np.clip(np.floor(source).astype(np.int64), 0, num_bins - 1)
    upper = np.clip(lower + 1, 0, num_bins - 1)
    weight = np.clip(source - lower, 0.0, 1.0)[:, None].astype(spectrum.dtype)
    return (1 - weight) * spectrum[lower] + weight * spectrum[upper]


def hibari_speech(voice: Voice, text: str, speed: float, f0_factor: float, seed: int) -> np.ndarray:
    """hibari's audio (24 kHz float32) for ``text``, as ``Hibari.__call__`` makes it, with
    the voice's formant and F0 scales (and the utterance's F0 factor) applied in between
    the network and the vocoder, where envelope and F0 are separate."""
    from hibari import dsp

    tts = hibari_tts(voice.name, voice.british)
    rng = np.random.default_rng(seed)
    sentences = []
    for phonemes in tts.phonemize(text):
        ids = tts.ids(phonemes)
        if len(ids) < 3:
            continue
        inputs = {"ids": np.asarray([ids], np.int64), "speed": np.asarray([speed], np.float32)}
        harmonic, harmonic_phase, noise, free, free_phase, f0 = (
            output[0] for output in tts.sess.run(None, inputs)
        )
        if voice.formant_scale != 1.0:
            # Magnitudes only: phases interpolated between bins lose their coherence
            # and take energy out of the upper bands.
            harmonic, noise, free = (
                warp_frequency_axis(part, voice.formant_scale) for part in (harmonic, noise, free)
            )
        f0 = f0 * np.float32(voice.f0_scale * f0_factor)
        sentences.append(
            dsp.synth(harmonic, harmonic_phase, noise, free, free_phase, f0, rng)
        )
    return np.concatenate(sentences) if sentences else np.zeros(0, np.float32)


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

    Speaking rate and F0 are set through the engine where it supports them (hibari's F0
    inside its vocoder); festival's rate is changed by sox instead (its HTS voice ignores
    Duration_Stretch), and so is its pitch, by sox's spectral shift only.
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
            audio = hibari_speech(voice, text, 1 / style.duration_stretch, style.f0_factor, seed)
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
