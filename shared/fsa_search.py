"""Fast beam search: the FSA-constrained transducer search of k2's
`RnntDecodingStreams` (Kang et al. 2022, arXiv 2211.00484), reimplemented in
PyTorch, with its decoding graphs and lattices.

k2 is not available, so this module is the one home of what k2 gives
icefall's `fast_beam_search*` methods, in this order:

* decoding graphs as tensors (`DecodingGraph`): LG read from an OpenFst file
  (`load_decoding_graph`; local/compile_lg.py builds it with `fst_to_arrays`
  and `arrays_to_fst`), the trivial graph (`trivial_graph`), and the word
  table of LG's outputs (`read_word_table`, `word_ids_to_words`);
* the search: `FastBeamSearchStream` (one utterance's search state and
  lattice so far), `FastBeamSearchStreams` (advances a batch of them by some
  encoder frames), `Lattice` (best path, random paths, total scores);
* icefall's functions on whole utterances: `fast_beam_search`,
  `fast_beam_search_one_best`, `fast_beam_search_LG`,
  `fast_beam_search_nbest`, `fast_beam_search_nbest_LG`.  beam_search.py
  imports them, so they are importable from there under icefall's names.

`model` is a transducer (pruned_transducer_stateless4/model.py); only
`model.decoder` and `model.joiner` are used, so any module with those two
attributes works (the tests use toy ones).

Decoding graphs
---------------
A graph is a weighted finite-state transducer stored as flat tensors: one
entry per arc, arcs grouped by source state (CSR layout), plus at most one
back-off link per state.

Conventions (they hold for every `DecodingGraph`, whatever its origin):

* States are 0 .. num_states - 1; `start_state` is where decoding begins.
* Arcs are epsilon-free: `arc_label` is a token id exactly as in
  data/lang_bpe_N/tokens.txt (no offset), always >= 1. The blank (token 0)
  never labels an arc (a transducer emits blank without moving in the graph),
  and every arc consumes exactly one non-blank token. Disambiguation symbols
  (#0, ...) never appear.
* Back-off links replace epsilon arcs. LG keeps the n-gram LM's back-off
  arcs, because removing them copies the lower-order states' arcs into every
  LM history (about 140x more arcs on a 5000-sentence corpus). They are stored
  per state, not as arcs: `backoff_state[s]` (-1 if none) and
  `backoff_score[s]`. A path may, at any point, move from s to
  backoff_state[s] without consuming a token, adding backoff_score[s]; links
  form chains (never cycles) of at most `max_backoff_depth` links. So the arcs
  that can consume the next token from state s are those of s, of
  backoff_state[s] (plus its score), of its back-off, and so on: see
  `backoff_closure`. A graph without back-off (`trivial_graph`, or an LG
  compiled with `--remove-backoff-epsilons true`) has max_backoff_depth == 0.
  Taking a back-off link is allowed even where the state has an arc for the
  token (as in Kaldi's and icefall's LG): Viterbi search prefers the better one.
* `arc_word` is the id (data/lang_bpe_N/words.txt) of the word an arc
  outputs, 0 if none. An arc outputs at most one word, and back-off links
  output none. In LG a word is output on the arc of the LAST token of its
  spelling, once it is complete, so the words of a path are the non-zero
  `arc_word` of its arcs in order (see `word_ids_to_words`).
* `arc_score` is a log-probability (natural log): the negated OpenFst
  tropical weight. The score of a path is the sum of its arc scores and
  back-off scores plus `final_score` of its last state. LG scores are the
  LM's log P(word | history) spread along the arcs (determinization pushes
  them towards the start), so a decoder scales them with its own
  `ngram_lm_scale`.
* `final_score[s]` is the log-probability of ending in state s (for LG, of
  the sentence end </s>), -inf if s is not final. It already includes ending
  through back-off links (the best of them), so a decoder never follows
  back-off links at the end. A token sequence is accepted iff some path
  labelled with it goes from `start_state` to a state with a finite
  final_score.
* Arcs are sorted by (arc_src, arc_label, arc_dst); the arcs leaving state s
  are arc indices state_arc_begin[s] <= a < state_arc_end[s], with
  state_arc_end[s] == state_arc_begin[s + 1]. Within a state the labels are
  non-decreasing, so the arcs for one token form a contiguous run, which may
  hold more than one arc: a token that completes one word and continues a
  longer one (THE / THEY) has one arc for each, and an LG compiled without
  back-off links is not deterministic.
* Integer tensors are torch.int64, so they index other tensors directly;
  score tensors are torch.float32.

Fast beam search
----------------
A decoding state is a pair (graph state g, decoder context c), where g is a
state of a `DecodingGraph` (above: the trivial one-state graph for
`fast_beam_search`, LG for the `_LG` methods) and c the last `context_size`
tokens (blanks at the start).  Each frame consumes exactly one encoder frame,
like modified beam search:

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
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import kaldifst
import numpy as np
import torch
import torch.nn as nn

NEG_INF = -math.inf


# ------------------------------------------------------------ decoding graphs


@dataclass
class DecodingGraph:
    """A decoding graph; see "Decoding graphs" in the module docstring.

    Attributes (A = number of arcs, S = number of states):
      arc_src: (A,) int64, source state of each arc; non-decreasing.
      arc_dst: (A,) int64, destination state of each arc.
      arc_label: (A,) int64, token id consumed by the arc, >= 1.
      arc_word: (A,) int64, word id output by the arc; 0 = no word.
      arc_score: (A,) float32, log-probability of taking the arc.
      final_score: (S,) float32, log-probability of ending in each state
        (through back-off links if that is better), -inf if not final.
      state_arc_begin: (S,) int64, index of the first arc leaving each state.
      state_arc_end: (S,) int64, one past the last arc leaving each state.
      backoff_state: (S,) int64, the state a back-off link leads to, -1 if none.
      backoff_score: (S,) float32, log-probability of the back-off link,
        -inf where backoff_state is -1.
      start_state: the state decoding begins in.
      max_backoff_depth: length of the longest chain of back-off links
        (0: the graph has none).
    """

    arc_src: torch.Tensor
    arc_dst: torch.Tensor
    arc_label: torch.Tensor
    arc_word: torch.Tensor
    arc_score: torch.Tensor
    final_score: torch.Tensor
    state_arc_begin: torch.Tensor
    state_arc_end: torch.Tensor
    backoff_state: torch.Tensor
    backoff_score: torch.Tensor
    start_state: int
    max_backoff_depth: int

    @property
    def num_states(self) -> int:
        return self.final_score.numel()

    @property
    def num_arcs(self) -> int:
        return self.arc_src.numel()

    @property
    def device(self) -> torch.device:
        return self.arc_src.device

    def to(self, device: torch.device | str) -> "DecodingGraph":
        """A copy with every tensor on `device`."""
        moved = {
            field.name: (
                value.to(device) if isinstance(value := getattr(self, field.name), torch.Tensor)
                else value
            )
            for field in fields(self)
        }
        return DecodingGraph(**moved)

    def __repr__(self) -> str:
        return (
            f"DecodingGraph(num_states={self.num_states}, num_arcs={self.num_arcs}, "
            f"start_state={self.start_state}, max_backoff_depth={self.max_backoff_depth}, "
            f"device={self.device})"
        )

    def backoff_closure(
        self, states: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every state reachable from `states` through back-off links.

        Args:
          states: (N,) int64 states, e.g. of the hypotheses of a beam.
          scores: (N,) float scores of being in them.
        Returns:
          (closure_states, closure_scores, origin), each (M,) with M >= N:
          the N inputs first, then the states one link away, two links away,
          ...; closure_scores adds the back-off scores along the way, and
          origin[m] is the index in `states` that entry m was reached from.
          The arcs that can consume the next token from states[n] are the
          arcs of closure_states[origin == n].
        """
        all_states, all_scores = [states], [scores]
        all_origins = [torch.arange(states.numel(), device=states.device)]
        for _ in range(self.max_backoff_depth):
            prev_states, prev_scores, prev_origins = all_states[-1], all_scores[-1], all_origins[-1]
            next_states = self.backoff_state[prev_states]
            has_link = next_states >= 0
            if not bool(has_link.any()):
                break
            all_states.append(next_states[has_link])
            all_scores.append(prev_scores[has_link] + self.backoff_score[prev_states[has_link]])
            all_origins.append(prev_origins[has_link])
        return torch.cat(all_states), torch.cat(all_scores), torch.cat(all_origins)

    @staticmethod
    def from_arcs(
        arc_src: torch.Tensor,
        arc_dst: torch.Tensor,
        arc_label: torch.Tensor,
        arc_word: torch.Tensor,
        arc_score: torch.Tensor,
        final_score: torch.Tensor,
        start_state: int,
    ) -> "DecodingGraph":
        """Builds a `DecodingGraph` from arcs in any order.

        Arcs with label 0 (epsilon) become back-off links: a state may have at
        most one, it must output no word, and the links must not form a
        cycle. The arcs are sorted, the CSR index is built, and final scores
        are maximized over back-off chains.

        Args:
          arc_src, arc_dst, arc_label, arc_word: (A,) integer tensors.
          arc_score: (A,) float tensor of log-probabilities.
          final_score: (S,) float tensor, -inf for non-final states.
          start_state: index in [0, S).
        Raises:
          ValueError: if the arcs do not satisfy the above.
        """
        num_states = final_score.numel()
        if not 0 <= start_state < num_states:
            raise ValueError(f"start state {start_state} is not in [0, {num_states})")
        arc_src, arc_dst, arc_label, arc_word = (
            t.to(torch.int64) for t in (arc_src, arc_dst, arc_label, arc_word)
        )
        arc_score = arc_score.to(torch.float32)
        final_score = final_score.to(torch.float32).clone()
        if arc_src.numel() and (
            int(arc_src.min()) < 0 or int(arc_src.max()) >= num_states
            or int(arc_dst.min()) < 0 or int(arc_dst.max()) >= num_states
        ):
            raise ValueError("an arc refers to a state outside [0, num_states)")
        if arc_label.numel() and int(arc_label.min()) < 0:
            raise ValueError("arc labels must be >= 0")

        is_epsilon = arc_label == 0
        eps_src = arc_src[is_epsilon]
        if bool((arc_word[is_epsilon] != 0).any()):
            raise ValueError("an epsilon arc outputs a word; only back-off epsilons are supported")
        if eps_src.numel() != eps_src.unique().numel():
            raise ValueError("a state has more than one epsilon arc")
        device = arc_src.device
        backoff_state = torch.full((num_states,), -1, dtype=torch.int64, device=device)
        backoff_state[eps_src] = arc_dst[is_epsilon]
        backoff_score = torch.full((num_states,), -math.inf, dtype=torch.float32, device=device)
        backoff_score[eps_src] = arc_score[is_epsilon]
        max_backoff_depth = _fold_backoff_into_final(backoff_state, backoff_score, final_score)

        keep = ~is_epsilon
        arc_src, arc_dst, arc_label, arc_word, arc_score = (
            t[keep] for t in (arc_src, arc_dst, arc_label, arc_word, arc_score)
        )
        # One stable sort per key, least significant first, gives (src, label, dst).
        order = torch.arange(arc_src.numel(), device=device)
        for key in (arc_dst, arc_label, arc_src):
            order = order[torch.sort(key[order], stable=True).indices]
        arc_src, arc_dst, arc_label, arc_word, arc_score = (
            t[order].contiguous() for t in (arc_src, arc_dst, arc_label, arc_word, arc_score)
        )
        arcs_per_state = torch.bincount(arc_src, minlength=num_states)
        state_arc_end = torch.cumsum(arcs_per_state, dim=0)
        return DecodingGraph(
            arc_src=arc_src,
            arc_dst=arc_dst,
            arc_label=arc_label,
            arc_word=arc_word,
            arc_score=arc_score,
            final_score=final_score,
            state_arc_begin=state_arc_end - arcs_per_state,
            state_arc_end=state_arc_end,
            backoff_state=backoff_state,
            backoff_score=backoff_score,
            start_state=int(start_state),
            max_backoff_depth=max_backoff_depth,
        )


