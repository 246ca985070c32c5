"""The one definition of the acoustic front end.

Training features (lhotse, stage 3), streaming features (online, in
decode_stream.py) and exported models all use these settings.  They are
lhotse's Fbank defaults with 80 bins, which are also what icefall trains with
and what sherpa-onnx's kaldi-native-fbank front end computes for icefall models
(dither 0, snip_edges False, povey window, high_freq -400, samples in [-1, 1]).
"""

from lhotse import Fbank, FbankConfig

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
FRAME_SHIFT_MS = 10.0
FRAME_LENGTH_MS = 25.0
# Value used to pad features; log(1e-10), the floor of the log-mel energies.
LOG_EPS = -23.025850929940457


def make_fbank_config() -> FbankConfig:
    return FbankConfig(
        sampling_rate=SAMPLE_RATE,
        num_mel_bins=NUM_MEL_BINS,
        frame_shift=FRAME_SHIFT_MS / 1000,
        frame_length=FRAME_LENGTH_MS / 1000,
        dither=0.0,
        snip_edges=False,
        high_freq=-400.0,
    )


def make_fbank_extractor() -> Fbank:
    return Fbank(make_fbank_config())
