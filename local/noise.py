"""Noise, music and babble signals, 16 kHz mono float64 arrays of `num_samples`
samples drawn from `rng`: the noise corpus of local/generate_noise.py (MUSAN's
layout) and the background noise of local/generate_synth_corpus.py.

Changing what a signal draws changes their outputs: bump those scripts'
GENERATOR_VERSION too, so that old outputs are regenerated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


def coloured_noise(num_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum proportional to 1/f**exponent, unit RMS.

    exponent 0 is white, 1 pink, 2 brown (red) noise.
    """
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    frequencies = np.fft.rfftfreq(num_samples)
    scale = np.zeros_like(frequencies)
    scale[1:] = frequencies[1:] ** (-exponent / 2)  # no DC offset
    noise = np.fft.irfft(spectrum * scale, n=num_samples)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def mains_hum(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A 50 or 60 Hz hum with random harmonics and slow drift, unit RMS."""
    fundamental = rng.choice([50.0, 60.0]) * rng.uniform(0.995, 1.005)
    t = np.arange(num_samples) / SAMPLE_RATE
    # Slow amplitude drift, as transformers and fans never hum perfectly steadily.
    drift = 1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 2 * np.pi))
    hum = np.zeros(num_samples)
    for harmonic in range(1, int(rng.integers(3, 12))):
        amplitude = rng.uniform(0.2, 1.0) / harmonic ** rng.uniform(0.3, 1.2)
        hum += amplitude * np.sin(2 * np.pi * fundamental * harmonic * t + rng.uniform(0, 6.3))
    hum *= drift
    return hum / np.sqrt(np.mean(hum**2))


def noise_signal(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """One noise recording: white, pink or brown noise, a mains hum, or a mixture."""
    kind = str(rng.choice(["white", "pink", "brown", "hum", "mixture"]))
    if kind == "hum":
        return mains_hum(num_samples, rng)
    if kind == "mixture":
        noise = coloured_noise(num_samples, rng.uniform(0.0, 2.0), rng)
        return noise + rng.uniform(0.2, 2.0) * mains_hum(num_samples, rng)
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind]
    return coloured_noise(num_samples, exponent, rng)


def music_signal(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A simple tune: a pentatonic melody with a bass line and sustained chords."""
    beat = int(SAMPLE_RATE * 60 / rng.uniform(70, 160))
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)  # A2 .. G#3
    pentatonic = np.array([0, 2, 4, 7, 9, 12, 14, 16, 19, 21])
    brightness = rng.uniform(0.8, 2.0)  # how fast harmonics fall off: the timbre
    out = np.zeros(num_samples + 8 * beat)  # room for the longest note past the end

    def add_note(start: int, length: int, frequency: float, gain: float) -> None:
        t = np.arange(length) / SAMPLE_RATE
        envelope = np.exp(-t * rng.uniform(2, 6)) * np.minimum(1, t * 200)
        tone = sum(np.sin(2 * np.pi * frequency * h * t) / h**brightness for h in range(1, 6))
        out[start : start + length] += gain * envelope * tone

    for start in range(0, num_samples, beat):
        if rng.random() < 0.85:  # some rests
            step = pentatonic[rng.integers(0, len(pentatonic))]
            add_note(start, 2 * beat, 2 * root * 2 ** (step / 12), 0.5)
        if (start // beat) % 2 == 0:
            add_note(start, 2 * beat, root / 2 * 2 ** (pentatonic[rng.integers(0, 4)] / 12), 0.6)
        if (start // beat) % 8 == 0:
            for step in (0, 4, 7):
                add_note(start, 8 * beat, root * 2 ** (step / 12), 0.15)
    music = out[:num_samples]
    return music / (np.sqrt(np.mean(music**2)) + 1e-12)


def babble_signal(
    num_samples: int, sources: Sequence[Path], rng: np.random.Generator
) -> np.ndarray:
    """Several talkers at once, each a run of random utterances from ``sources``."""
    babble = np.zeros(num_samples)
    for _ in range(int(rng.integers(3, 8))):
        talker = np.zeros(num_samples)
        position = int(rng.integers(0, SAMPLE_RATE))  # talkers do not start together
        while position < num_samples:
            audio, _ = sf.read(str(sources[rng.integers(0, len(sources))]), dtype="float64")
            audio = audio[: num_samples - position]
            talker[position : position + audio.size] = audio / (np.max(np.abs(audio)) + 1e-9)
            position += audio.size + int(rng.integers(0, SAMPLE_RATE // 4))
        babble += rng.uniform(0.5, 1.0) * talker
    return babble
