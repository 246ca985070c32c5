"""Contextual biasing (hotwords): an Aho-Corasick automaton over BPE pieces.

Every phrase of a context file (one a line) is encoded into BPE token ids and
inserted into a trie.  Decoding walks the trie token by token along each
hypothesis (``ContextGraph.forward_one_step``):

* a token that continues a phrase earns ``context_score`` (the bonus is
  added to the hypothesis' log-probability while the phrase is matched);
* a token that breaks the match takes the bonus back: the hypothesis falls
  back along the failure links to the longest suffix of what it matched that
  is a prefix of some phrase, and its score becomes that prefix's bonus
  (``fail`` of Aho-Corasick);
* a token that completes a phrase (or a phrase that ends inside the match, a
  dictionary suffix link) locks the bonus of that phrase in and goes back to
  the root, so the next phrase starts afresh;
* at the end of the utterance an unfinished match is taken back
  (``finalize``).

So a hypothesis gains ``len(tokens) * context_score`` for each phrase it
contains, and nothing for a partial phrase.  ``modified_beam_search``
(beam_search.py) adds the bonus inside its top-k over all extensions, so
phrases survive the pruning.  The whole-utterance search (decode.py,
pretrained.py) takes unfinished bonuses back before it picks the result; the
streaming search (streaming_decode.py, the server) picks its partial and final
results from the beam as it is, so a phrase still being matched at the very
end of a stream keeps its bonus there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(eq=False)
class ContextState:
    """A node of the trie.

    Attributes:
      token: the token id on the arc into this node (-1 for the root).
      level: number of tokens from the root.
      node_score: bonus of the match that ends here (level * context_score).
      is_end: a phrase ends here.
      next: child nodes by token.
      fail: the longest proper suffix of this node's tokens that is a trie node.
      output: the nearest node along the failure links where a phrase ends
        (a phrase that is a suffix of this node's match), or None.
    """

    token: int
    level: int
    node_score: float
    is_end: bool = False
    next: dict[int, ContextState] = field(default_factory=dict)
    fail: ContextState | None = None
    output: ContextState | None = None


class ContextGraph:
    """The automaton of a list of phrases (token id sequences)."""

    def __init__(self, phrases: Iterable[list[int]], context_score: float) -> None:
        if context_score < 0:
            raise ValueError(f"context score must be >= 0, got {context_score}")
        self.context_score = context_score
        self.root = ContextState(token=-1, level=0, node_score=0.0)
        self.root.fail = self.root
        self.num_phrases = 0
        for tokens in phrases:
            if tokens:
                self._insert(tokens)
                self.num_phrases += 1
        self._link()

    def _insert(self, tokens: list[int]) -> None:
        node = self.root
        for token in tokens:
            if token not in node.next:
                node.next[token] = ContextState(token, node.level + 1,
                                                (node.level + 1) * self.context_score)
            node = node.next[token]
        node.is_end = True

    def _link(self) -> None:
        """Failure and output links, breadth first."""
        queue = deque()
        for child in self.root.next.values():
            child.fail = self.root
            queue.append(child)
        while queue:
            node = queue.popleft()
            for token, child in node.next.items():
                fail = node.fail
                while fail is not self.root and token not in fail.next:
                    fail = fail.fail
                child.fail = fail.next.get(token, self.root)
                if child.fail is child:
                    child.fail = self.root
                child.output = child.fail if child.fail.is_end else child.fail.output
                queue.append(child)

    def forward_one_step(self, state: ContextState | None,
                         token: int) -> tuple[float, ContextState]:
        """(score change, next state) after `token` from `state` (None: root)."""
        state = state or self.root
        node = state
        while node is not self.root and token not in node.next:
            node = node.fail
        target = node.next.get(token, self.root)
        if target.is_end:
            return target.node_score - state.node_score, self.root
        if target.output is not None:
            return target.output.node_score - state.node_score, self.root
        return target.node_score - state.node_score, target

    def finalize(self, state: ContextState | None) -> float:
        """Score change at the end of an utterance: an unfinished match is
        taken back."""
        return -(state or self.root).node_score

    def bonus_row(self, state: ContextState | None, vocab_size: int,
                  blank_id: int) -> tuple[float, dict[int, float]]:
        """The score change of every token from `state`, sparsely.

        Returns:
          (default, exceptions): token v changes the score by exceptions[v]
          if present, else by default; blank changes nothing (0).
        """
        state = state or self.root
        exceptions = {blank_id: 0.0}
        node = state
        while True:
            for token in node.next:
                if token not in exceptions:
                    exceptions[token] = self.forward_one_step(state, token)[0]
            if node is self.root:
                break
            node = node.fail
        return -state.node_score, exceptions


def read_context_file(path: Path, sp) -> list[list[int]]:
    """Token ids of every phrase of a context file (one phrase a line; case
    is matched to the BPE model's, whose training text is upper case)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"context file {path} not found")
    phrases = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not phrases:
        raise ValueError(f"context file {path} holds no phrase")
    return [sp.encode(phrase.upper()) for phrase in phrases]


def add_context_arguments(parser) -> None:
    """--context-file and --context-score (icefall's names and default)."""
    parser.add_argument("--context-file", type=Path, default=None,
                        help="Hotwords of the methods that take them, one phrase a line; their "
                        "tokens get --context-score each while matched (context_graph.py).")
    parser.add_argument("--context-score", type=float, default=2.0,
                        help="Bonus per token of a --context-file phrase (log-probability).")


def context_graph_of(params, sp) -> ContextGraph | None:
    """The graph of parsed --context-file/--context-score options, or None;
    a one-line RecipeError for a bad file, score or decoding method."""
    # decoding_methods.py imports this module for the options.
    from pruned_transducer_stateless4.decoding_methods import DECODING_METHODS, get_method
    from shared.utils import RecipeError

    if params.get("context_file") is None:
        return None
    if not get_method(params["decoding_method"]).uses_context:
        takers = [m.name for m in DECODING_METHODS.values() if m.uses_context]
        raise RecipeError(f"--context-file works with --decoding-method {' or '.join(takers)}")
    try:
        return make_context_graph(params["context_file"], params["context_score"], sp)
    except ValueError as error:
        raise RecipeError(str(error)) from error


def context_key(params) -> str:
    """What result file names add for --context-file: _context_score_S."""
    if params.get("context_file") is None:
        return ""
    return f"_context_score_{params['context_score']}"


def make_context_graph(context_file: Path | None, context_score: float, sp) -> ContextGraph | None:
    """The graph of --context-file / --context-score, or None without a file."""
    if context_file is None:
        return None
    return ContextGraph(read_context_file(context_file, sp), context_score)