def _fold_backoff_into_final(
    backoff_state: torch.Tensor, backoff_score: torch.Tensor, final_score: torch.Tensor
) -> int:
    """Sets final_score[s] to the best of ending in s or in a state that its
    back-off chain reaches (in place), and returns the longest chain length.

    Raises:
      ValueError: if back-off links form a cycle.
    """
    num_states = final_score.numel()
    # After d rounds, `reach`/`reach_score` hold the state d links down each
    # chain (-1 once a chain has ended) and the score of getting there.
    reach = backoff_state.clone()
    reach_score = backoff_score.clone()
    depth = 0
    while bool((reach >= 0).any()):
        depth += 1
        if depth > num_states:
            raise ValueError("back-off (epsilon) links form a cycle")
        active = reach >= 0
        via_backoff = reach_score[active] + final_score[reach[active]]
        final_score[active] = torch.maximum(final_score[active], via_backoff)
        next_reach = torch.full_like(reach, -1)
        next_reach[active] = backoff_state[reach[active]]
        next_score = torch.full_like(reach_score, -math.inf)
        next_score[active] = reach_score[active] + backoff_score[reach[active]]
        reach, reach_score = next_reach, next_score
    return depth


# --------------------------------------------------- OpenFst <-> flat arrays


@dataclass
class FstArrays:
    """An OpenFst StdVectorFst as NumPy arrays (A arcs, S states).

    Attributes:
      src, dst, ilabel, olabel: (A,) int64.
      weight: (A,) float32 tropical weights (-log-probabilities).
      final_weight: (S,) float32, +inf for non-final states (OpenFst's Zero).
      start: the start state, -1 for an empty FST.
    """

    src: np.ndarray
    dst: np.ndarray
    ilabel: np.ndarray
    olabel: np.ndarray
    weight: np.ndarray
    final_weight: np.ndarray
    start: int

    @property
    def num_states(self) -> int:
        return len(self.final_weight)


