"""One utterance streamed through a transducer's encoder, chunk by chunk, as
jit_pretrained.py runs cpu_jit.pt.

stream_encoder feeds the audio to an online kaldi-native-fbank front end and
runs the encoder's streaming_forward with its cached state whenever a window
of 4 * chunk + pad_length feature frames is ready; each chunk's encoder
frames go to a search object's advance():

* StreamingGreedySearch: one token per frame at most (sherpa-onnx's greedy
  search), needing nothing but torch;
* StreamingModifiedBeamSearch, StreamingFastBeamSearch: the recipe's searches
  (beam_search.py, shared/fsa_search.py), imported when first used;
* OfflineBeamSearch: beam_search over all frames after the last chunk.

The model is cpu_jit.pt's scripted module or a Transducer (only encoder,
decoder and joiner are used).  This module imports only numpy and torch at
load time, so that greedy search on cpu_jit.pt needs no other package.
"""

import numpy as np
import torch

from pruned_transducer_stateless4.audio_input import (
    LOG_EPS,
    NUM_MEL_BINS,
    SAMPLE_RATE,
    make_online_fbank,
)


# ------------------------------------------------------------ searches ----
class StreamingGreedySearch:
    """Greedy search carried across chunks, one token per frame at most
    (what sherpa-onnx's greedy_search does).

    Args:
      model: cpu_jit.pt's module or a Transducer (decoder and joiner used).
      blank_like: token ids handled like blank when they win (nothing is
        emitted); sherpa-onnx does so with <unk>.
    """

    def __init__(self, model, blank_like: tuple[int, ...] = ()) -> None:
        self.model = model
        self.blank_id = int(model.decoder.blank_id)
        self.blank_like = set(blank_like) | {self.blank_id}
        self.context_size = int(model.decoder.context_size)
        self.hyp = [self.blank_id] * self.context_size
        self.decoder_out = self._decoder_out()

    def _decoder_out(self) -> torch.Tensor:
        context = torch.tensor([self.hyp[-self.context_size :]], dtype=torch.int64)
        return self.model.joiner.decoder_proj(self.model.decoder(context, False))[:, 0]

    def advance(self, encoder_out: torch.Tensor) -> None:
        """encoder_out: (T, encoder_dim) valid frames of one chunk."""
        encoder_proj = self.model.joiner.encoder_proj(encoder_out)
        for t in range(encoder_proj.size(0)):
            logits = self.model.joiner(encoder_proj[t : t + 1], self.decoder_out, False)
            token = int(logits.argmax(dim=-1)[0])
            if token not in self.blank_like:
                self.hyp.append(token)
                self.decoder_out = self._decoder_out()

    def result(self) -> list[int]:
        return self.hyp[self.context_size :]


class StreamingModifiedBeamSearch:
    """beam_search.modified_beam_search_step carried across chunks."""

    def __init__(self, model, beam: int) -> None:
        from pruned_transducer_stateless4.beam_search import Hypothesis, HypothesisList

        self.model = model
        self.beam = beam
        self.context_size = int(model.decoder.context_size)
        blank_id = int(model.decoder.blank_id)
        self.hyps = HypothesisList([Hypothesis([blank_id] * self.context_size, 0.0)])

    def advance(self, encoder_out: torch.Tensor) -> None:
        from pruned_transducer_stateless4.beam_search import modified_beam_search_step

        encoder_proj = self.model.joiner.encoder_proj(encoder_out)
        for t in range(encoder_proj.size(0)):
            self.hyps = modified_beam_search_step(self.model, encoder_proj[t : t + 1],
                                                  [self.hyps], self.beam)[0]

    def result(self) -> list[int]:
        return self.hyps.get_most_probable(length_norm=True).ys[self.context_size :]


