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
  PyTorch here: see "Fast beam search" below.

Fast beam search
----------------
A decoding state is a pair (graph state g, decoder context c), where g is a
state of a `DecodingGraph` (shared/fsa_graph.py: the trivial one-state graph
for `fast_beam_search`, LG for the `_LG` methods) and c the last
`context_size` tokens (blanks at the start).  Each frame consumes exactly one
encoder frame, like modified beam search:

* blank: (g, c) -> (g, c), score log p(blank | t, c);
* token v along a graph arc g -> g' labelled v (possibly after following
  back-off links of g, see `DecodingGraph.backoff_closure`):
  (g, c) -> (g', c[1:] + [v]), score log p(v | t, c)
  + ngram_lm_scale * (arc score + back-off scores).

States reached by several arcs are merged (their forward score is the best
incoming one: Viterbi); all arcs into surviving states are kept in the
lattice.  Pruning per frame and per utterance, in this order:
(1) arcs whose score is below the best arc of the utterance minus `beam` are
dropped; (2) of the new states' contexts, only the `max_contexts` best (a
context's score is the best of its states) are kept; (3) of the remaining
states, the `max_states` best.  Contexts are what the decoder and joiner run
on, so `max_contexts` bounds the network work per frame.

After the last frame, a state may end the utterance iff its graph state is
final; the final score adds ngram_lm_scale * final_score[g].  The lattice has
one start state (frame 0) and, for t = 0 .. T-1, arcs from states of frame t
to states of frame t + 1, each labelled with a token (0 = blank) and the word
its graph arc outputs (0 = none).

For streaming, the search state of each utterance is a `FastBeamSearchStream`
that lives as long as the utterance; `FastBeamSearchStreams` batches any set
of streams and advances them by a chunk of encoder frames:

    streams = [FastBeamSearchStream(graph, context_size=2) for _ in range(N)]
    for chunk, chunk_lens in chunks:          # (N, T_chunk, C), (N,)
        FastBeamSearchStreams(model, streams, config).advance(chunk, chunk_lens)
        partial = [s.best_path(final=False).tokens for s in streams]
    results = [s.best_path().tokens for s in streams]

The batch object holds no state of its own between `advance` calls, so
streams may join and leave between chunks (each stream is advanced by exactly
the frames it is given).
"""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pruned_transducer_stateless4.model import Transducer
from shared.fsa_graph import DecodingGraph

NEG_INF = -math.inf


# ---------------------------------------------------------------- helpers


def _decoder_proj(model: Transducer, contexts: torch.Tensor) -> torch.Tensor:
    """(H, context_size) token ids -> (H, joiner_dim) projected decoder output."""
    decoder_out = model.decoder(contexts, need_pad=False)  # (H, 1, decoder_dim)
    return model.joiner.decoder_proj(decoder_out).squeeze(1)


def _log_probs(
    model: Transducer, encoder_proj: torch.Tensor, decoder_proj: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(H, joiner_dim) x 2, already projected -> (H, vocab_size) float32 log-probs."""
    logits = model.joiner(encoder_proj, decoder_proj, project_input=False)
    return (logits.float() / temperature).log_softmax(dim=-1)


def _log_add(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


def _segment_max(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """out[i] = max of values[index == i] (-inf if none); values 1-D."""
    out = torch.full((size,), NEG_INF, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, index, values, reduce="amax", include_self=True)


def _segment_logsumexp(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """out[i] = logsumexp of values[index == i] along dim 0 (-inf if none).

    Args:
      values: (A,) or (A, F).
      index: (A,) int64 in [0, size).
    Returns:
      (size,) or (size, F).
    """
    shape = (size,) + tuple(values.shape[1:])
    expanded = index.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    peak = torch.full(shape, NEG_INF, dtype=values.dtype, device=values.device)
    peak = peak.scatter_reduce(0, expanded, values, reduce="amax", include_self=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.zeros(shape, dtype=values.dtype, device=values.device)
    total.index_add_(0, index, torch.exp(values - peak[index]))
    return peak + torch.log(total)


def _unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.unique(rows, dim=0, return_inverse=True) for non-negative int64
    rows, via one int64 key per row (mixed radix, which keeps the
    lexicographic order) when the keys fit; much faster than unique_dim."""
    if rows.size(0) == 0:
        return rows, torch.zeros(0, dtype=torch.int64, device=rows.device)
    radices = (rows.max(dim=0).values + 1).tolist()
    if math.prod(radices) >= 2**62:
        return torch.unique(rows, dim=0, return_inverse=True)
    key = torch.zeros(rows.size(0), dtype=torch.int64, device=rows.device)
    for column, radix in enumerate(radices):
        key = key * radix + rows[:, column]
    unique_keys, inverse = torch.unique(key, return_inverse=True)
    representative = torch.empty(unique_keys.numel(), dtype=torch.int64, device=rows.device)
    representative.scatter_(0, inverse, torch.arange(rows.size(0), device=rows.device))
    return rows[representative], inverse


def _rank_within_groups(
    groups: torch.Tensor, scores: torch.Tensor, num_groups: int
) -> torch.Tensor:
    """rank[i] = how many entries of group groups[i] score better than entry i
    (ties broken by position), so rank < k selects the k best of each group."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    counts = torch.bincount(sorted_groups, minlength=num_groups)
    starts = torch.cumsum(counts, dim=0) - counts
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device) - starts[sorted_groups]
    return ranks


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


# --------------------------------------------------------- fast beam search


@dataclass
class FastBeamSearchConfig:
    """Pruning of `FastBeamSearchStreams` (see the module docstring).

    Attributes:
      beam: arcs scoring below the best arc of their utterance minus beam are
        pruned at each frame (log-probability units).
      max_states: at most this many states per utterance and frame.
      max_contexts: at most this many decoder contexts per utterance and frame.
      temperature: logits are divided by it before the softmax.
    """

    beam: float = 20.0
    max_states: int = 64
    max_contexts: int = 8
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.beam <= 0 or self.max_states < 1 or self.max_contexts < 1:
            raise ValueError(f"bad fast beam search config {self}")


@dataclass
class LatticePath:
    """A path through a lattice.

    Attributes:
      tokens: its non-blank token labels, in order.
      words: the words (ids) its graph arcs output, in order.
      timestamps: the frame of each token.
      score: its score (sum of arc scores, plus the final score if the path
        ends the utterance); -inf for the empty path of a lattice without
        any surviving final state.
      arcs: its lattice arc indices, one per frame.
    """

    tokens: list[int] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    score: float = NEG_INF
    arcs: list[int] = field(default_factory=list)


@dataclass
class Lattice:
    """The search space explored for one utterance by fast beam search.

    States are numbered frame by frame: the states of frame t (the search
    state after consuming t encoder frames) are
    state_offsets[t] <= s < state_offsets[t + 1]; frame 0 holds only the
    start state 0.  The arcs of frame t (consuming encoder frame t) are
    arc_offsets[t] <= a < arc_offsets[t + 1] and go from states of frame t to
    states of frame t + 1.  T = num_frames.

    Attributes:
      num_frames: T.
      state_offsets: (T + 2,) int64.
      state_graph: (S,) int64, the graph state of each lattice state.
      state_score: (S,) float32, forward Viterbi score (best path from start).
      state_best_arc: (S,) int64, the best arc into each state (-1 for start).
      arc_offsets: (T + 1,) int64.
      arc_src, arc_dst: (A,) int64 lattice states.
      arc_label: (A,) int64 token (0 = blank).
      arc_word: (A,) int64 word output by the graph arc (0 = none).
      arc_score: (A,) float32: log p(label) + ngram_lm_scale * graph score.
      final_score: (S,) float32: ngram_lm_scale * graph final score for the
        states of frame T, -inf elsewhere.
    """

    num_frames: int
    state_offsets: torch.Tensor
    state_graph: torch.Tensor
    state_score: torch.Tensor
    state_best_arc: torch.Tensor
    arc_offsets: torch.Tensor
    arc_src: torch.Tensor
    arc_dst: torch.Tensor
    arc_label: torch.Tensor
    arc_word: torch.Tensor
    arc_score: torch.Tensor
    final_score: torch.Tensor

    @property
    def num_states(self) -> int:
        return self.state_graph.numel()

    @property
    def num_arcs(self) -> int:
        return self.arc_src.numel()

    def _path(self, arcs: list[int], score: float) -> LatticePath:
        labels = self.arc_label[arcs].tolist() if arcs else []
        words = self.arc_word[arcs].tolist() if arcs else []
        frames = torch.searchsorted(
            self.arc_offsets,
            torch.tensor(arcs, dtype=torch.int64, device=self.arc_offsets.device),
            right=True).sub(1).tolist() if arcs else []
        return LatticePath(
            tokens=[label for label in labels if label != 0],
            words=[word for word in words if word != 0],
            timestamps=[frame for frame, label in zip(frames, labels) if label != 0],
            score=score,
            arcs=list(arcs),
        )

    def best_path(self, final: bool = True) -> LatticePath:
        """The Viterbi path.

        Args:
          final: end in a final state of the graph (adding its final score);
            if no state of the last frame is final, the result is the empty
            path with score -inf.  With final=False, the best state of the
            last frame ends the path whatever its graph state (a partial
            result while streaming).
        """
        first, last = int(self.state_offsets[self.num_frames]), int(
            self.state_offsets[self.num_frames + 1])
        scores = self.state_score[first:last].double()
        if final:
            scores = scores + self.final_score[first:last].double()
        best = int(torch.argmax(scores))
        score = float(scores[best])
        if score == NEG_INF:
            return LatticePath()
        state = first + best
        best_arc = self.state_best_arc.tolist()
        arc_src = self.arc_src.tolist()
        arcs = []
        while best_arc[state] >= 0:
            arcs.append(best_arc[state])
            state = arc_src[best_arc[state]]
        arcs.reverse()
        return self._path(arcs, score)

    def backward_scores(self, scale: float = 1.0) -> torch.Tensor:
        """(S,) float64 log-sum over paths from each state to the end, with
        every arc and final score multiplied by `scale`."""
        beta = (self.final_score.double() * scale).clone()
        beta[self.final_score == NEG_INF] = NEG_INF
        scores = self.arc_score.double() * scale
        for t in range(self.num_frames - 1, -1, -1):
            a0, a1 = int(self.arc_offsets[t]), int(self.arc_offsets[t + 1])
            s0, s1 = int(self.state_offsets[t]), int(self.state_offsets[t + 1])
            values = scores[a0:a1] + beta[self.arc_dst[a0:a1]]
            beta[s0:s1] = _segment_logsumexp(values, self.arc_src[a0:a1] - s0, s1 - s0)
        return beta

    def random_paths(
        self, num_paths: int, scale: float = 1.0, generator: torch.Generator | None = None
    ) -> list[list[int]]:
        """Samples complete paths (start to a final state) with probability
        proportional to exp(scale * path score) (k2.random_paths on a lattice
        whose scores were multiplied by `scale`).

        Returns:
          num_paths lists of arc indices (one per frame); [] if the lattice
          has no complete path.

        The uniform noise is drawn on `generator`'s device (default: the
        lattice's) and moved to the lattice's device.
        """
        if num_paths <= 0:
            return []
        beta = self.backward_scores(scale)
        if float(beta[0]) == NEG_INF:
            return []
        scores = self.arc_score.double() * scale
        device = scores.device
        noise_device = generator.device if generator is not None else device
        current = torch.zeros(num_paths, dtype=torch.int64, device=device)
        neg_inf = torch.tensor(NEG_INF, dtype=torch.float64, device=device)
        chosen = []
        for t in range(self.num_frames):
            a0, a1 = int(self.arc_offsets[t]), int(self.arc_offsets[t + 1])
            src, dst = self.arc_src[a0:a1], self.arc_dst[a0:a1]
            weight = scores[a0:a1] + beta[dst]  # (A_t,)
            logits = torch.where(src.unsqueeze(0) == current.unsqueeze(1), weight.unsqueeze(0),
                                 neg_inf)
            uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64,
                                 device=noise_device).to(device)
            gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-300)))
            choice = torch.argmax(logits + gumbel, dim=1)  # Gumbel-max sampling
            chosen.append(choice + a0)
            current = dst[choice]
        if not chosen:
            return [[] for _ in range(num_paths)]
        return torch.stack(chosen, dim=1).tolist()

    def total_scores(self, sequences: list[list[int]], use_words: bool = False) -> torch.Tensor:
        """Log-sum of the scores of all complete paths whose token sequence
        (or word sequence, with use_words) equals each sequence: the lattice
        intersected with each sequence, in the log semiring.

        Returns:
          (K,) float64, -inf for sequences the lattice does not hold.
        """
        device = self.arc_score.device
        num_seqs = len(sequences)
        if num_seqs == 0:
            return torch.zeros(0, dtype=torch.float64, device=device)
        max_len = max(len(seq) for seq in sequences)
        # Position len(seq) and beyond hold -1, which no arc outputs (built
        # in Python: one copy to the device, not one per sequence).
        padded = torch.tensor([list(seq) + [-1] * (max_len + 1 - len(seq)) for seq in sequences],
                              dtype=torch.int64, device=device)
        lengths = torch.tensor([len(seq) for seq in sequences], device=device)
        outputs = self.arc_word if use_words else self.arc_label
        scores = self.arc_score.double()

        # Sparse forward pass over the reachable triples (k, state, p): alpha
        # is the log-sum of the paths to `state` that output the first p
        # symbols of sequence k (states local to their frame).
        seq_id = torch.arange(num_seqs, device=device)
        state = torch.zeros(num_seqs, dtype=torch.int64, device=device)
        position = torch.zeros(num_seqs, dtype=torch.int64, device=device)
        alpha = torch.zeros(num_seqs, dtype=torch.float64, device=device)
        for t in range(self.num_frames):
            a0, a1 = int(self.arc_offsets[t]), int(self.arc_offsets[t + 1])
            s0, s1 = int(self.state_offsets[t]), int(self.state_offsets[t + 1])
            num_src = s1 - s0
            arc_src = self.arc_src[a0:a1] - s0
            by_src = torch.argsort(arc_src, stable=True)
            out_degree = torch.bincount(arc_src, minlength=num_src)
            first_arc = torch.cumsum(out_degree, 0) - out_degree
            # every triple followed along every arc leaving its state
            degree = out_degree[state]
            which = torch.repeat_interleave(torch.arange(state.numel(), device=device), degree)
            offset = (torch.arange(which.numel(), device=device)
                      - (torch.cumsum(degree, 0) - degree)[which])
            arc = by_src[first_arc[state[which]] + offset] + a0
            k, p = seq_id[which], position[which]
            out = outputs[arc]
            silent = out == 0
            ok = silent | (padded[k, p] == out)
            k, arc, new_p = k[ok], arc[ok], (p + (~silent).long())[ok]
            values = alpha[which[ok]] + scores[arc]
            keys = torch.stack([k, self.arc_dst[arc] - s1, new_p], dim=1)
            triples, inverse = _unique_rows(keys)
            seq_id, state, position = triples[:, 0], triples[:, 1], triples[:, 2]
            alpha = _segment_logsumexp(values, inverse, triples.size(0))
        first = int(self.state_offsets[self.num_frames])
        done = position == lengths[seq_id]
        ends = alpha[done] + self.final_score[first + state[done]].double()
        totals = torch.full((num_seqs,), NEG_INF, dtype=torch.float64, device=device)
        if ends.numel():
            totals = _segment_logsumexp(ends, seq_id[done], num_seqs)
        return totals


