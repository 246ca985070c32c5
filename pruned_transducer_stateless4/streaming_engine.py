"""The streaming engine: many utterances decoded chunk by chunk, as one batch.

A `StreamingSetup` holds what every stream of a run shares (model, chunk
size, left context, search); `setup.new_stream()` gives a `DecodeStream`
(decode_stream.py: online fbank, encoder states, search state).
`decode_one_chunk` runs the encoder (`Conformer.streaming_forward`) and the
search (streaming_beam_search.py) on the next chunk of a list of streams as
one batch; streaming_decode.py, streaming_demo.py, endpoint.py, the server
and the benchmarks drive it.

`decode_dataset` decodes a cut set on a simulated clock, up to
num_decode_streams streams at a time, with audio arriving at real-time pace;
`summarize` gives its RTF and latency statistics (streaming_decode.py's
docstring defines them).
"""

import argparse
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch

from pruned_transducer_stateless4.audio_input import load_cut_audio
from pruned_transducer_stateless4.context_graph import context_graph_of
from pruned_transducer_stateless4.decode_stream import (
    DecodeStream,
    stack_streams,
    token_latencies,
    unstack_streams,
)
from pruned_transducer_stateless4.decoding_methods import (
    add_search_arguments,
    get_method,
    methods,
)
from pruned_transducer_stateless4.model import Transducer
from pruned_transducer_stateless4.model_loading import load_model
from pruned_transducer_stateless4.streaming_beam_search import (
    StreamingSearchConfig,
    search_chunk,
)
from pruned_transducer_stateless4.token_table import load_bpe_model
from shared.checkpoint import add_checkpoint_arguments as add_checkpoint_selection_arguments
from shared.features import SAMPLE_RATE
from shared.fsa_search import FastBeamSearchConfig, trivial_graph
from shared.utils import AttributeDict, RecipeError, add_device_argument, get_device