def fst_to_arrays(fst: kaldifst.StdVectorFst) -> FstArrays:
    """Reads every arc and final weight of `fst` (weights exactly, as float32)."""
    src, dst, ilabel, olabel, weight = [], [], [], [], []
    final_weight = np.empty(fst.num_states, dtype=np.float32)
    for state in range(fst.num_states):
        final_weight[state] = fst.final(state).value
        for arc in kaldifst.ArcIterator(fst, state):
            src.append(state)
            dst.append(arc.nextstate)
            ilabel.append(arc.ilabel)
            olabel.append(arc.olabel)
            weight.append(arc.weight.value)
    return FstArrays(
        src=np.asarray(src, dtype=np.int64),
        dst=np.asarray(dst, dtype=np.int64),
        ilabel=np.asarray(ilabel, dtype=np.int64),
        olabel=np.asarray(olabel, dtype=np.int64),
        weight=np.asarray(weight, dtype=np.float32),
        final_weight=final_weight,
        start=fst.start,
    )


def arrays_to_fst(arrays: FstArrays) -> kaldifst.StdVectorFst:
    """Builds a StdVectorFst with the same state numbering as `arrays`."""
    if arrays.start < 0:
        return kaldifst.StdVectorFst()
    lines = [
        f"{s}\t{d}\t{i}\t{o}\t{float(w)!r}"
        for s, d, i, o, w in zip(
            arrays.src.tolist(), arrays.dst.tolist(), arrays.ilabel.tolist(),
            arrays.olabel.tolist(), arrays.weight.tolist(),
        )
    ]
    lines += [
        f"{s}\t{float(w)!r}"
        for s, w in enumerate(arrays.final_weight.tolist())
        if not math.isinf(w)
    ]
    # fstcompile makes the state on the first line the start state, so the
    # start state's lines go first (the stable sort keeps the others' order).
    start_prefix = f"{arrays.start}\t"
    lines.sort(key=lambda line: not line.startswith(start_prefix))
    if not lines or not lines[0].startswith(start_prefix):
        raise ValueError("the start state has neither arcs nor a final weight")
    fst = kaldifst.compile("\n".join(lines) + "\n", keep_state_numbering=True)
    # Trailing states without arcs or finality are not mentioned in the text.
    while fst.num_states < arrays.num_states:
        fst.add_state()
    return fst