class FastBeamSearchStream:
    """The fast-beam-search state of one utterance: the active states
    (graph state, context, score) after the frames consumed so far, and the
    lattice of those frames.  Advance it with `FastBeamSearchStreams`.

    Args:
      graph: the decoding graph (trivial or LG).
      context_size: the decoder's context size.
      blank_id: the blank token (the initial context is all blanks).
      ngram_lm_scale: multiplies every graph score (arcs, back-off links and
        final scores); irrelevant for the trivial graph, whose scores are 0.
    """

    def __init__(
        self, graph: DecodingGraph, context_size: int, blank_id: int = 0,
        ngram_lm_scale: float = 1.0,
    ) -> None:
        self.graph = graph
        self.context_size = context_size
        self.blank_id = blank_id
        self.ngram_lm_scale = ngram_lm_scale
        device = graph.device
        # Active states (those of the last frame).
        self.graph_states = torch.tensor([graph.start_state], dtype=torch.int64, device=device)
        self.contexts = torch.full((1, context_size), blank_id, dtype=torch.int64, device=device)
        self.scores = torch.zeros(1, dtype=torch.float32, device=device)
        # Lattice, one entry per frame (states: one more, for the start).
        self._state_graph = [self.graph_states]
        self._state_score = [self.scores]
        self._state_best_arc = [torch.full((1,), -1, dtype=torch.int64, device=device)]
        self._arcs: list[tuple[torch.Tensor, ...]] = []  # (src, dst, label, word, score)

    @property
    def num_frames(self) -> int:
        """Encoder frames consumed so far."""
        return len(self._arcs)

    @property
    def num_active_states(self) -> int:
        return self.graph_states.numel()

    def _append_frame(
        self, arcs: tuple[torch.Tensor, ...], graph_states: torch.Tensor,
        contexts: torch.Tensor, scores: torch.Tensor, best_arc: torch.Tensor,
    ) -> None:
        """arcs = (src, dst, label, word, score) with src/dst/best_arc local to
        the frame (indices into the previous / new active states and arcs)."""
        self._arcs.append(arcs)
        self._state_graph.append(graph_states)
        self._state_score.append(scores)
        self._state_best_arc.append(best_arc)
        self.graph_states, self.contexts, self.scores = graph_states, contexts, scores

    def lattice(self) -> Lattice:
        """The lattice of the frames consumed so far."""
        device = self.graph_states.device
        state_counts = torch.tensor([g.numel() for g in self._state_graph], device=device)
        arc_counts = torch.tensor([a[0].numel() for a in self._arcs], dtype=torch.int64,
                                  device=device)
        zero = torch.zeros(1, dtype=torch.int64, device=device)
        state_offsets = torch.cat([zero, torch.cumsum(state_counts, 0)])
        arc_offsets = torch.cat([zero, torch.cumsum(arc_counts, 0)])
        frame_of_arc = torch.repeat_interleave(torch.arange(len(self._arcs), device=device),
                                               arc_counts)

        def cat(i: int, dtype: torch.dtype) -> torch.Tensor:
            if not self._arcs:
                return torch.zeros(0, dtype=dtype, device=device)
            return torch.cat([a[i] for a in self._arcs])

        arc_src = cat(0, torch.int64) + state_offsets[frame_of_arc]
        arc_dst = cat(1, torch.int64) + state_offsets[frame_of_arc + 1]
        frame_of_state = torch.repeat_interleave(
            torch.arange(len(self._state_graph), device=device), state_counts)
        best_arc = torch.cat(self._state_best_arc)
        best_arc = torch.where(best_arc >= 0,
                               best_arc + arc_offsets[(frame_of_state - 1).clamp(min=0)], best_arc)
        state_graph = torch.cat(self._state_graph)
        final_score = torch.full(state_graph.shape, NEG_INF, dtype=torch.float32, device=device)
        last = int(state_offsets[-2])
        final_score[last:] = self.graph.final_score[state_graph[last:]] * self.ngram_lm_scale
        return Lattice(
            num_frames=self.num_frames,
            state_offsets=state_offsets,
            state_graph=state_graph,
            state_score=torch.cat(self._state_score),
            state_best_arc=best_arc,
            arc_offsets=arc_offsets,
            arc_src=arc_src,
            arc_dst=arc_dst,
            arc_label=cat(2, torch.int64),
            arc_word=cat(3, torch.int64),
            arc_score=cat(4, torch.float32),
            final_score=final_score,
        )

    def best_path(self, final: bool = True) -> LatticePath:
        """The best path so far; see `Lattice.best_path` (final=False gives
        the partial result of an unfinished utterance)."""
        return self.lattice().best_path(final=final)


