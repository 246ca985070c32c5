"""Chunk-wise search for real streaming: advance a batch of streams by the
encoder frames of one chunk.

The functions take the encoder output of one chunk for a batch of streams and
the batch's search state (`StreamBatch`, from `decode_stream.stack_streams`),
and update that state in place; `unstack_streams` then writes it back into
the streams.  Every stream may be at a different position of its utterance
(the encoder frame numbers used for token timestamps come from
`batch.processed_lens`).  Running a chunk at a time gives the same result as
the whole-utterance functions of beam_search.py on the concatenated chunks,
because each of them consumes the frames one by one and carries nothing but
the hypotheses from one frame to the next.

* `greedy_search`: as `beam_search.greedy_search_batch`.
* `modified_beam_search`: `beam_search.modified_beam_search_step` frame by
  frame, with the beams (`HypothesisList`) kept in the streams.
* `fast_beam_search`: `fsa_search.FastBeamSearchStreams` on the streams'
  `FastBeamSearchStream` objects.
"""

from dataclasses import dataclass, field
from typing import Any

import torch

from pruned_transducer_stateless4.beam_search import modified_beam_search_step
from pruned_transducer_stateless4.decode_stream import STREAMING_DECODING_METHODS, StreamBatch
from pruned_transducer_stateless4.decoding_methods import get_method
from pruned_transducer_stateless4.model import Transducer
from shared.fsa_search import FastBeamSearchConfig, FastBeamSearchStreams


@dataclass
class StreamingSearchConfig:
    """Which search and its settings.

    Attributes:
      decoding_method: a method with a streaming search (decoding_methods.py).
      max_sym_per_frame: greedy_search: at most this many tokens per frame.
      beam_size: modified_beam_search: hypotheses kept per frame.
      temperature: modified_beam_search: logits are divided by it.
      fast: fast_beam_search pruning (beam, max_states, max_contexts).
      context_graph: modified_beam_search: contextual biasing
        (context_graph.ContextGraph of --context-file), or None.
    """

    decoding_method: str = "greedy_search"
    max_sym_per_frame: int = 1
    beam_size: int = 4
    temperature: float = 1.0
    fast: FastBeamSearchConfig = field(default_factory=FastBeamSearchConfig)
    context_graph: Any = None

    def __post_init__(self) -> None:
        if self.decoding_method not in STREAMING_DECODING_METHODS:
            raise ValueError(f"unsupported decoding method {self.decoding_method}; "
                             f"choose one of {', '.join(STREAMING_DECODING_METHODS)}")


@torch.no_grad()
def greedy_search(
    model: Transducer,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    batch: StreamBatch,
    max_sym_per_frame: int = 1,
) -> None:
    """Greedy search over one chunk of every stream of `batch`.

    Args:
      model: the transducer.
      encoder_out: (N, chunk_size, encoder_dim).
      encoder_out_lens: (N,) valid frames of each stream in this chunk.
      batch: updated in place: hyps, timestamps, contexts.
      max_sym_per_frame: at most this many tokens per frame (>= 1).
    """
    assert encoder_out.ndim == 3 and encoder_out.size(0) == len(batch.hyps)
    assert max_sym_per_frame >= 1
    device = encoder_out.device
    blank_id = model.decoder.blank_id
    contexts = batch.contexts.to(device)
    decoder_out = model.joiner.decoder_proj(model.decoder(contexts, need_pad=False))
    encoder_proj = model.joiner.encoder_proj(encoder_out)  # (N, T, joiner_dim)
    lens = encoder_out_lens.to(device)
    offsets = batch.processed_lens.tolist()

    for t in range(encoder_out.size(1)):
        active = lens > t
        if not bool(active.any()):
            break
        for _ in range(max_sym_per_frame):
            logits = model.joiner(encoder_proj[:, t : t + 1], decoder_out, project_input=False)
            tokens = logits.squeeze(1).argmax(dim=-1)  # (N,)
            emitted = (tokens != blank_id) & active
            if not bool(emitted.any()):
                break
            for i in emitted.nonzero().flatten().tolist():
                batch.hyps[i].append(int(tokens[i]))
                batch.timestamps[i].append(offsets[i] + t)
            contexts = torch.where(
                emitted.unsqueeze(1), torch.cat([contexts[:, 1:], tokens.unsqueeze(1)], dim=1),
                contexts,
            )
            new_decoder_out = model.joiner.decoder_proj(model.decoder(contexts, need_pad=False))
            decoder_out = torch.where(emitted.view(-1, 1, 1), new_decoder_out, decoder_out)
    batch.contexts = contexts


@torch.no_grad()
def modified_beam_search(
    model: Transducer,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    batch: StreamBatch,
    beam: int = 4,
    temperature: float = 1.0,
    context_graph: Any = None,
) -> None:
    """Modified beam search (at most one token per frame) over one chunk.

    Args:
      model, encoder_out, encoder_out_lens: as `greedy_search`.
      batch: updated in place: beams and beam_timestamps.
      beam: beam size.
      temperature: logits are divided by it before the softmax.
      context_graph: contextual biasing (context_graph.py), or None.
    """
    assert encoder_out.ndim == 3 and encoder_out.size(0) == len(batch.beams)
    encoder_proj = model.joiner.encoder_proj(encoder_out)
    lens = encoder_out_lens.tolist()
    offsets = batch.processed_lens.tolist()
    for t in range(encoder_out.size(1)):
        active = [n for n in range(len(lens)) if lens[n] > t]
        if not active:
            break
        new_beams = modified_beam_search_step(
            model, encoder_proj[active, t], [batch.beams[n] for n in active], beam, temperature,
            context_graph
        )
        for n, new_beam in zip(active, new_beams):
            old_times = batch.beam_timestamps[n]
            new_times: dict[tuple[int, ...], list[int]] = {}
            for hyp in new_beam:
                key = tuple(hyp.ys)
                if key in old_times:  # blank, or merged with a hypothesis that was there
                    new_times[key] = old_times[key]
                else:  # one token more than a hypothesis of the previous frame
                    new_times[key] = old_times[key[:-1]] + [offsets[n] + t]
            batch.beams[n] = new_beam
            batch.beam_timestamps[n] = new_times


@torch.no_grad()
def fast_beam_search(
    model: Transducer,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    batch: StreamBatch,
    config: FastBeamSearchConfig,
) -> None:
    """Fast beam search over one chunk: advances the streams'
    `FastBeamSearchStream` objects (they hold the lattice so far)."""
    assert all(s is not None for s in batch.fast_streams), "streams have no fast-beam state"
    FastBeamSearchStreams(model, batch.fast_streams, config).advance(
        encoder_out, encoder_out_lens)


def search_chunk(
    model: Transducer,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    batch: StreamBatch,
    config: StreamingSearchConfig,
) -> None:
    """Runs the configured search (its `streaming` function in
    decoding_methods.py) on one chunk of every stream of `batch`."""
    search = get_method(config.decoding_method).streaming
    assert search is not None, config.decoding_method
    search(model, encoder_out, encoder_out_lens, batch, config)
