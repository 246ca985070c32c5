"""Decoding methods for the stateless transducer, shared by decode.py,
streaming_decode.py, pretrained.py and train.py's validation.

Conventions: `model` is a `Transducer` (model.py) whose decoder is stateless
with `context_size` tokens of context; `encoder_out` is (N, T, encoder_dim) and
`encoder_out_lens` (N,) gives the valid frames; results are lists of token ids
without blanks, in the order of the batch (word ids for the LG methods).  Only
`model.decoder` and `model.joiner` are used, so any module with those two
attributes works (the tests use toy ones).

Methods (icefall's names):

* `greedy_search_batch` / `greedy_search`: arg-max, up to `max_sym_per_frame`
  tokens per frame.
* `beam_search`: Algorithm 1 of Graves 2012 (arXiv 1211.3711), one utterance,
  any number of tokens per frame (capped by `max_sym_per_frame`).
* `modified_beam_search`: batched, at most one token per frame; hypotheses
  with equal token sequences are merged by adding their probabilities.
* `fast_beam_search*`: the FSA-constrained search of k2's
  `RnntDecodingStreams` (Kang et al. 2022, arXiv 2211.00484), reimplemented in
  PyTorch in shared/fsa_search.py (with its graphs and lattices) and imported
  here under icefall's names.
"""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pruned_transducer_stateless4.model import Transducer
from shared.fsa_search import _decoder_proj, _log_probs

# icefall's fast_beam_search API; "name as name" re-exports it (PEP 484).
from shared.fsa_search import fast_beam_search as fast_beam_search
from shared.fsa_search import fast_beam_search_LG as fast_beam_search_LG
from shared.fsa_search import fast_beam_search_nbest as fast_beam_search_nbest
from shared.fsa_search import fast_beam_search_nbest_LG as fast_beam_search_nbest_LG
from shared.fsa_search import fast_beam_search_one_best as fast_beam_search_one_best

NEG_INF = -math.inf


# ---------------------------------------------------------------- helpers