# ---------------------------------------------------------------- options ----
def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint options every script shares (shared.checkpoint),
    --exp-dir, --bpe-model."""
    add_checkpoint_selection_arguments(parser)
    parser.add_argument("--exp-dir", type=Path, default=Path("exp/pruned_transducer_stateless4"),
                        help="Where the checkpoints are; results go to EXP_DIR/streaming/METHOD.")
    parser.add_argument("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
                        help="Sentencepiece model of prepare.sh stage 4.")


def add_streaming_arguments(parser: argparse.ArgumentParser, num_threads: bool = True) -> None:
    """The methods with a streaming search and their options
    (decoding_methods.py), chunk size, left and right context, --num-threads
    (unless `num_threads` is false), --device."""
    add_search_arguments(parser, methods(streaming=True))
    parser.add_argument("--decode-chunk-size", type=int, default=16,
                        help="Chunk size in encoder frames (after subsampling, 40 ms each).")
    parser.add_argument("--left-context", type=int, default=64,
                        help="Cached encoder frames of left context of the attention.")
    parser.add_argument("--right-context", type=int, default=0,
                        help="Encoder frames of right context; this encoder supports only 0.")
    if num_threads:
        parser.add_argument("--num-threads", "--threads", dest="num_threads", type=int,
                            default=0, help="torch.set_num_threads on CPU; 0 keeps torch's "
                            "default.")
    add_device_argument(parser)


def check_streaming_options(params: Any) -> None:
    if params.right_context != 0:
        raise RecipeError(f"--right-context {params.right_context} is not supported by "
                          "this decoder's streams (the encoder's streaming_forward has it); use 0")
    if params.decode_chunk_size < 1:
        raise RecipeError(f"--decode-chunk-size must be >= 1, got {params.decode_chunk_size}")
    if params.left_context < 0:
        raise RecipeError(f"--left-context must be >= 0, got {params.left_context}")
    if params.get("num_decode_streams", 1) < 1:
        raise RecipeError(f"--num-decode-streams must be >= 1, got {params.num_decode_streams}")


def require_streaming_model(model: Transducer) -> None:
    if not model.encoder.causal:
        raise RecipeError("the model has non-causal convolution; real streaming needs one "
                          "trained with --causal-convolution true (for an icefall "
                          "pretrained.pt: pass --causal-convolution true if it was)")


def make_search_config(params: Any) -> StreamingSearchConfig:
    return StreamingSearchConfig(
        decoding_method=params.decoding_method,
        max_sym_per_frame=params.max_sym_per_frame,
        beam_size=params.beam_size,
        fast=FastBeamSearchConfig(beam=params.beam, max_states=params.max_states,
                                  max_contexts=params.max_contexts),
        context_graph=params.get("context_graph"),
    )


def load_tokenizer_and_model(params: AttributeDict) -> tuple[spm.SentencePieceProcessor,
                                                               "StreamingSetup"]:
    """BPE model, model and StreamingSetup from parsed options (with
    add_checkpoint_arguments, add_streaming_arguments, add_model_arguments)."""
    check_streaming_options(params)
    device = get_device(requested=params.get("device"))
    logging.info(f"streaming on {device}")
    if params.num_threads > 0:
        torch.set_num_threads(params.num_threads)
    sp = load_bpe_model(params.bpe_model)
    params.blank_id = sp.piece_to_id("<blk>")
    params.vocab_size = sp.get_piece_size()
    params.context_graph = context_graph_of(params, sp)
    model = load_model(params, params.get("explicit_options", frozenset()), device)
    require_streaming_model(model)
    setup = StreamingSetup(model, params.decode_chunk_size, params.left_context,
                           make_search_config(params), device)
    return sp, setup


# ---------------------------------------------------------------- engine ----
@dataclass
class StreamingSetup:
    """What every stream of a run shares."""

    model: Transducer
    chunk_size: int
    left_context: int
    search: StreamingSearchConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    graph: Any = None  # fast_beam_search's trivial graph, made on demand
    _initial_states: list[torch.Tensor] | None = None

    def new_stream(self, utt_id: str = "") -> DecodeStream:
        if self._initial_states is None:
            self._initial_states = self.model.encoder.get_init_state(self.left_context,
                                                                     device=self.device)
        if get_method(self.search.decoding_method).graph == "trivial" and self.graph is None:
            self.graph = trivial_graph(self.model.joiner.output_linear.out_features,
                                       self.device)
        return DecodeStream(
            self._initial_states, self.chunk_size, self.left_context,
            decoding_method=self.search.decoding_method,
            context_size=self.model.decoder.context_size,
            blank_id=self.model.decoder.blank_id,
            fast_beam_search_graph=self.graph,
            utt_id=utt_id,
        )


@torch.no_grad()
def decode_one_chunk(setup: StreamingSetup, streams: list[DecodeStream]) -> None:
    """Runs the encoder and the search on the next chunk of every stream
    (all must have a chunk ready), as one batch."""
    features, num_frames = [], []
    for stream in streams:
        assert stream.chunk_size == setup.chunk_size
        assert stream.left_context == setup.left_context
        frames, num_real = stream.get_feature_frames()
        features.append(frames)
        num_frames.append(num_real)
    x = torch.stack(features).to(setup.device)
    x_lens = torch.tensor(num_frames, dtype=torch.int64, device=setup.device)
    batch = stack_streams(streams, setup.device)
    encoder_out, encoder_out_lens, new_states = setup.model.encoder.streaming_forward(
        x, x_lens, batch.states, batch.processed_lens, left_context=setup.left_context,
        right_context=0, chunk_size=setup.chunk_size)
    search_chunk(setup.model, encoder_out, encoder_out_lens, batch, setup.search)
    batch.states = new_states
    batch.processed_lens = batch.processed_lens + encoder_out_lens
    unstack_streams(batch, streams)


@dataclass
class UtteranceResult:
    cut_id: str
    ref: str
    tokens: list[int]
    duration: float  # seconds of audio
    token_latencies: list[float]  # seconds, see the module docstring
    frame_latencies: list[float]
    final_delay: float
    token_frames: list[int] = field(default_factory=list)  # encoder frame of each token


@dataclass
class _Slot:
    stream: DecodeStream
    audio: np.ndarray
    start: float
    ref: str
    fed: int = 0
    tail_padding: int = 0  # samples of silence fed with the end of the audio

    def feed_until(self, now: float, piece: int, realtime: bool) -> None:
        """Feeds the pieces of audio that arrived by `now`."""
        total = self.audio.size
        while self.fed < total:
            end = min(self.fed + piece, total)
            arrival = self.start + end / SAMPLE_RATE if realtime else self.start
            if arrival > now:
                break
            self.stream.accept_waveform(self.audio[self.fed:end], arrival)
            self.fed = end
        if self.fed == total and not self.stream.input_is_finished:
            if self.tail_padding > 0:
                self.stream.accept_waveform(np.zeros(self.tail_padding, dtype=np.float32),
                                            self.end_time(realtime))
            self.stream.input_finished(self.end_time(realtime))

    def next_arrival(self, piece: int, realtime: bool) -> float:
        if self.fed >= self.audio.size:
            return math.inf
        if not realtime:
            return self.start
        return self.start + min(self.fed + piece, self.audio.size) / SAMPLE_RATE

    def end_time(self, realtime: bool) -> float:
        return self.start + self.audio.size / SAMPLE_RATE if realtime else self.start




def decode_dataset(
    cuts: Iterable,
    setup: StreamingSetup,
    num_decode_streams: int,
    simulate_realtime: bool = True,
    piece_samples: int = 1600,
    load_audio: Callable[[Any], np.ndarray] = load_cut_audio,
    clock: Callable[[], float] = time.perf_counter,
    tail_padding_samples: int = 0,
) -> tuple[list[UtteranceResult], float]:
    """Decodes every cut as a stream on the simulated clock (module docstring).

    Args:
      cuts: cuts with one supervision each (its text is the reference).
      setup: model, chunk size, left context, search.
      num_decode_streams: at most this many active streams.
      simulate_realtime: deliver audio at real-time pace (else all at once).
      piece_samples: audio arrives in pieces of this many samples.
      load_audio: cut -> mono float32 samples at 16 kHz.
      clock: wall clock whose differences time the steps.
      tail_padding_samples: zeros appended to every utterance, arriving with
        the end of its audio (not counted in its duration).
    Returns:
      (results in completion order, processing seconds).
    """
    assert num_decode_streams >= 1 and piece_samples >= 1 and tail_padding_samples >= 0
    cut_iter = iter(cuts)
    exhausted = False
    active: list[_Slot] = []
    results: list[UtteranceResult] = []
    now = 0.0
    busy = 0.0
    while True:
        while not exhausted and len(active) < num_decode_streams:
            cut = next(cut_iter, None)
            if cut is None:
                exhausted = True
                break
            ref = " ".join(s.text for s in cut.supervisions if s.text)
            active.append(_Slot(setup.new_stream(cut.id), load_audio(cut), now, ref,
                                tail_padding=tail_padding_samples))
        if not active:
            break

        started = clock()
        for slot in active:
            slot.feed_until(now, piece_samples, simulate_realtime)
        ready = [slot.stream for slot in active if slot.stream.chunk_ready()]
        if ready:
            decode_one_chunk(setup, ready)
        elapsed = clock() - started
        now += elapsed
        busy += elapsed
        for stream in ready:
            stream.record_partial(now)

        remaining = []
        for slot in active:
            if slot.stream.done:
                results.append(_finish(slot, now, simulate_realtime))
            else:
                remaining.append(slot)
        active = remaining
        if not ready and active:
            next_time = min(slot.next_arrival(piece_samples, simulate_realtime)
                            for slot in active)
            if next_time == math.inf:
                raise RuntimeError("streams wait for audio that never comes")
            now = max(now, next_time)
    return results, busy


def _finish(slot: _Slot, now: float, realtime: bool) -> UtteranceResult:
    stream = slot.stream
    tokens = stream.partial_tokens()
    if not stream.chunks or list(stream.chunks[-1].tokens) != tokens:
        # The final result differs from the last partial one (or there was
        # no chunk at all): it was available when the audio ended.
        stream.chunk_arrival = stream.finish_time
        stream.record_partial(now)
    chunk_latencies, frame_latencies = token_latencies(stream)
    return UtteranceResult(
        cut_id=stream.utt_id, ref=slot.ref, tokens=tokens,
        duration=slot.audio.size / SAMPLE_RATE,
        token_latencies=chunk_latencies, frame_latencies=frame_latencies,
        final_delay=now - slot.end_time(realtime),
        token_frames=stream.token_frames(),
    )


def _stats_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0, "mean": float("nan"), "p50": float("nan"), "p95": float("nan"),
                "max": float("nan")}
    array = np.asarray(values) * 1000.0
    return {"count": int(array.size), "mean": float(array.mean()),
            "p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "max": float(array.max())}


def summarize(results: list[UtteranceResult], processing_seconds: float) -> dict[str, Any]:
    """RTF and latency statistics (milliseconds) of a decoded set."""
    audio_seconds = sum(r.duration for r in results)
    return {
        "num_utterances": len(results),
        "audio_seconds": audio_seconds,
        "processing_seconds": processing_seconds,
        "rtf": processing_seconds / audio_seconds if audio_seconds > 0 else float("nan"),
        "token_latency_ms": _stats_ms([x for r in results for x in r.token_latencies]),
        "frame_latency_ms": _stats_ms([x for r in results for x in r.frame_latencies]),
        "final_delay_ms": _stats_ms([r.final_delay for r in results]),
    }


LATENCY_DEFINITION = (
    "token latency = E - A: E = simulated-clock time when the partial result of the token's "
    "chunk was available; A = arrival time of the audio piece that completed that chunk (end "
    "of audio for the last chunk); a token's chunk = the first chunk from which every partial "
    "result starts with the final result up to that token.  frame latency = E - arrival of "
    "the last audio the token's encoder frame depends on.  final delay = time of the final "
    "result - arrival of the end of the audio.  Audio sample k arrives at start + k/16000 in "
    "pieces; the clock advances by measured processing time and jumps over idle waits."
)


def format_summary(summary: dict[str, Any]) -> str:
    token, frame, final = (summary["token_latency_ms"], summary["frame_latency_ms"],
                           summary["final_delay_ms"])
    return (f"RTF {summary['rtf']:.4f} ({summary['processing_seconds']:.2f} s for "
            f"{summary['audio_seconds']:.2f} s of audio, {summary['num_utterances']} utts); "
            f"token latency mean {token['mean']:.1f} ms, p95 {token['p95']:.1f} ms "
            f"({token['count']} tokens); frame latency mean {frame['mean']:.1f} ms, "
            f"p95 {frame['p95']:.1f} ms; final-result delay mean {final['mean']:.1f} ms, "
            f"p95 {final['p95']:.1f} ms")
