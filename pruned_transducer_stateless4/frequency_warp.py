"""Frequency warping of log-mel fbank features (VTLN-style speaker augmentation).

`warp_frequency` rescales the frequency axis of precomputed features by a
factor alpha per utterance: what was at f Hz comes out at alpha * f Hz, as if
a speaker with a vocal tract 1/alpha as long had said it (Kaldi's VTLN warp
factor has the same direction).  `FrequencyWarp` is the lhotse input
transform that draws alpha per utterance for every training batch
(asr_datamodule.py's --frequency-warp-range; off by default).

The mel layout is the recipe's (shared/features.py): Kaldi/lhotse mel scale
1127 ln(1 + f / 700), `NUM_MEL_BINS` triangular filters spaced evenly in mel
between low_freq and high_freq (20 and 7600 Hz), filter b centred at
mel_low + (b + 1) * (mel_high - mel_low) / (NUM_MEL_BINS + 1).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from shared.features import make_fbank_config


def _band_edges() -> tuple[float, float]:
    """(low_freq, high_freq) in Hz of the recipe's fbank; a high_freq <= 0 is
    an offset from the Nyquist frequency, as in Kaldi."""
    config = make_fbank_config()
    high = config.high_freq
    if high <= 0:
        high += config.sampling_rate / 2
    return float(config.low_freq), float(high)


LOW_FREQ, HIGH_FREQ = _band_edges()  # 20 Hz, 7600 Hz


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Kaldi's mel scale (lhotse's lin2mel)."""
    return 1127.0 * torch.log1p(hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of `hz_to_mel`."""
    return 700.0 * torch.expm1(mel / 1127.0)


def warp_frequency(features: torch.Tensor, alpha: torch.Tensor,
                   low_freq: float = LOW_FREQ, high_freq: float = HIGH_FREQ) -> torch.Tensor:
    """Features with their frequency axis scaled by `alpha` per utterance.

    Args:
      features: (N, T, F) log-mel fbank energies, F bins laid out as the
        recipe's fbank (module docstring) between `low_freq` and `high_freq` Hz.
      alpha: (N,) warp factors, > 0; alpha > 1 moves content up in frequency.

    Returns:
      (N, T, F) tensor of the same dtype and device: bin b of utterance n
      holds the input's energy at mel(hz(centre_b) / alpha[n]), linearly
      interpolated between the two neighbouring input bins, so a tone at
      f Hz comes out at alpha[n] * f Hz.  Utterances with alpha == 1 are
      returned exactly as given.

    The warp is a plain scaling of the whole axis, clamped at the edges: a bin
    whose source lies below the first or above the last bin centre repeats
    that edge bin.  Kaldi's VTLN instead bends the warp piecewise-linearly so
    that the band edges stay put; we keep the plain scaling because it is what
    changing the speaker's vocal-tract length does to the spectrum everywhere
    in the band (a tone at f moves to exactly alpha * f, which the tests check
    against real fbank), and for alpha in about [0.9, 1.1] the clamp touches
    only the top bins (alpha < 1: above ~6.7 kHz) or the lowest one (alpha > 1),
    where speech has little energy.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (N, T, F), got shape {tuple(features.shape)}")
    num_utts, _, num_bins = features.shape
    if alpha.shape != (num_utts,):
        raise ValueError(f"alpha must be ({num_utts},), got shape {tuple(alpha.shape)}")
    if num_bins < 2:
        return features.clone()
    # The positions in float64 on the CPU: they are (N, F) numbers only.
    alpha64 = alpha.detach().to("cpu", torch.float64)
    mel_low = math.log1p(low_freq / 700.0) * 1127.0
    mel_high = math.log1p(high_freq / 700.0) * 1127.0
    delta = (mel_high - mel_low) / (num_bins + 1)
    centres = mel_low + delta * torch.arange(1, num_bins + 1, dtype=torch.float64)
    source_mel = hz_to_mel(mel_to_hz(centres)[None, :] / alpha64[:, None])  # (N, F)
    position = ((source_mel - mel_low) / delta - 1.0).clamp(0.0, num_bins - 1.0)
    lower = position.floor().clamp(max=num_bins - 2)
    weight = (position - lower).to(features.device, features.dtype)  # (N, F)
    lower = lower.long().to(features.device)
    index = lower[:, None, :].expand(features.shape)  # (N, T, F)
    below = features.gather(2, index)
    above = features.gather(2, index + 1)
    warped = below + weight[:, None, :] * (above - below)
    keep = (alpha64 == 1.0).to(features.device)[:, None, None]
    return torch.where(keep, features, warped)


class FrequencyWarp:
    """lhotse input transform: `warp_frequency` with alpha drawn uniformly from
    [1 - warp_range, 1 + warp_range] per utterance, anew on every call (so
    every time a cut is seen it is warped differently).

    Called like lhotse's SpecAugment, on a (N, T, F) batch of features;
    supervision segments are accepted and ignored (the warp is per utterance
    and does not change the number of frames).  alpha is drawn with
    `generator`, or the global torch RNG when None, as SpecAugment does: the
    training script seeds it and the DataLoader seeds each worker's own.
    """

    def __init__(self, warp_range: float, generator: torch.Generator | None = None):
        if not 0.0 <= warp_range < 1.0:
            raise ValueError(f"warp_range must be in [0, 1), got {warp_range}")
        self.warp_range = warp_range
        self.generator = generator

    def draw_alpha(self, num_utts: int) -> torch.Tensor:
        """(num_utts,) float64 warp factors in [1 - warp_range, 1 + warp_range]."""
        uniform = torch.rand(num_utts, generator=self.generator, dtype=torch.float64)
        return 1.0 - self.warp_range + 2.0 * self.warp_range * uniform

    def __call__(self, features: torch.Tensor, supervision_segments: Any = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        return warp_frequency(features, self.draw_alpha(features.shape[0]))

    def __repr__(self) -> str:
        return f"FrequencyWarp(warp_range={self.warp_range})"


__all__ = ["FrequencyWarp", "warp_frequency", "hz_to_mel", "mel_to_hz"]
