"""The state of one utterance in real streaming decoding.

A :class:`DecodeStream` is fed raw audio in pieces of any size and owns
everything that utterance needs between two encoder calls:

* an online fbank front end (:class:`OnlineFeatures`, kaldi-native-fbank's
  ``OnlineFbank`` with the training settings of ``shared/features.py``);
* the encoder caches (``attn_cache``, ``cnn_cache`` of batch size 1) and
  ``processed_lens``, the encoder frames output so far;
* the search state of the decoding method (its ``stream_state`` in
  decoding_methods.py): "greedy", the greedy hypothesis (whose last
  ``context_size`` tokens are the decoder context); "beam", the beam of
  ``modified_beam_search`` (a ``HypothesisList``); or "lattice", the
  ``FastBeamSearchStream`` of ``fast_beam_search``;
* the arrival time of every feature frame and the partial result after every
  chunk, from which the latency of each token is computed
  (:func:`token_latencies`).

Chunking: icefall's protocol (see conformer.py), which sherpa-onnx runs too:
a chunk of ``c`` encoder frames needs ``4c + PAD_LENGTH`` feature frames
(``PAD_LENGTH = 11``: the encoder cuts one subsampled frame off each side of
the window) and then advances by ``4c``.  A stream has a chunk ready when
``4c + PAD_LENGTH`` unconsumed frames are ready.  When the input finishes,
``PAD_LENGTH`` frames of ``LOG_EPS`` are appended as real frames (icefall's
``DecodeStream.set_features``), and chunks are taken, the last one padded
with ``LOG_EPS`` beyond ``x_lens``, until fewer than ``PAD_LENGTH + 1``
frames are left.  Window k yields the encoder frames the whole-utterance
subsampling calls 16k + 1 .. 16k + 16 (for c = 16), so real streaming is
close to, but not exactly, the simulated streaming of decode.py (the
chunk boundaries are one frame apart); tests/test_icefall_compat.py shows
that with the window edges aligned the encoder outputs are equal.

Batches: :func:`stack_streams` gathers the state of several streams into
batched tensors and :func:`unstack_streams` writes a batch back into its
streams; the encoder runs on the stacked states of all streams that have a
chunk ready, whatever their positions in their utterances.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import kaldi_native_fbank as knf
import numpy as np
import torch

from pruned_transducer_stateless4.beam_search import Hypothesis, HypothesisList
from pruned_transducer_stateless4.conformer import Conformer
from pruned_transducer_stateless4.decoding_methods import get_method, methods
from shared.features import (
    FRAME_LENGTH_MS,
    FRAME_SHIFT_MS,
    LOG_EPS,
    NUM_MEL_BINS,
    SAMPLE_RATE,
)
from shared.fsa_search import FastBeamSearchStream

SUBSAMPLING_FACTOR = 4
PAD_LENGTH = Conformer.streaming_pad_length(0, SUBSAMPLING_FACTOR)
STREAMING_DECODING_METHODS = tuple(methods(streaming=True))


def make_online_fbank_options() -> knf.FbankOptions:
    """kaldi-native-fbank options equal to lhotse's ``Fbank`` of
    ``shared.features.make_fbank_config()``.

    Samples must be floats in [-1, 1] (as lhotse loads them, not int16
    values).  The other lhotse defaults (povey window, pre-emphasis 0.97, DC
    offset removal, power spectrum, FFT size rounded to 512, low_freq 20 Hz, log
    floor FLT_EPSILON, no energy) are kaldi-native-fbank's defaults too; they
    are set explicitly so that a change of either library's defaults cannot
    change the features silently.
    """
    opts = knf.FbankOptions()
    frame = opts.frame_opts
    frame.samp_freq = float(SAMPLE_RATE)
    frame.frame_shift_ms = FRAME_SHIFT_MS
    frame.frame_length_ms = FRAME_LENGTH_MS
    frame.dither = 0.0
    frame.preemph_coeff = 0.97
    frame.remove_dc_offset = True
    frame.window_type = "povey"
    frame.round_to_power_of_two = True
    frame.snip_edges = False
    mel = opts.mel_opts
    mel.num_bins = NUM_MEL_BINS
    mel.low_freq = 20.0
    mel.high_freq = -400.0
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    return opts


class OnlineFeatures:
    """Online 80-dim log-mel fbank of one utterance.

    Frame ``i`` (10 ms shift, 25 ms window, ``snip_edges=False``) covers
    samples ``160 i - 120 .. 160 i + 280``, so it is ready once that many
    samples arrived; the frames near the end of the audio mirror samples past
    the end and are ready only after :meth:`input_finished`.  Frame indices
    are absolute; :meth:`discard_before` frees frames no longer needed.
    """

    def __init__(self) -> None:
        self._fbank = knf.OnlineFbank(make_online_fbank_options())
        self._num_popped = 0
        self.num_samples = 0
        self.finished = False

    def accept_waveform(self, samples: np.ndarray | torch.Tensor) -> None:
        """Appends samples (1-D, floats in [-1, 1], 16 kHz)."""
        assert not self.finished, "accept_waveform() after input_finished()"
        if isinstance(samples, torch.Tensor):
            samples = samples.numpy()
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return
        self._fbank.accept_waveform(SAMPLE_RATE, samples.tolist())
        self.num_samples += samples.size

    def input_finished(self) -> None:
        """No more audio: the last frames become ready."""
        if not self.finished:
            self._fbank.input_finished()
            self.finished = True

    @property
    def num_frames_ready(self) -> int:
        return self._fbank.num_frames_ready

    def get_frames(self, start: int, end: int) -> torch.Tensor:
        """(end - start, 80) float32 frames; start >= the discarded frames."""
        assert self._num_popped <= start <= end <= self.num_frames_ready, (start, end)
        if end == start:
            # Host-side like every feature frame (decode_one_chunk moves them).
            return torch.zeros(0, NUM_MEL_BINS, device="cpu")
        rows = [self._fbank.get_frame(i) for i in range(start, end)]
        return torch.from_numpy(np.asarray(rows, dtype=np.float32))

    def discard_before(self, frame: int) -> None:
        """Frees the frames before `frame`."""
        frame = min(frame, self.num_frames_ready)
        if frame > self._num_popped:
            self._fbank.pop(frame - self._num_popped)
            self._num_popped = frame


def num_encoder_frames(num_feature_frames: int) -> int:
    """Encoder frames of an utterance of that many feature frames."""
    return max(((num_feature_frames - 1) // 2 - 1) // 2, 0)


def flush_padding_seconds(chunk_size: int) -> float:
    """Silence after the speech that makes a runtime that runs only full encoder
    windows (sherpa-onnx) decode all of it.

    Such a runtime runs a window of 4 * chunk_size + PAD_LENGTH feature frames only when
    one more frame is ready, and the window advances by 4 * chunk_size frames,
    so a speech frame that starts a window is decoded only once
    4 * chunk_size + PAD_LENGTH frames follow it; one frame more covers the
    rounding of the frame count of the padded audio.  0.76 s for chunks of 16.
    """
    return (SUBSAMPLING_FACTOR * chunk_size + PAD_LENGTH + 1) * FRAME_SHIFT_MS / 1000


def with_tail_padding(samples: np.ndarray, seconds: float) -> np.ndarray:
    """samples (S,) at 16 kHz followed by `seconds` of zeros, as float32 (S + P,)."""
    tail = np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)
    return np.concatenate([np.asarray(samples, dtype=np.float32), tail])


@dataclass
class ChunkRecord:
    """One processed chunk of a stream.

    Attributes:
      arrival: time at which the audio that completed the chunk had arrived
        (for the last chunk: the end of the audio, i.e. input_finished()).
      emission: time at which the chunk's partial result was available.
      tokens: the partial result after the chunk.
    """

    arrival: float
    emission: float
    tokens: tuple[int, ...]


class DecodeStream:
    """One utterance being decoded chunk by chunk.

    Args:
      initial_states: ``encoder.get_init_state(left_context)``, i.e.
        [attn_cache (L, left_context, d), cnn_cache (L, kernel - 1, d)].
      chunk_size: encoder frames per chunk (``--decode-chunk-size``).
      left_context: encoder frames of cached left context.
      decoding_method: a method with a streaming search
        (``STREAMING_DECODING_METHODS``).
      context_size: the decoder's context size.
      blank_id: the blank token.
      fast_beam_search_graph, ngram_lm_scale: for fast_beam_search, the
        decoding graph (``trivial_graph``) and its scale.
      utt_id: a name for the stream (e.g. the cut id).
    """

    def __init__(
        self,
        initial_states: list[torch.Tensor],
        chunk_size: int,
        left_context: int,
        decoding_method: str = "greedy_search",
        context_size: int = 2,
        blank_id: int = 0,
        fast_beam_search_graph=None,
        ngram_lm_scale: float = 1.0,
        utt_id: str = "",
    ) -> None:
        if decoding_method not in STREAMING_DECODING_METHODS:
            raise ValueError(f"unknown decoding method {decoding_method}")
        # "greedy", "beam" or "lattice": which of the states below the search uses.
        self.search_state = get_method(decoding_method).stream_state
        assert chunk_size > 0 and left_context >= 0, (chunk_size, left_context)
        assert initial_states[0].size(1) == left_context, initial_states[0].shape
        self.utt_id = utt_id
        self.chunk_size = chunk_size
        self.left_context = left_context
        self.decoding_method = decoding_method
        self.context_size = context_size
        self.blank_id = blank_id

        self.features = OnlineFeatures()
        self.states = [s.clone() for s in initial_states]
        # Encoder frames output so far (what streaming_forward's
        # processed_lens holds), and feature frames consumed (4 per frame).
        self.processed_lens = 0
        self.num_processed_frames = 0
        self._done = False

        # Search state.
        # greedy: context_size blanks + tokens; timestamps: encoder frame of
        # each token.
        self.hyp: list[int] = [blank_id] * context_size
        self.timestamps: list[int] = []
        # modified_beam_search: the beam and the frames of each hypothesis'
        # tokens (by ys), kept for the hypotheses in the beam.
        self.hyps = HypothesisList([Hypothesis([blank_id] * context_size, 0.0)])
        self.hyp_timestamps: dict[tuple[int, ...], list[int]] = {tuple(self.hyp): []}
        self.fast_stream = None
        if self.search_state == "lattice":
            assert fast_beam_search_graph is not None, f"{decoding_method} needs a graph"
            self.fast_stream = FastBeamSearchStream(
                fast_beam_search_graph, context_size, blank_id, ngram_lm_scale)

        # Latency bookkeeping.
        self.frame_arrival: list[float] = []  # arrival time of each feature frame
        self.finish_time: float | None = None  # when input_finished() was called
        self.chunk_arrival: float | None = None  # of the chunk being decoded
        self.chunks: list[ChunkRecord] = []

    # ------------------------------------------------------------- input --
    def accept_waveform(self, samples: np.ndarray | torch.Tensor,
                        arrival_time: float | None = None) -> None:
        """Feeds samples (floats in [-1, 1], 16 kHz) that arrived at
        `arrival_time` (default: now, time.monotonic())."""
        if arrival_time is None:
            arrival_time = time.monotonic()
        before = self.features.num_frames_ready
        self.features.accept_waveform(samples)
        self.frame_arrival.extend([arrival_time] * (self.features.num_frames_ready - before))

    def input_finished(self, arrival_time: float | None = None) -> None:
        """The end of the audio arrived at `arrival_time` (default: now)."""
        if self.features.finished:
            return
        if arrival_time is None:
            arrival_time = time.monotonic()
        before = self.features.num_frames_ready
        self.features.input_finished()
        self.finish_time = arrival_time
        self.frame_arrival.extend([arrival_time] * (self.features.num_frames_ready - before))
        self._update_done()

    @property
    def num_frames(self) -> int:
        """Feature frames of the stream so far, with the final LOG_EPS padding
        (PAD_LENGTH frames, counted as real) once the input finished."""
        return self.features.num_frames_ready + (PAD_LENGTH if self.features.finished else 0)

    # ------------------------------------------------------------ chunks --
    @property
    def chunk_length(self) -> int:
        """Feature frames per chunk: 4c + PAD_LENGTH."""
        return self.chunk_size * SUBSAMPLING_FACTOR + PAD_LENGTH

    @property
    def input_is_finished(self) -> bool:
        return self.features.finished

    @property
    def num_samples(self) -> int:
        return self.features.num_samples

    @property
    def done(self) -> bool:
        """True when input finished and every chunk was decoded."""
        return self._done

    def _update_done(self) -> None:
        self._done = (self.features.finished
                      and self.num_frames - self.num_processed_frames <= PAD_LENGTH)

    def chunk_ready(self) -> bool:
        """Whether :meth:`get_feature_frames` can give the next chunk."""
        if self._done:
            return False
        available = self.features.num_frames_ready - self.num_processed_frames
        return available >= self.chunk_length or self.features.finished

    def get_feature_frames(self) -> tuple[torch.Tensor, int]:
        """The next chunk's features and consumes them (advancing by 4c).

        Returns:
          (features (4c + PAD_LENGTH, 80), number of real frames, the final
          padding included); frames beyond hold LOG_EPS too.
        """
        assert self.chunk_ready(), "no chunk ready"
        start = self.num_processed_frames
        end = min(start + self.chunk_length, self.features.num_frames_ready)
        frames = self.features.get_frames(start, end)
        num_real = min(start + self.chunk_length, self.num_frames) - start
        if end - start < self.chunk_length:
            pad = torch.full((self.chunk_length - (end - start), NUM_MEL_BINS), LOG_EPS,
                             device="cpu")  # host-side, like the frames it pads
            frames = torch.cat([frames, pad])
        # A full chunk is complete when its last frame arrived; a partial
        # (last) one only when the end of the audio did.
        self.chunk_arrival = self.frame_arrival[end - 1] if end > 0 else self.finish_time
        if end - start < self.chunk_length and self.finish_time is not None:
            self.chunk_arrival = max(self.chunk_arrival, self.finish_time)
        self.num_processed_frames += self.chunk_size * SUBSAMPLING_FACTOR
        self.features.discard_before(self.num_processed_frames)
        return frames, num_real

    def record_partial(self, emission_time: float | None = None) -> None:
        """Stores the partial result after a chunk, emitted at
        `emission_time` (default: now)."""
        if emission_time is None:
            emission_time = time.monotonic()
        arrival = self.chunk_arrival if self.chunk_arrival is not None else emission_time
        self.chunks.append(ChunkRecord(arrival, emission_time, tuple(self.partial_tokens())))

    # ------------------------------------------------------------ results --
    def partial_tokens(self) -> list[int]:
        """The best token sequence so far."""
        if self.search_state == "greedy":
            return self.hyp[self.context_size:]
        if self.search_state == "beam":
            return self.hyps.get_most_probable(length_norm=True).ys[self.context_size:]
        assert self.fast_stream is not None
        if self.fast_stream.num_frames == 0:
            return []
        return self.fast_stream.best_path(final=self._done).tokens

    def token_frames(self) -> list[int]:
        """The encoder frame at which each token of :meth:`partial_tokens`
        was emitted."""
        if self.search_state == "greedy":
            return list(self.timestamps)
        if self.search_state == "beam":
            best = self.hyps.get_most_probable(length_norm=True)
            return list(self.hyp_timestamps.get(tuple(best.ys), []))
        assert self.fast_stream is not None
        if self.fast_stream.num_frames == 0:
            return []
        return self.fast_stream.best_path(final=self._done).timestamps

    def feature_frame_arrival(self, encoder_frame: int) -> float:
        """Arrival time of the last audio that encoder frame depends on
        (feature frames 4t .. 4t + 6)."""
        index = min(SUBSAMPLING_FACTOR * encoder_frame + PAD_LENGTH - 1,
                    len(self.frame_arrival) - 1)
        return self.frame_arrival[index]


def stable_chunk_of_tokens(partials: list[tuple[int, ...]], final: tuple[int, ...]) -> list[int]:
    """For each token of `final`, the index of the first partial result from
    which on every partial result starts with final[: i + 1].

    The last partial result must equal `final`.  For greedy search partial
    results only grow, so this is the chunk whose search emitted the token;
    for the beam methods, a token counts as emitted once the best hypothesis
    holds it for good.
    """
    assert partials and tuple(partials[-1]) == tuple(final), "last partial must be final"
    common = []
    for partial in partials:
        n = 0
        for a, b in zip(partial, final):
            if a != b:
                break
            n += 1
        common.append(n)
    result = [0] * len(final)
    suffix_min = len(final)
    # Walk backwards: tokens i < suffix_min are stable from chunk k on.
    for k in range(len(partials) - 1, -1, -1):
        suffix_min = min(suffix_min, common[k])
        for i in range(suffix_min):
            result[i] = k
    return result


def token_latencies(stream: DecodeStream) -> tuple[list[float], list[float]]:
    """Latencies of the final result's tokens.

    Returns:
      (chunk latencies, frame latencies) in seconds, one per token:
      * chunk latency: emission time of the chunk from which the token is
        in every partial result (see `stable_chunk_of_tokens`) minus the
        arrival time of the audio that completed that chunk;
      * frame latency: the same emission time minus the arrival time of
        the last audio the token's own encoder frame depends on (so it
        includes waiting for the rest of the chunk).
    """
    if not stream.chunks:
        return [], []
    final = stream.chunks[-1].tokens
    chunk_of = stable_chunk_of_tokens([c.tokens for c in stream.chunks], final)
    frames = stream.token_frames()
    chunk_lat, frame_lat = [], []
    for i, k in enumerate(chunk_of):
        record = stream.chunks[k]
        chunk_lat.append(record.emission - record.arrival)
        if i < len(frames):
            frame_lat.append(record.emission - stream.feature_frame_arrival(frames[i]))
    return chunk_lat, frame_lat


# ------------------------------------------------------------- batching --


@dataclass
class StreamBatch:
    """The stacked state of a batch of streams.

    Attributes:
      states: [attn_cache (L, left_context, N, d), cnn_cache (L, kernel - 1,
        N, d)].
      processed_lens: (N,) int64.
      contexts: (N, context_size) int64, the decoder context of greedy search.
      hyps: greedy hypotheses (context blanks + tokens) and their frames.
      beams: beams of modified_beam_search and their token frames.
      fast_streams: FastBeamSearchStream objects (shared, not copied).
    """

    states: list[torch.Tensor]
    processed_lens: torch.Tensor
    contexts: torch.Tensor
    hyps: list[list[int]]
    timestamps: list[list[int]]
    beams: list[HypothesisList]
    beam_timestamps: list[dict[tuple[int, ...], list[int]]]
    fast_streams: list


def stack_streams(streams: list[DecodeStream], device: torch.device | str = "cpu") -> StreamBatch:
    """Gathers the encoder and search state of `streams` (in order)."""
    assert streams, "no streams"
    left_contexts = {s.left_context for s in streams}
    assert len(left_contexts) == 1, f"streams differ in left context: {left_contexts}"
    states = [t.to(device) for t in Conformer.stack_states([s.states for s in streams])]
    context_size = streams[0].context_size
    return StreamBatch(
        states=states,
        processed_lens=torch.tensor([s.processed_lens for s in streams], dtype=torch.int64,
                                    device=device),
        contexts=torch.tensor([s.hyp[-context_size:] for s in streams], dtype=torch.int64,
                              device=device),
        hyps=[list(s.hyp) for s in streams],
        timestamps=[list(s.timestamps) for s in streams],
        beams=[s.hyps for s in streams],
        beam_timestamps=[s.hyp_timestamps for s in streams],
        fast_streams=[s.fast_stream for s in streams],
    )


def unstack_streams(batch: StreamBatch, streams: list[DecodeStream]) -> None:
    """Writes a batch's state back into its streams (the inverse of
    `stack_streams`), processed_lens included; after a chunk the caller has
    advanced batch.processed_lens by the encoder frames output."""
    assert batch.states[0].size(2) == len(streams), (batch.states[0].shape, len(streams))
    per_stream = Conformer.unstack_states(batch.states)
    lens = batch.processed_lens.tolist()
    for n, stream in enumerate(streams):
        # Own copies (views would keep the whole batch tensor alive), left on
        # the model's device: no round trip through the CPU per chunk.
        stream.states = [t.clone() for t in per_stream[n]]
        stream.processed_lens = int(lens[n])
        stream.hyp = list(batch.hyps[n])
        stream.timestamps = list(batch.timestamps[n])
        stream.hyps = batch.beams[n]
        stream.hyp_timestamps = batch.beam_timestamps[n]
        stream.fast_stream = batch.fast_streams[n]
        stream._update_done()
