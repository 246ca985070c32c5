"""The frequency warp of training features (pruned_transducer_stateless4/frequency_warp.py)
against the recipe's own fbank of tones, and its off-by-default datamodule option."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from pruned_transducer_stateless4.asr_datamodule import LibriSpeechAsrDataModule
from pruned_transducer_stateless4.frequency_warp import (
    HIGH_FREQ,
    LOW_FREQ,
    FrequencyWarp,
    hz_to_mel,
    warp_frequency,
)
from shared.features import NUM_MEL_BINS, SAMPLE_RATE, make_fbank_extractor


def fbank(signal: np.ndarray) -> torch.Tensor:
    """(T, 80) log-mel features of `signal` as the recipe computes them."""
    features = make_fbank_extractor().extract(signal.astype(np.float32), SAMPLE_RATE)
    return torch.from_numpy(np.asarray(features))


def tone(*freqs: float, seconds: float = 1.0) -> np.ndarray:
    """A sum of sines (amplitude 0.3 / count each) at `freqs` Hz."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return sum(0.3 / len(freqs) * np.sin(2 * np.pi * f * t) for f in freqs)


def mean_profile(features: torch.Tensor) -> torch.Tensor:
    """(F,) the mean over the inner frames (no edge effects)."""
    return features[5:-5].mean(dim=0)


def bin_of(hz: float) -> float:
    """The fractional mel bin index whose centre is at `hz`."""
    mel_low, mel_high = (float(hz_to_mel(torch.tensor(f))) for f in (LOW_FREQ, HIGH_FREQ))
    delta = (mel_high - mel_low) / (NUM_MEL_BINS + 1)
    return (float(hz_to_mel(torch.tensor(hz))) - mel_low) / delta - 1


def test_band_is_the_recipes_fbank() -> None:
    assert (LOW_FREQ, HIGH_FREQ) == (20.0, 7600.0)


def test_alpha_one_is_the_identity_exactly() -> None:
    features = torch.randn(3, 17, NUM_MEL_BINS)
    out = warp_frequency(features, torch.ones(3))
    assert torch.equal(out, features)
    # Only the utterances with alpha 1 are kept as they are.
    mixed = warp_frequency(features, torch.tensor([1.0, 1.1, 1.0]))
    assert torch.equal(mixed[0], features[0]) and torch.equal(mixed[2], features[2])
    assert not torch.equal(mixed[1], features[1])


def test_constant_features_stay_constant() -> None:
    """Padding (a constant) stays padding, whatever alpha."""
    features = torch.full((2, 4, NUM_MEL_BINS), -23.0)
    out = warp_frequency(features, torch.tensor([0.8, 1.2]))
    assert torch.allclose(out, features)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_warped_tone_peaks_where_the_scaled_tone_does(alpha: float, freq: float) -> None:
    warped = mean_profile(warp_frequency(fbank(tone(freq))[None], torch.tensor([alpha]))[0])
    target = mean_profile(fbank(tone(alpha * freq)))
    assert abs(int(warped.argmax()) - int(target.argmax())) <= 1
    assert abs(int(target.argmax()) - bin_of(alpha * freq)) <= 1
    # ... and not where the unwarped tone does (the shift is more than a bin).
    original = mean_profile(fbank(tone(freq)))
    assert abs(int(warped.argmax()) - int(original.argmax())) >= 1


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_warped_harmonics_match_the_scaled_harmonics(alpha: float) -> None:
    f0 = 200.0
    harmonics = [f0 * k for k in range(1, 16)]  # up to 3 kHz (3.3 kHz scaled)
    warped = mean_profile(warp_frequency(fbank(tone(*harmonics))[None], torch.tensor([alpha]))[0])
    target = mean_profile(fbank(tone(*(alpha * f for f in harmonics))))
    original = mean_profile(fbank(tone(*harmonics)))
    band = slice(int(bin_of(150.0)), int(bin_of(3000.0)))  # the harmonics' bins
    # The peaks (local maxima well above the floor) sit in the same bins, within one.
    def peaks(profile: torch.Tensor) -> list[int]:
        p = profile[band]
        return [i for i in range(1, len(p) - 1)
                if p[i] >= p[i - 1] and p[i] >= p[i + 1] and p[i] > p.max() - 6]
    warped_peaks, target_peaks = peaks(warped), peaks(target)
    assert len(warped_peaks) >= 5
    for peak in warped_peaks:
        assert min(abs(peak - t) for t in target_peaks) <= 1
    # The profile is closer to the scaled signal's than the unwarped one is.
    error = (warped[band] - target[band]).abs().mean()
    assert error < 0.5 * (original[band] - target[band]).abs().mean()


def parse_datamodule_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    LibriSpeechAsrDataModule.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_frequency_warp_is_off_by_default() -> None:
    args = parse_datamodule_args()
    assert args.frequency_warp_range == 0.0
    transforms = LibriSpeechAsrDataModule(args).train_input_transforms()
    assert not any(isinstance(t, FrequencyWarp) for t in transforms)


def test_frequency_warp_option_adds_the_transform_first() -> None:
    args = parse_datamodule_args("--frequency-warp-range", "0.1")
    transforms = LibriSpeechAsrDataModule(args).train_input_transforms()
    assert isinstance(transforms[0], FrequencyWarp)
    assert transforms[0].warp_range == 0.1
    assert sum(isinstance(t, FrequencyWarp) for t in transforms) == 1


def test_transform_draws_alphas_in_range_per_utterance() -> None:
    transform = FrequencyWarp(0.1, generator=torch.Generator().manual_seed(0))
    alpha = transform.draw_alpha(64)
    assert alpha.shape == (64,)
    assert bool(((alpha >= 0.9) & (alpha <= 1.1)).all())
    assert len(set(alpha.tolist())) == 64
    assert not torch.equal(alpha, transform.draw_alpha(64))  # a new view, new alphas
    # The global RNG when no generator is given, as SpecAugment.
    torch.manual_seed(3)
    first = FrequencyWarp(0.1).draw_alpha(4)
    torch.manual_seed(3)
    assert torch.equal(first, FrequencyWarp(0.1).draw_alpha(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_transform_keeps_shape_dtype_and_device(dtype: torch.dtype) -> None:
    transform = FrequencyWarp(0.1, generator=torch.Generator().manual_seed(1))
    features = torch.randn(4, 30, NUM_MEL_BINS).to(dtype)
    segments = torch.tensor([[0, 0, 30], [1, 0, 20], [2, 0, 30], [3, 0, 10]], dtype=torch.int32)
    out = transform(features, supervision_segments=segments)
    assert out.shape == features.shape and out.dtype == dtype
    assert out.device == features.device
    # Each utterance warped by its own alpha: no two rows changed alike.
    change = (out.double() - features.double()).abs().mean(dim=(1, 2))
    assert bool((change > 0).all()) and len(set(change.tolist())) == 4


def test_frequency_warp_range_must_be_below_one() -> None:
    with pytest.raises(ValueError):
        FrequencyWarp(1.0)
    with pytest.raises(ValueError):
        FrequencyWarp(-0.1)