class FastBeamSearchStreams:
    """Advances a batch of `FastBeamSearchStream`s together.

    All streams must use the same graph, context size and ngram_lm_scale.
    Each frame runs one decoder and one joiner call on the unique
    (utterance, context) pairs of all streams, and the expansion, merging and
    pruning of all streams as flat tensor operations.

    Args:
      model: the transducer (its decoder and joiner are used).
      streams: the streams to advance; they are updated in place.
      config: pruning settings.
    """

    def __init__(
        self, model: Transducer, streams: list[FastBeamSearchStream], config: FastBeamSearchConfig
    ) -> None:
        assert streams, "no streams"
        first = streams[0]
        for stream in streams:
            assert stream.graph is first.graph, "all streams must share one graph"
            assert stream.context_size == first.context_size == model.decoder.context_size
            assert stream.ngram_lm_scale == first.ngram_lm_scale
            assert stream.blank_id == first.blank_id == model.decoder.blank_id
        self.model = model
        self.streams = streams
        self.config = config
        self.graph = first.graph
        self.context_size = first.context_size
        self.blank_id = first.blank_id
        self.ngram_lm_scale = first.ngram_lm_scale

    @torch.no_grad()
    def advance(
        self, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor | None = None
    ) -> None:
        """Consumes encoder frames: stream n gets encoder_out[n, :lens[n]].

        Args:
          encoder_out: (N, T, encoder_dim), N = number of streams (a chunk in
            streaming, or whole utterances).
          encoder_out_lens: (N,) valid frames of each stream in this call
            (default: all T).
        """
        num_streams = len(self.streams)
        assert encoder_out.ndim == 3 and encoder_out.size(0) == num_streams, encoder_out.shape
        num_frames = encoder_out.size(1)
        device = encoder_out.device
        if encoder_out_lens is None:
            lens = torch.full((num_streams,), num_frames, dtype=torch.int64, device=device)
        else:
            lens = encoder_out_lens.to(device=device, dtype=torch.int64)
        encoder_proj = self.model.joiner.encoder_proj(encoder_out)  # (N, T, J)

        counts = torch.tensor([s.num_active_states for s in self.streams], device=device)
        stream_id = torch.repeat_interleave(torch.arange(num_streams, device=device), counts)
        graph_states = torch.cat([s.graph_states for s in self.streams])
        contexts = torch.cat([s.contexts for s in self.streams])
        scores = torch.cat([s.scores for s in self.streams])

        max_t = min(num_frames, int(lens.max()) if num_streams else 0)
        for t in range(max_t):
            stream_active = lens > t
            if bool(stream_active.all()):
                selected = None
                sel = (stream_id, graph_states, contexts, scores)
            else:
                selected = stream_active[stream_id]
                sel = (stream_id[selected], graph_states[selected], contexts[selected],
                       scores[selected])
            new_states, frame_arcs, best_arc = self._step(*sel, encoder_proj[:, t])
            self._record(sel[0], new_states, frame_arcs, best_arc, stream_active)
            if selected is None:
                stream_id, graph_states, contexts, scores = new_states
            else:
                merged = [torch.cat([old[~selected], new])
                          for old, new in zip((stream_id, graph_states, contexts, scores),
                                              new_states)]
                order = torch.argsort(merged[0], stable=True)
                stream_id, graph_states, contexts, scores = (x[order] for x in merged)

    def _step(
        self, stream_id: torch.Tensor, graph_states: torch.Tensor, contexts: torch.Tensor,
        scores: torch.Tensor, encoder_proj: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor]:
        """One frame for the states of the active streams.

        Args:
          stream_id, graph_states, contexts, scores: (S,), (S,), (S, c), (S,)
            the active states, grouped by stream_id (non-decreasing).
          encoder_proj: (N, joiner_dim) this frame of every stream.
        Returns:
          ((stream_id, graph_states, contexts, scores) of the new states,
          grouped by stream; (src, dst, label, word, score) of the kept arcs,
          src/dst indexing the old/new states, sorted by dst; best_arc (D,),
          the best incoming arc of each new state).
        """
        graph, config, device = self.graph, self.config, stream_id.device
        num_streams = encoder_proj.size(0)
        num_states = stream_id.numel()
        context_size = self.context_size

        # Network: one row per unique (stream, context).
        keys = torch.cat([stream_id.unsqueeze(1), contexts], dim=1)
        unique_keys, state_to_context = _unique_rows(keys)
        log_probs = _log_probs(
            self.model, encoder_proj[unique_keys[:, 0]],
            _decoder_proj(self.model, unique_keys[:, 1:]), config.temperature,
        )  # (C, V)

        # Blank arcs: one per state, to the same (graph state, context).
        blank_src = torch.arange(num_states, device=device)
        blank_score = log_probs[state_to_context, self.blank_id]
        # Token arcs: every graph arc leaving the state or its back-off chain.
        closure, closure_score, origin = graph.backoff_closure(
            graph_states, torch.zeros(num_states, dtype=torch.float32, device=device))
        begin = graph.state_arc_begin[closure]
        num_arcs = graph.state_arc_end[closure] - begin
        which = torch.repeat_interleave(torch.arange(closure.numel(), device=device), num_arcs)
        first_of = torch.cumsum(num_arcs, 0) - num_arcs
        graph_arc = begin[which] + torch.arange(which.numel(), device=device) - first_of[which]
        token_src = origin[which]
        token_label = graph.arc_label[graph_arc]
        token_score = (log_probs[state_to_context[token_src], token_label]
                       + self.ngram_lm_scale * (closure_score[which] + graph.arc_score[graph_arc]))

        src = torch.cat([blank_src, token_src])
        label = torch.cat([torch.full_like(blank_src, self.blank_id), token_label])
        word = torch.cat([torch.zeros_like(blank_src), graph.arc_word[graph_arc]])
        dst_graph = torch.cat([graph_states, graph.arc_dst[graph_arc]])
        arc_score = torch.cat([blank_score, token_score])
        total = scores[src] + arc_score

        # (1) beam pruning of arcs, per stream
        arc_stream = stream_id[src]
        best = _segment_max(total, arc_stream, num_streams)
        keep = total >= best[arc_stream] - config.beam
        src, label, word, dst_graph, arc_score, total, arc_stream = (
            x[keep] for x in (src, label, word, dst_graph, arc_score, total, arc_stream))
        is_token = label != self.blank_id
        new_context = torch.where(
            is_token.unsqueeze(1),
            torch.cat([contexts[src, 1:], label.unsqueeze(1)], dim=1),
            contexts[src],
        )

        # Merge arcs into states (stream, graph state, context).
        dst_keys = torch.cat([arc_stream.unsqueeze(1), dst_graph.unsqueeze(1), new_context], 1)
        state_keys, dst = _unique_rows(dst_keys)
        if graph.max_backoff_depth > 0:
            # Back-off chains can give the same (src, dst, label, word) twice:
            # keep the best such arc.
            arc_keys = torch.stack([src, dst, label, word], dim=1)
            unique_arcs, arc_inverse = _unique_rows(arc_keys)
            best_total = _segment_max(total, arc_inverse, unique_arcs.size(0))
            winner = torch.full((unique_arcs.size(0),), total.numel(), dtype=torch.int64,
                                device=device)
            is_best = total == best_total[arc_inverse]
            winner = winner.scatter_reduce(0, arc_inverse[is_best],
                                           torch.arange(total.numel(), device=device)[is_best],
                                           reduce="amin")
            src, dst, label, word, arc_score, total = (
                x[winner] for x in (src, dst, label, word, arc_score, total))
        num_new = state_keys.size(0)
        new_stream = state_keys[:, 0]
        new_score = _segment_max(total, dst, num_new)

        # (2) max_contexts: the best contexts of each stream
        ctx_keys = torch.cat([state_keys[:, :1], state_keys[:, 2:]], dim=1)
        unique_ctx, state_to_ctx = _unique_rows(ctx_keys)
        ctx_score = _segment_max(new_score, state_to_ctx, unique_ctx.size(0))
        ctx_rank = _rank_within_groups(unique_ctx[:, 0], ctx_score, num_streams)
        keep_state = (ctx_rank < config.max_contexts)[state_to_ctx]
        # (3) max_states: the best surviving states of each stream
        ranked_score = torch.where(keep_state, new_score, torch.full_like(new_score, NEG_INF))
        state_rank = _rank_within_groups(new_stream, ranked_score, num_streams)
        keep_state &= state_rank < config.max_states

        new_index = torch.cumsum(keep_state, 0) - 1
        keep_arc = keep_state[dst]
        src, dst, label, word, arc_score, total = (
            x[keep_arc] for x in (src, dst, label, word, arc_score, total))
        dst = new_index[dst]
        state_keys, new_score = state_keys[keep_state], new_score[keep_state]
        order = torch.argsort(dst, stable=True)
        src, dst, label, word, arc_score, total = (
            x[order] for x in (src, dst, label, word, arc_score, total))
        # Best incoming arc of each state (the first among equals).
        is_best = total == new_score[dst]
        best_arc = torch.full((state_keys.size(0),), total.numel(), dtype=torch.int64,
                              device=device)
        best_arc = best_arc.scatter_reduce(0, dst[is_best],
                                           torch.arange(total.numel(), device=device)[is_best],
                                           reduce="amin")
        new_states = (state_keys[:, 0], state_keys[:, 1], state_keys[:, 2:2 + context_size],
                      new_score)
        return new_states, (src, dst, label, word, arc_score), best_arc

    def _record(
        self, old_stream_id: torch.Tensor, new_states: tuple[torch.Tensor, ...],
        arcs: tuple[torch.Tensor, ...], best_arc: torch.Tensor, stream_active: torch.Tensor,
    ) -> None:
        """Appends one frame to the lattice of every active stream, with
        indices made local to the stream."""
        num_streams = len(self.streams)
        new_stream_id = new_states[0]
        old_counts = torch.bincount(old_stream_id, minlength=num_streams)
        new_counts = torch.bincount(new_stream_id, minlength=num_streams)
        old_start = torch.cumsum(old_counts, 0) - old_counts
        new_start = torch.cumsum(new_counts, 0) - new_counts
        src, dst, label, word, score = arcs
        arc_stream = new_stream_id[dst]
        arc_counts = torch.bincount(arc_stream, minlength=num_streams)
        arc_start = torch.cumsum(arc_counts, 0) - arc_counts
        local = (src - old_start[arc_stream], dst - new_start[arc_stream], label, word, score)
        local_best = best_arc - arc_start[new_stream_id]
        arc_parts = [torch.split(x, arc_counts.tolist()) for x in local]
        state_parts = [torch.split(x, new_counts.tolist())
                       for x in (new_states[1], new_states[2], new_states[3], local_best)]
        for n in stream_active.nonzero().flatten().tolist():
            self.streams[n]._append_frame(
                tuple(part[n] for part in arc_parts),
                graph_states=state_parts[0][n], contexts=state_parts[1][n],
                scores=state_parts[2][n], best_arc=state_parts[3][n],
            )


