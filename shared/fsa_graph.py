"""Decoding graphs (LG and the trivial graph) as PyTorch tensors.

This module is the one place that defines the decoding-graph format used by
`fast_beam_search` / `fast_beam_search_LG`. k2 is not available, so a graph is
a weighted finite-state transducer stored as flat tensors: one entry per arc,
arcs grouped by source state (CSR layout), plus at most one back-off link per
state.

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
"""

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import kaldifst
import numpy as np
import torch


@dataclass
class DecodingGraph:
    """A decoding graph; see the module docstring for the conventions.

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