# ------------------------------------------------------------------ loading


def load_decoding_graph(path: Path, device: torch.device | str = "cpu") -> DecodingGraph:
    """Loads an OpenFst binary FST (e.g. data/lang_bpe_500/LG.fst) for decoding.

    Input labels become `arc_label` (token ids), output labels `arc_word`
    (word ids), weights are negated into scores, infinite final weights
    become -inf final scores, and epsilon arcs (LG's LM back-off arcs)
    become back-off links (see `DecodingGraph.from_arcs`).

    Args:
      path: an FST written by local/compile_lg.py (or any StdVectorFst whose
        input labels are token ids and output labels word ids).
      device: where the tensors go.
    Raises:
      FileNotFoundError: if `path` does not exist.
      ValueError: if the FST cannot be read or has no start state.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decoding graph {path} not found; run ./prepare.sh --stage 5")
    fst = kaldifst.StdVectorFst.read(os.fspath(path))
    if fst is None:
        raise ValueError(f"kaldifst could not read {path}")
    arrays = fst_to_arrays(fst)
    if arrays.start < 0:
        raise ValueError(f"{path} is an empty FST (no start state)")
    graph = DecodingGraph.from_arcs(
        arc_src=torch.from_numpy(arrays.src),
        arc_dst=torch.from_numpy(arrays.dst),
        arc_label=torch.from_numpy(arrays.ilabel),
        arc_word=torch.from_numpy(arrays.olabel),
        arc_score=-torch.from_numpy(arrays.weight),
        final_score=-torch.from_numpy(arrays.final_weight),
        start_state=arrays.start,
    )
    return graph.to(device)


def trivial_graph(vocab_size: int, device: torch.device | str = "cpu") -> DecodingGraph:
    """The graph that accepts every token sequence with score 0.

    One state (0: start and final with score 0) with a self-loop for every
    non-blank token 1 .. vocab_size - 1 (score 0, no word). It is what plain
    `fast_beam_search` uses (k2.trivial_graph(vocab_size - 1) in icefall).

    Args:
      vocab_size: number of tokens including the blank (token 0).
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (blank plus a token), not {vocab_size}")
    # Built on `device` directly: streams make it on demand, mid-decoding.
    labels = torch.arange(1, vocab_size, dtype=torch.int64, device=device)
    zeros = torch.zeros_like(labels)
    return DecodingGraph.from_arcs(
        arc_src=zeros,
        arc_dst=zeros,
        arc_label=labels,
        arc_word=zeros,
        arc_score=torch.zeros_like(labels, dtype=torch.float32),
        final_score=torch.zeros(1, device=device),
        start_state=0,
    )