class StreamingFastBeamSearch:
    """fsa_search.FastBeamSearchStream (trivial graph) advanced per chunk."""

    def __init__(self, model, vocab_size: int, beam: float, max_states: int,
                 max_contexts: int) -> None:
        from shared.fsa_search import FastBeamSearchConfig, FastBeamSearchStream, trivial_graph

        self.model = model
        self.config = FastBeamSearchConfig(beam, max_states, max_contexts)
        self.stream = FastBeamSearchStream(trivial_graph(vocab_size),
                                           int(model.decoder.context_size),
                                           int(model.decoder.blank_id))

    def advance(self, encoder_out: torch.Tensor) -> None:
        from shared.fsa_search import FastBeamSearchStreams

        FastBeamSearchStreams(self.model, [self.stream], self.config).advance(
            encoder_out.unsqueeze(0))

    def result(self) -> list[int]:
        return self.stream.best_path().tokens


class OfflineBeamSearch:
    """beam_search.beam_search over all frames once the last chunk is in."""

    def __init__(self, model, beam: int) -> None:
        self.model = model
        self.beam = beam
        self.frames: list[torch.Tensor] = []

    def advance(self, encoder_out: torch.Tensor) -> None:
        self.frames.append(encoder_out)

    def result(self) -> list[int]:
        from pruned_transducer_stateless4.beam_search import beam_search

        return beam_search(self.model, torch.cat(self.frames).unsqueeze(0), self.beam)


# ------------------------------------------------------------ streaming ----
@torch.no_grad()
def stream_encoder(
    model, samples: np.ndarray, chunk_size: int, left_context: int, search,
    feed_seconds: float = 0.1, full_windows_only: bool = False,
) -> int:
    """Runs the streaming encoder over `samples` as they arrive and hands each
    chunk's valid encoder frames to `search.advance`.

    Args:
      model: cpu_jit.pt's module (or a Transducer: only .encoder is used).
      samples: 16 kHz mono float32.
      chunk_size, left_context: in frames after subsampling.
      search: an object with advance(encoder_out (T, encoder_dim)).
      feed_seconds: size of the audio pieces given to the front end.
      full_windows_only: stop after the last full window, as sherpa-onnx does
        (for comparisons); by default the last partial chunk is padded.
    Returns:
      the number of encoder steps run.
    """
    encoder = model.encoder
    pad_length = int(encoder.pad_length)
    window = chunk_size * 4 + pad_length
    shift = chunk_size * 4
    fbank = make_online_fbank()
    states = [s.unsqueeze(2) for s in encoder.get_init_state(left_context, torch.device("cpu"))]
    processed = torch.zeros(1, dtype=torch.int64)
    start = 0  # first feature frame of the next window
    steps = 0

    def run(num_real: int) -> None:
        nonlocal states, start, steps
        num_real = min(num_real, window)
        end = min(start + num_real, fbank.num_frames_ready)
        frames = [fbank.get_frame(i) for i in range(start, end)]
        # Frames past the audio hold LOG_EPS (the final padding).
        x = torch.full((1, window, NUM_MEL_BINS), LOG_EPS)
        if frames:
            x[0, : end - start] = torch.tensor(np.array(frames, dtype=np.float32))
        x_lens = torch.tensor([num_real], dtype=torch.int64)
        encoder_out, encoder_out_lens, states = encoder.streaming_forward(
            x, x_lens, states, processed, left_context, 0, chunk_size, False)
        search.advance(encoder_out[0, : int(encoder_out_lens[0])])
        processed.add_(encoder_out_lens)
        start += shift
        steps += 1

    # sherpa-onnx runs a window only when a frame follows it.
    extra = 1 if full_windows_only else 0
    piece = max(1, int(feed_seconds * SAMPLE_RATE))
    for offset in range(0, len(samples), piece):
        fbank.accept_waveform(SAMPLE_RATE, samples[offset : offset + piece].tolist())
        while fbank.num_frames_ready >= start + window + extra:
            run(window)
    fbank.input_finished()
    while fbank.num_frames_ready >= start + window + extra:
        run(window)
    if full_windows_only:
        return steps
    # icefall's end of a stream: pad_length LOG_EPS frames, counted as real,
    # and windows until no more than those are left.
    total = fbank.num_frames_ready + pad_length
    while total - start > pad_length:
        run(total - start)
    return steps