def _make_streams(
    model: Transducer, decoding_graph: DecodingGraph, batch_size: int, ngram_lm_scale: float
) -> list[FastBeamSearchStream]:
    return [FastBeamSearchStream(decoding_graph, model.decoder.context_size,
                                 model.decoder.blank_id, ngram_lm_scale)
            for _ in range(batch_size)]


@torch.no_grad()
def fast_beam_search(
    model: Transducer,
    decoding_graph: DecodingGraph,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float = 20.0,
    max_states: int = 64,
    max_contexts: int = 8,
    temperature: float = 1.0,
    ngram_lm_scale: float = 1.0,
) -> list[Lattice]:
    """Fast beam search of whole utterances (see the module docstring).

    Args:
      model: the transducer.
      decoding_graph: `trivial_graph(vocab_size)` or an LG graph
        (`load_decoding_graph`), on encoder_out's device.
      encoder_out: (N, T, encoder_dim).
      encoder_out_lens: (N,) valid frames per utterance.
      beam, max_states, max_contexts, temperature: see `FastBeamSearchConfig`.
      ngram_lm_scale: multiplies the graph's scores.
    Returns:
      N lattices.
    """
    config = FastBeamSearchConfig(beam, max_states, max_contexts, temperature)
    streams = _make_streams(model, decoding_graph, encoder_out.size(0), ngram_lm_scale)
    FastBeamSearchStreams(model, streams, config).advance(encoder_out, encoder_out_lens)
    return [stream.lattice() for stream in streams]