# -------------------------------------------------------------------- words


def read_word_table(path: Path) -> dict[int, str]:
    """Reads words.txt ("<word> <id>" per line) into {id: word}."""
    id2word: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields_ = line.split()
            if len(fields_) == 2:
                id2word[int(fields_[1])] = fields_[0]
    return id2word


def word_ids_to_words(
    word_ids: Iterable[int] | torch.Tensor, id2word: Mapping[int, str]
) -> list[str]:
    """Maps the `arc_word` values along a path to words, dropping 0 (no word).

    Args:
      word_ids: word ids in path order, e.g. graph.arc_word[path_arcs].
      id2word: from `read_word_table`.
    Raises:
      KeyError: for an id that is not in the table.
    """
    if isinstance(word_ids, torch.Tensor):
        word_ids = word_ids.tolist()
    return [id2word[word_id] for word_id in word_ids if word_id != 0]


# ------------------------------------------------------------------ scoring
# Decoder and joiner calls, shared with beam_search.py's beam searches, which
# import them from here (this module cannot import beam_search.py, which
# imports this one).


def _decoder_proj(model: nn.Module, contexts: torch.Tensor) -> torch.Tensor:
    """(H, context_size) token ids -> (H, joiner_dim) projected decoder output."""
    decoder_out = model.decoder(contexts, need_pad=False)  # (H, 1, decoder_dim)
    return model.joiner.decoder_proj(decoder_out).squeeze(1)


def _log_probs(
    model: nn.Module, encoder_proj: torch.Tensor, decoder_proj: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(H, joiner_dim) x 2, already projected -> (H, vocab_size) float32 log-probs."""
    logits = model.joiner(encoder_proj, decoder_proj, project_input=False)
    return (logits.float() / temperature).log_softmax(dim=-1)


# ------------------------------------------------- segment and row operations


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


# --------------------------------------------------------- fast beam search


@dataclass
class FastBeamSearchConfig:
    """Pruning of `FastBeamSearchStreams` (see "Fast beam search" in the
    module docstring).

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
        self, model: nn.Module, streams: list[FastBeamSearchStream], config: FastBeamSearchConfig
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


# ------------------------------------ whole utterances: icefall's functions


def _make_streams(
    model: nn.Module, decoding_graph: DecodingGraph, batch_size: int, ngram_lm_scale: float
) -> list[FastBeamSearchStream]:
    return [FastBeamSearchStream(decoding_graph, model.decoder.context_size,
                                 model.decoder.blank_id, ngram_lm_scale)
            for _ in range(batch_size)]


@torch.no_grad()
def fast_beam_search(
    model: nn.Module,
    decoding_graph: DecodingGraph,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float = 20.0,
    max_states: int = 64,
    max_contexts: int = 8,
    temperature: float = 1.0,
    ngram_lm_scale: float = 1.0,
) -> list[Lattice]:
    """Fast beam search of whole utterances (see "Fast beam search" in the
    module docstring).

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
    model: nn.Module,
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
    model: nn.Module,
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
    model: nn.Module,
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
    model: nn.Module,
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
