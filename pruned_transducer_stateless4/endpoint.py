"""Endpointing for real streaming decoding: cut a long recording into segments.

The three rules are sherpa-onnx's (sherpa-onnx/csrc/endpoint.{h,cc}), with its
defaults and its option names.  Endpointing is checked after each decoded
chunk; a rule fires when all of its conditions hold:

* rule 1: ``trailing_silence >= 2.4 s``, even if nothing was decoded yet;
* rule 2: ``trailing_silence >= 1.2 s`` after something was decoded;
* rule 3: ``utterance_length >= 20 s``, whatever was decoded.

``utterance_length`` is the audio the current segment's encoder frames cover
(40 ms each); ``trailing_silence`` counts the frames since the segment's last
token (all frames of the segment if it has none), i.e. the trailing blank
frames of the best hypothesis, as sherpa-onnx counts them; "something was
decoded" means ``utterance_length > trailing_silence``.

When a rule fires the segment ends there: its tokens become final and the next
segment starts at the current frame.  As in sherpa-onnx the encoder state and
the decoder context carry over (the audio is continuous), only the result
starts afresh; ``modified_beam_search`` keeps just the best hypothesis, so a
final segment cannot change afterwards.  A segment with no token is not a
segment (sherpa-onnx does not advance its segment counter for it either).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pruned_transducer_stateless4.beam_search import HypothesisList
from pruned_transducer_stateless4.decode_stream import DecodeStream
from pruned_transducer_stateless4.streaming_engine import StreamingSetup, decode_one_chunk
from pruned_transducer_stateless4.timestamps import FRAME_SHIFT_SECONDS
from shared.utils import str2bool


@dataclass
class EndpointRule:
    """One rule: fires when its three conditions hold.

    Attributes:
      must_contain_nonsilence: only if something was decoded in the segment.
      min_trailing_silence: seconds of trailing blank frames at least.
      min_utterance_length: seconds of segment at least.
    """

    must_contain_nonsilence: bool
    min_trailing_silence: float
    min_utterance_length: float

    def fires(self, utterance_length: float, trailing_silence: float) -> bool:
        contains_nonsilence = utterance_length > trailing_silence
        return ((contains_nonsilence or not self.must_contain_nonsilence)
                and trailing_silence >= self.min_trailing_silence
                and utterance_length >= self.min_utterance_length)


@dataclass
class EndpointConfig:
    """sherpa-onnx's three rules (its defaults)."""

    rule1: EndpointRule = field(default_factory=lambda: EndpointRule(False, 2.4, 0.0))
    rule2: EndpointRule = field(default_factory=lambda: EndpointRule(True, 1.2, 0.0))
    rule3: EndpointRule = field(default_factory=lambda: EndpointRule(False, 0.0, 20.0))

    def is_endpoint(self, num_frames: int, trailing_blank_frames: int,
                    frame_shift: float = FRAME_SHIFT_SECONDS) -> bool:
        """Whether a segment of num_frames encoder frames whose last
        trailing_blank_frames frames emitted nothing ends here."""
        utterance_length = num_frames * frame_shift
        trailing_silence = trailing_blank_frames * frame_shift
        return any(rule.fires(utterance_length, trailing_silence)
                   for rule in (self.rule1, self.rule2, self.rule3))

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """--enable-endpoint and the rule options, named as sherpa-onnx names them."""
        parser.add_argument("--enable-endpoint", type=str2bool, default=True,
                            help="Cut the audio into segments at endpoints (three rules, "
                            "see endpoint.py).")
        parser.add_argument("--rule1-min-trailing-silence", type=float, default=2.4,
                            help="Endpoint after this many seconds of trailing silence, "
                            "even if nothing was decoded.")
        parser.add_argument("--rule2-min-trailing-silence", type=float, default=1.2,
                            help="Endpoint after this many seconds of trailing silence "
                            "once something was decoded.")
        parser.add_argument("--rule3-min-utterance-length", type=float, default=20.0,
                            help="Endpoint when a segment reaches this many seconds.")

    @classmethod
    def from_args(cls, args) -> EndpointConfig:
        for name in ("rule1_min_trailing_silence", "rule2_min_trailing_silence",
                     "rule3_min_utterance_length"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        return cls(EndpointRule(False, args.rule1_min_trailing_silence, 0.0),
                   EndpointRule(True, args.rule2_min_trailing_silence, 0.0),
                   EndpointRule(False, 0.0, args.rule3_min_utterance_length))


@dataclass
class Segment:
    """A piece of the recording between two endpoints.

    Attributes:
      index: 0, 1, ... among the segments with tokens.
      tokens: token ids.
      frames: the encoder frame of each token (absolute, from the stream start).
      start_time, end_time: seconds from the start of the stream; the segment
        covers encoder frames [start_time / 0.04, end_time / 0.04).
      is_final: True once an endpoint or the end of the audio closed it.
    """

    index: int
    tokens: list[int]
    frames: list[int]
    start_time: float
    end_time: float
    is_final: bool


class SegmentTracker:
    """Splits the result of one DecodeStream into segments at endpoints.

    Call :meth:`update` after every chunk of the stream was decoded; it
    returns the segment that an endpoint just closed, if any.  The search
    state stays in the stream (decode_stream.py); this class only remembers
    where the current segment started.
    """

    def __init__(self, stream: DecodeStream, config: EndpointConfig | None,
                 frame_shift: float = FRAME_SHIFT_SECONDS) -> None:
        if config is not None and stream.search_state == "lattice":
            raise ValueError(f"endpointing does not support {stream.decoding_method}: it "
                             "needs a greedy hypothesis or a beam")
        self.stream = stream
        self.config = config
        self.frame_shift = frame_shift
        self.start_frame = 0  # encoder frame where the current segment starts
        self.start_token = 0  # index of its first token in the stream's result
        self.num_segments = 0  # closed segments with tokens

    def current(self) -> Segment:
        """The segment being decoded (its partial result)."""
        tokens = self.stream.partial_tokens()[self.start_token:]
        frames = self.stream.token_frames()[self.start_token:]
        return Segment(self.num_segments, list(tokens), list(frames),
                       round(self.start_frame * self.frame_shift, 4),
                       round(self.stream.processed_lens * self.frame_shift, 4),
                       is_final=self.stream.done)

    def update(self) -> Segment | None:
        """Checks the rules on the frames decoded so far; on an endpoint
        closes the current segment and returns it (also one without tokens,
        which does not count as a segment)."""
        if self.config is None or self.stream.done:
            return None
        num_frames = self.stream.processed_lens - self.start_frame
        if num_frames <= 0:
            return None
        segment = self.current()
        last_emitting = segment.frames[-1] + 1 if segment.frames else self.start_frame
        trailing = self.stream.processed_lens - max(last_emitting, self.start_frame)
        if not self.config.is_endpoint(num_frames, trailing, self.frame_shift):
            return None
        segment.is_final = True
        self._start_next_segment(segment)
        return segment

    def _start_next_segment(self, closed: Segment) -> None:
        stream = self.stream
        if stream.search_state == "beam":
            best = stream.hyps.get_most_probable(length_norm=True)
            frames = stream.hyp_timestamps.get(tuple(best.ys), [])
            stream.hyps = HypothesisList([best])
            stream.hyp_timestamps = {tuple(best.ys): list(frames)}
        self.start_token += len(closed.tokens)
        self.start_frame = stream.processed_lens
        if closed.tokens:
            self.num_segments += 1


def decode_with_endpoints(
    setup: StreamingSetup,
    samples: np.ndarray,
    config: EndpointConfig,
    piece_samples: int = 1600,
    tail_padding_samples: int = 0,
    on_segment: Callable[[Segment], None] | None = None,
) -> list[Segment]:
    """Decodes one long recording as a stream and returns its segments with
    tokens (the last one closed by the end of the audio).

    Args:
      setup: model, chunk size, left context and search of the stream.
      samples: (S,) float32 at 16 kHz.
      config: the endpoint rules.
      piece_samples: audio is fed in pieces of this many samples, each
        followed by the decoding of every chunk it completes.
      tail_padding_samples: zeros fed after the audio (flushes the last
        chunk as a client would).
      on_segment: called with every segment as it closes.
    """
    stream = setup.new_stream("recording")
    tracker = SegmentTracker(stream, config)
    segments: list[Segment] = []

    def closed(segment: Segment) -> None:
        if segment.tokens:
            segments.append(segment)
            if on_segment is not None:
                on_segment(segment)

    def decode_ready() -> None:
        while stream.chunk_ready():
            decode_one_chunk(setup, [stream])
            segment = tracker.update()
            if segment is not None:
                closed(segment)

    samples = np.asarray(samples, dtype=np.float32)
    for start in range(0, samples.size, piece_samples):
        stream.accept_waveform(samples[start : start + piece_samples])
        decode_ready()
    if tail_padding_samples:
        stream.accept_waveform(np.zeros(tail_padding_samples, dtype=np.float32))
    stream.input_finished()
    decode_ready()
    closed(tracker.current())
    return segments