@torch.no_grad()
def fast_beam_search_one_best(
    model: Transducer,
    decoding_graph: DecodingGraph,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float = 20.0,
    max_states: int = 64,
    max_contexts: int = 8,
    temperature: float = 1.0,
    ngram_lm_scale: float = 1.0,
    return_words: bool = False,
) -> list[list[int]]:
    """Fast beam search, then the best path of each lattice.

    Args: as `fast_beam_search`, plus
      return_words: return the word ids the graph outputs along the best
        path (for LG) instead of its tokens.
    Returns:
      N lists of token ids (or word ids); empty when no final state survived.
    """
    lattices = fast_beam_search(model, decoding_graph, encoder_out, encoder_out_lens, beam,
                                max_states, max_contexts, temperature, ngram_lm_scale)
    paths = [lattice.best_path() for lattice in lattices]
    return [path.words if return_words else path.tokens for path in paths]


@torch.no_grad()
def fast_beam_search_LG(
    model: Transducer,
    decoding_graph: DecodingGraph,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float = 20.0,
    max_states: int = 64,
    max_contexts: int = 8,
    temperature: float = 1.0,
    ngram_lm_scale: float = 0.01,
) -> list[list[int]]:
    """`fast_beam_search_one_best` with an LG graph: N lists of word ids."""
    return fast_beam_search_one_best(model, decoding_graph, encoder_out, encoder_out_lens, beam,
                                     max_states, max_contexts, temperature, ngram_lm_scale,
                                     return_words=True)


