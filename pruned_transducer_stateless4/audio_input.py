"""Audio input of the decoding scripts: sound files, cut audio, online fbank.

Every function gives mono float32 samples in [-1, 1] at 16 kHz, the rate the
model was trained at:

* read_audio: a sound file at any rate and channel count through soundfile,
  mixed down and resampled here (resample, a windowed-sinc polyphase filter);
  pretrained.py and jit_pretrained.py read files with it, and errors are one
  line (AudioError);
* load_recording: a sound file through lhotse (any format lhotse reads), as
  streaming_demo.py reads it;
* load_cut_audio: the audio of a lhotse cut, as the streaming scripts read
  test sets.

make_online_fbank gives kaldi-native-fbank's online front end with the
training settings.

This module imports only numpy at load time (soundfile, kaldi_native_fbank
when called), so that jit_pretrained.py runs greedy search with torch and the
exported cpu_jit.pt alone: shared/features.py holds the same constants but
imports lhotse.
"""

import math
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
# The training front end (shared/features.py: lhotse Fbank, 80 bins, 25/10 ms,
# povey window, dither 0, snip_edges False, high_freq -400, low_freq 20,
# samples in [-1, 1]); kaldi-native-fbank with these settings agrees within
# 3e-4 (tests/test_export.py checks it).
NUM_MEL_BINS = 80
LOW_FREQ = 20.0
HIGH_FREQ = -400.0
# Feature value of the padding frames of the last chunk (log(1e-10)).
LOG_EPS = -23.025850929940457
# The encoder needs 7 feature frames for its first output frame; with
# snip_edges False a file of n samples has (n + 80) // 160 frames.
MIN_SAMPLES = 7 * 160 - 80


class AudioError(Exception):
    """A sound file that cannot be transcribed; the message is one line."""


# ---------------------------------------------------------------- audio ----
def _kaiser(x: np.ndarray, beta: float) -> np.ndarray:
    """Kaiser window at positions x in [-1, 1]."""
    return np.i0(beta * np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))) / np.i0(beta)


def resample(
    samples: np.ndarray, orig_rate: int, new_rate: int, zero_crossings: int = 24,
    rolloff: float = 0.99, beta: float = 8.6,
) -> np.ndarray:
    """Band-limited resampling with a Kaiser-windowed sinc, polyphase.

    With up/down = new_rate/orig_rate in lowest terms, output sample m sits at
    input position m * down / up, whose fractional part is one of `up`
    phases; each phase has its own precomputed filter of 2K taps.  The
    low-pass cut-off is rolloff * min(orig_rate, new_rate) / 2 (anti-aliasing
    when downsampling, anti-imaging when upsampling).

    Args:
      samples: 1-D float array.
      zero_crossings: filter half-width in zero crossings of the sinc.
    Returns:
      ceil(len(samples) * new_rate / orig_rate) float32 samples.
    """
    if orig_rate == new_rate:
        return samples.astype(np.float32, copy=False)
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    # Cut-off in cycles per input sample.
    cutoff = rolloff * 0.5 * min(orig_rate, new_rate) / orig_rate
    half_width = zero_crossings / (2.0 * cutoff)  # in input samples
    num_taps = int(math.ceil(half_width))
    offsets = np.arange(-num_taps + 1, num_taps + 1)  # (2K,)
    phases = np.arange(up) / up  # fractional input positions
    t = offsets[None, :] - phases[:, None]  # (up, 2K) distances to the taps
    filters = 2.0 * cutoff * np.sinc(2.0 * cutoff * t) * _kaiser(t / half_width, beta)

    num_out = -(-len(samples) * up // down)
    padded = np.concatenate([np.zeros(num_taps), samples.astype(np.float64),
                             np.zeros(num_taps + 1)])
    out = np.empty(num_out, dtype=np.float32)
    block = 8192
    for start in range(0, num_out, block):
        m = np.arange(start, min(start + block, num_out))
        base = (m * down) // up
        phase = (m * down) % up
        taps = padded[(base + num_taps)[:, None] + offsets[None, :]]
        out[start : start + len(m)] = np.einsum("mk,mk->m", taps, filters[phase])
    return out


def read_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, list[str]]:
    """Reads a sound file as mono float32 in [-1, 1] at `sample_rate`.

    Returns:
      (samples, notes): notes say what was done to the audio (mixing down,
      resampling), for the log.
    Raises:
      AudioError: missing, empty, undecodable, non-finite or too short.
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError("no such file")
    if path.is_dir():
        raise AudioError("is a directory")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AudioError(f"cannot decode audio ({message})") from error
    if data.shape[0] == 0:
        raise AudioError("no audio samples")
    if not np.isfinite(data).all():
        raise AudioError("non-finite samples")
    notes = []
    if data.shape[1] > 1:
        notes.append(f"mixed {data.shape[1]} channels down to mono")
    samples = data.mean(axis=1)
    if rate != sample_rate:
        notes.append(f"resampled from {rate} Hz to {sample_rate} Hz")
        samples = resample(samples, rate, sample_rate)
    if len(samples) < MIN_SAMPLES:
        raise AudioError(f"too short ({1000 * len(samples) / sample_rate:.0f} ms; at least "
                         f"{1000 * MIN_SAMPLES / sample_rate:.0f} ms needed)")
    return samples.astype(np.float32, copy=False), notes


def make_online_fbank():
    """kaldi-native-fbank's online fbank with the training settings."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.frame_length_ms = 25.0
    opts.mel_opts.num_bins = NUM_MEL_BINS
    opts.mel_opts.low_freq = LOW_FREQ
    opts.mel_opts.high_freq = HIGH_FREQ
    return knf.OnlineFbank(opts)


def load_recording(path: Path) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at 16 kHz of a sound file, read and
    resampled by lhotse (channels averaged)."""
    from lhotse import Recording

    if not path.is_file():
        raise FileNotFoundError(f"sound file {path} not found")
    recording = Recording.from_file(path)
    if recording.sampling_rate != SAMPLE_RATE:
        recording = recording.resample(SAMPLE_RATE)
    audio = recording.load_audio()
    return np.ascontiguousarray(audio.mean(axis=0), dtype=np.float32)


def load_cut_audio(cut) -> np.ndarray:
    """Mono float32 samples of a lhotse cut at 16 kHz (its first channel)."""
    if cut.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    audio = cut.load_audio()
    return np.ascontiguousarray(audio[0] if audio.ndim == 2 else audio, dtype=np.float32)