def _log_add(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


# ------------------------------------------------------------ greedy search


@torch.no_grad()
def greedy_search_batch(
    model: Transducer,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    max_sym_per_frame: int = 1,
) -> list[list[int]]:
    """Batched greedy search: at each frame, emit the arg-max token until it
    is blank or `max_sym_per_frame` tokens were emitted, then move on.

    Args:
      model: the transducer.
      encoder_out: (N, T, encoder_dim).
      encoder_out_lens: (N,) valid frames per utterance.
      max_sym_per_frame: at most this many non-blank tokens per frame (>= 1).
    Returns:
      N lists of token ids.
    """
    assert encoder_out.ndim == 3 and max_sym_per_frame >= 1
    device = encoder_out.device
    batch_size, num_frames, _ = encoder_out.shape
    blank_id = model.decoder.blank_id
    context_size = model.decoder.context_size

    hyps: list[list[int]] = [[] for _ in range(batch_size)]
    contexts = torch.full((batch_size, context_size), blank_id, dtype=torch.int64, device=device)
    decoder_out = model.joiner.decoder_proj(model.decoder(contexts, need_pad=False))
    encoder_proj = model.joiner.encoder_proj(encoder_out)  # (N, T, joiner_dim)
    encoder_out_lens = encoder_out_lens.to(device)

    for t in range(num_frames):
        active = encoder_out_lens > t  # (N,)
        if not bool(active.any()):
            break
        for _ in range(max_sym_per_frame):
            logits = model.joiner(encoder_proj[:, t : t + 1], decoder_out, project_input=False)
            tokens = logits.squeeze(1).argmax(dim=-1)  # (N,)
            emitted = (tokens != blank_id) & active
            if not bool(emitted.any()):
                break
            for i in emitted.nonzero().flatten().tolist():
                hyps[i].append(int(tokens[i]))
            contexts = torch.where(
                emitted.unsqueeze(1), torch.cat([contexts[:, 1:], tokens.unsqueeze(1)], dim=1),
                contexts,
            )
            new_decoder_out = model.joiner.decoder_proj(model.decoder(contexts, need_pad=False))
            decoder_out = torch.where(emitted.view(-1, 1, 1), new_decoder_out, decoder_out)
    return hyps


@torch.no_grad()
def greedy_search(
    model: Transducer, encoder_out: torch.Tensor, max_sym_per_frame: int = 1
) -> list[int]:
    """Greedy search of one utterance (see `greedy_search_batch`).

    Args:
      encoder_out: (1, T, encoder_dim), every frame valid.
      max_sym_per_frame: at most this many non-blank tokens per frame (>= 1).
    Returns:
      The token ids.
    """
    assert encoder_out.ndim == 3 and encoder_out.size(0) == 1, encoder_out.shape
    lens = torch.tensor([encoder_out.size(1)], device=encoder_out.device)
    return greedy_search_batch(model, encoder_out, lens, max_sym_per_frame)[0]


# --------------------------------------------------------- hypothesis lists


@dataclass
class Hypothesis:
    """A partial transcript of beam search.

    Attributes:
      ys: `context_size` blanks followed by the tokens emitted so far.
      log_prob: log-probability of emitting ys (summed over the alignments
        that were merged into this hypothesis), plus the contextual-biasing
        bonus of ys if a context graph is used.
      context_state: the state of ys in the context graph (context_graph.py;
        None: its root, or no graph).
    """

    ys: list[int]
    log_prob: float
    context_state: Any = None

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(self.ys)


class HypothesisList:
    """Hypotheses keyed by their token sequence; adding a sequence that is
    already present adds the probabilities (log-add), as icefall's."""

    def __init__(self, hyps: Iterable[Hypothesis] | None = None) -> None:
        self._data: dict[tuple[int, ...], Hypothesis] = {}
        for hyp in hyps or ():
            self.add(hyp)

    def add(self, hyp: Hypothesis) -> None:
        old = self._data.get(hyp.key)
        if old is None:
            self._data[hyp.key] = Hypothesis(list(hyp.ys), hyp.log_prob, hyp.context_state)
        else:  # equal ys: equal context state
            self._data[hyp.key] = Hypothesis(old.ys, _log_add(old.log_prob, hyp.log_prob),
                                             old.context_state)

    def remove(self, hyp: Hypothesis) -> None:
        del self._data[hyp.key]

    def get_most_probable(self, length_norm: bool = False) -> Hypothesis:
        """The best hypothesis (the first added among equals); with
        length_norm, by log_prob / len(ys) as icefall does."""
        assert self._data, "empty HypothesisList"
        if length_norm:
            return max(self._data.values(), key=lambda h: h.log_prob / len(h.ys))
        return max(self._data.values(), key=lambda h: h.log_prob)

    def filter(self, threshold: float) -> "HypothesisList":
        """The hypotheses with log_prob > threshold."""
        return HypothesisList(h for h in self._data.values() if h.log_prob > threshold)

    def topk(self, k: int, length_norm: bool = False) -> "HypothesisList":
        """The k best hypotheses (stable among equals)."""
        score = (lambda h: h.log_prob / len(h.ys)) if length_norm else (lambda h: h.log_prob)
        return HypothesisList(sorted(self._data.values(), key=score, reverse=True)[:k])

    def __contains__(self, key: tuple[int, ...]) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[Hypothesis]:
        return iter(list(self._data.values()))

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"HypothesisList({list(self._data.values())})"


# ------------------------------------------------------------- beam search


@torch.no_grad()
def beam_search(
    model: Transducer,
    encoder_out: torch.Tensor,
    beam: int = 4,
    temperature: float = 1.0,
    max_sym_per_frame: int = 10,
    length_norm: bool = True,
) -> list[int]:
    """Beam search of Graves 2012 (Algorithm 1), one utterance.

    At frame t, A starts as the beam B of frame t-1 and B is emptied; then
    repeatedly the best hypothesis y* of A is removed from A, y* + blank goes
    to B (moving to frame t+1), and y* + v for the `beam + 1` best tokens v goes
    back to A (staying at frame t), until B holds `beam` hypotheses better
    than the best of A; B is then cut to its `beam` best.  Equal token
    sequences are merged by adding their probabilities: in B, and in A among
    hypotheses that emitted equally many tokens at frame t (so that the
    per-frame limit holds for every merged path).
    Graves' prefix-probability update is not done (as in icefall).

    Args:
      model: the transducer.
      encoder_out: (1, T, encoder_dim).
      beam: beam size (>= 1).
      temperature: logits are divided by it before the softmax.
      max_sym_per_frame: a hypothesis emits at most this many tokens per
        frame; this bounds the work when the model rarely predicts blank.
      length_norm: pick the final result by log_prob / number of tokens
        (icefall's choice) instead of log_prob.
    Returns:
      The token ids of the best hypothesis.

    With beam=1 the result equals greedy search's (same max_sym_per_frame)
    whenever the arg-max token is clearly better than the alternatives (the
    comparison is between whole extensions, so on flat distributions the two
    can differ).
    """
    assert encoder_out.ndim == 3 and encoder_out.size(0) == 1, encoder_out.shape
    assert beam >= 1 and max_sym_per_frame >= 1
    blank_id = model.decoder.blank_id
    context_size = model.decoder.context_size
    device = encoder_out.device
    encoder_proj = model.joiner.encoder_proj(encoder_out[0])  # (T, joiner_dim)

    decoder_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def decoder_proj(ys: list[int]) -> torch.Tensor:
        context = tuple(ys[-context_size:])
        if context not in decoder_cache:
            tokens = torch.tensor([context], dtype=torch.int64, device=device)
            decoder_cache[context] = _decoder_proj(model, tokens)
        return decoder_cache[context]

    B = HypothesisList([Hypothesis([blank_id] * context_size, 0.0)])
    for t in range(encoder_proj.size(0)):
        # by_emitted[k]: the hypotheses of A that emitted k tokens at frame t.
        # Kept apart because merging two paths with different counts would
        # let one of them emit more than max_sym_per_frame tokens.
        by_emitted = [B] + [HypothesisList() for _ in range(max_sym_per_frame)]
        B = HypothesisList()
        while True:
            candidates = [(hyps.get_most_probable(), k) for k, hyps in enumerate(by_emitted)
                          if len(hyps) > 0]
            if not candidates:
                break
            y_star, num_emitted = max(candidates, key=lambda c: c[0].log_prob)
            by_emitted[num_emitted].remove(y_star)
            log_probs = _log_probs(
                model, encoder_proj[t : t + 1], decoder_proj(y_star.ys), temperature
            )[0]
            B.add(Hypothesis(y_star.ys, y_star.log_prob + float(log_probs[blank_id])))
            if num_emitted < max_sym_per_frame:
                values, indices = log_probs.topk(min(beam + 1, log_probs.numel()))
                for value, token in zip(values.tolist(), indices.tolist()):
                    if token != blank_id:
                        by_emitted[num_emitted + 1].add(
                            Hypothesis(y_star.ys + [token], y_star.log_prob + value))
            best_left = max((hyps.get_most_probable().log_prob for hyps in by_emitted
                             if len(hyps) > 0), default=None)
            if best_left is None or len(B.filter(best_left)) >= beam:
                break
        B = B.topk(beam)
    return B.get_most_probable(length_norm=length_norm).ys[context_size:]


# ---------------------------------------------------- modified beam search


@torch.no_grad()
def modified_beam_search_step(
    model: Transducer,
    encoder_proj: torch.Tensor,
    hyp_lists: list[HypothesisList],
    beam: int = 4,
    temperature: float = 1.0,
    context_graph: Any = None,
) -> list[HypothesisList]:
    """Advances several utterances' beams by one frame (one token at most).

    Every hypothesis is extended by every token (blank keeps ys); of all
    extensions of an utterance, the `beam` best survive, and those with equal
    ys are merged (so fewer than `beam` may remain).  One decoder and one
    joiner call serve all utterances.

    Args:
      model: the transducer.
      encoder_proj: (n, joiner_dim), the current frame of each utterance after
        `model.joiner.encoder_proj`.
      hyp_lists: n beams (not modified).
      beam: beam size.
      temperature: logits are divided by it before the softmax.
      context_graph: a context_graph.ContextGraph: each extension's score
        gets the bonus (or take-back) of its token before the top-k.
    Returns:
      n new beams.
    """
    assert encoder_proj.ndim == 2 and encoder_proj.size(0) == len(hyp_lists)
    blank_id = model.decoder.blank_id
    context_size = model.decoder.context_size
    device = encoder_proj.device
    hyps = [list(hyp_list) for hyp_list in hyp_lists]
    counts = torch.tensor([len(h) for h in hyps], device=device)
    flat = [hyp for utt_hyps in hyps for hyp in utt_hyps]
    contexts = torch.tensor([hyp.ys[-context_size:] for hyp in flat], dtype=torch.int64,
                            device=device)
    prev = torch.tensor([hyp.log_prob for hyp in flat], dtype=torch.float64, device=device)
    owner = torch.repeat_interleave(torch.arange(len(hyps), device=device), counts)
    log_probs = _log_probs(model, encoder_proj[owner], _decoder_proj(model, contexts),
                           temperature).double() + prev.unsqueeze(1)  # (H, V)
    vocab_size = log_probs.size(1)
    if context_graph is not None:
        log_probs = log_probs + _context_bonus(context_graph, flat, vocab_size, blank_id,
                                               device)

    # (n, max_hyps * V): the extensions of each utterance on one row.
    max_hyps = int(counts.max())
    starts = torch.cumsum(counts, dim=0) - counts
    position = torch.arange(len(flat), device=device) - starts[owner]
    columns = position.unsqueeze(1) * vocab_size + torch.arange(vocab_size, device=device)
    padded = torch.full((len(hyps), max_hyps * vocab_size), NEG_INF, dtype=torch.float64,
                        device=device)
    padded[owner.unsqueeze(1), columns] = log_probs
    values, indices = padded.topk(min(beam, padded.size(1)), dim=1)

    new_lists = []
    for utt_hyps, row_values, row_indices in zip(hyps, values.tolist(), indices.tolist()):
        new_list = HypothesisList()
        for value, index in zip(row_values, row_indices):
            if value == NEG_INF:
                continue
            hyp = utt_hyps[index // vocab_size]
            token = index % vocab_size
            if token == blank_id:
                new_list.add(Hypothesis(hyp.ys, value, hyp.context_state))
                continue
            state = None
            if context_graph is not None:
                state = context_graph.forward_one_step(hyp.context_state, token)[1]
            new_list.add(Hypothesis(hyp.ys + [token], value, state))
        new_lists.append(new_list)
    return new_lists


@torch.no_grad()
def modified_beam_search(
    model: Transducer,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int = 4,
    temperature: float = 1.0,
    length_norm: bool = True,
    context_graph: Any = None,
) -> list[list[int]]:
    """Batched beam search with at most one token per frame (icefall's
    modified_beam_search; see `modified_beam_search_step`).

    Args:
      model: the transducer.
      encoder_out: (N, T, encoder_dim).
      encoder_out_lens: (N,) valid frames per utterance.
      beam: beam size.
      temperature: logits are divided by it before the softmax.
      length_norm: pick the final result by log_prob / number of tokens
        (icefall's choice) instead of log_prob.
      context_graph: contextual biasing (context_graph.ContextGraph), or None.
    Returns:
      N lists of token ids.
    """
    assert encoder_out.ndim == 3 and encoder_out.size(0) == encoder_out_lens.numel()
    blank_id = model.decoder.blank_id
    context_size = model.decoder.context_size
    batch_size, num_frames, _ = encoder_out.shape
    encoder_proj = model.joiner.encoder_proj(encoder_out)
    lens = encoder_out_lens.tolist()
    beams = [HypothesisList([Hypothesis([blank_id] * context_size, 0.0)])
             for _ in range(batch_size)]
    for t in range(num_frames):
        active = [n for n in range(batch_size) if lens[n] > t]
        if not active:
            break
        new_beams = modified_beam_search_step(
            model, encoder_proj[active, t], [beams[n] for n in active], beam, temperature,
            context_graph
        )
        for n, new_beam in zip(active, new_beams):
            beams[n] = new_beam
    if context_graph is not None:
        beams = [finalize_context(b, context_graph) for b in beams]
    return [b.get_most_probable(length_norm=length_norm).ys[context_size:] for b in beams]


def _context_bonus(context_graph, hyps: list[Hypothesis], vocab_size: int, blank_id: int,
                   device: torch.device) -> torch.Tensor:
    """(H, V) score change of every extension of every hypothesis."""
    bonus = torch.zeros(len(hyps), vocab_size, dtype=torch.float64)
    for row, hyp in enumerate(hyps):
        default, exceptions = context_graph.bonus_row(hyp.context_state, vocab_size, blank_id)
        bonus[row] = default
        for token, value in exceptions.items():
            bonus[row, token] = value
    return bonus.to(device)


def finalize_context(hyps: HypothesisList, context_graph) -> HypothesisList:
    """The beam at the end of an utterance: unfinished phrase bonuses taken back."""
    return HypothesisList(
        Hypothesis(h.ys, h.log_prob + context_graph.finalize(h.context_state), None)
        for h in hyps)