def nbest_best_sequence(
    lattice: Lattice,
    num_paths: int,
    nbest_scale: float = 0.5,
    use_words: bool = False,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The n-best rescoring of icefall's fast_beam_search_nbest on one lattice.

    The n-best list is the best (Viterbi) path followed by num_paths - 1
    paths sampled with scores multiplied by `nbest_scale` (so num_paths = 1
    gives exactly the best path; icefall samples all num_paths).  Their token
    (or word) sequences are made unique, each is scored by the log-sum of
    all lattice paths carrying it (`Lattice.total_scores`, unscaled), and
    the best wins (the earlier one among equals).

    Returns:
      The token (or word, with use_words) ids; [] if the lattice has no
      complete path.
    """
    assert num_paths >= 1, num_paths
    best = lattice.best_path()
    if best.score == NEG_INF:
        return []
    paths = [best.arcs] + lattice.random_paths(num_paths - 1, nbest_scale, generator)
    outputs = lattice.arc_word if use_words else lattice.arc_label
    sequences: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    for arcs in paths:
        symbols = outputs[arcs].tolist() if arcs else []
        seq = tuple(s for s in symbols if s != 0)
        if seq not in seen:
            seen.add(seq)
            sequences.append(list(seq))
    scores = lattice.total_scores(sequences, use_words=use_words)
    return sequences[int(torch.argmax(scores))]


@torch.no_grad()
def fast_beam_search_nbest(
    model: Transducer,
    decoding_graph: DecodingGraph,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float = 20.0,
    max_states: int = 64,
    max_contexts: int = 8,
    num_paths: int = 200,
    nbest_scale: float = 0.5,
    temperature: float = 1.0,
    ngram_lm_scale: float = 1.0,
    return_words: bool = False,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Fast beam search, then n-best rescoring of each lattice
    (`nbest_best_sequence`): of the sampled paths' unique sequences, the one
    with the best total score.

    Args: as `fast_beam_search`, plus
      num_paths: size of the n-best list (the best path plus random paths).
      nbest_scale: scores are multiplied by it for sampling (< 1 flattens the
        distribution, giving more distinct paths).
      return_words: unique by, and return, word sequences (for LG).
      generator: random generator for the sampling (default: torch's).
    Returns:
      N lists of token ids (or word ids).
    """
    lattices = fast_beam_search(model, decoding_graph, encoder_out, encoder_out_lens, beam,
                                max_states, max_contexts, temperature, ngram_lm_scale)
    return [nbest_best_sequence(lattice, num_paths, nbest_scale, return_words, generator)
            for lattice in lattices]


@torch.no_grad()
def fast_beam_search_nbest_LG(
    model: Transducer,
    decoding_graph: DecodingGraph,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float = 20.0,
    max_states: int = 64,
    max_contexts: int = 8,
    num_paths: int = 200,
    nbest_scale: float = 0.5,
    temperature: float = 1.0,
    ngram_lm_scale: float = 0.01,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """`fast_beam_search_nbest` with an LG graph, unique by word sequence:
    N lists of word ids."""
    return fast_beam_search_nbest(model, decoding_graph, encoder_out, encoder_out_lens, beam,
                                  max_states, max_contexts, num_paths, nbest_scale, temperature,
                                  ngram_lm_scale, return_words=True, generator=generator)
