"""Compiles LG = L o G (local/compile_lg.py, stage 5 of prepare.sh): token ids
in, word ids out, at most one word per arc (on the last token of the word),
and no epsilon arcs except the LM's back-off arcs.

Every graph operation is an OpenFst one, through kaldifst:

 1. Relabel L's last arc of every word with a "word-end code"
    (code_offset + word id) on the input side. Other input labels stay token
    ids; "#0" keeps its token-side id. Words stay on L's first arcs so that
    composition with G is pruned as soon as a word starts.
 2. LG = compose(arcsort(L, olabel), arcsort(G, ilabel)), trimmed.
 3. Turn LG into an acceptor over codes (output label := input label). The
    codes still say everything: the word is named by its word-end code.
 4. determinize, then minimize. Over codes, L o G is determinizable with
    only G's "#0" as disambiguator: a word that is a prefix of another (THE /
    THEY) ends with a different code than the longer word's continuation, and
    "#0" separates G's back-off paths. Words sharing leading tokens now share
    arcs (a prefix tree per LM history), and LM weights are pushed towards
    the start, which a beam search likes.
 5. Decode codes: a token id maps to (token, no word), a word-end code to
    (last token of the word, word), "#0" to epsilon.
 6. With remove_backoff_epsilons (compile_lg.py --remove-backoff-epsilons true),
    rmepsilon. Then connect, arcsort.

Why not determinize the transducer as icefall does with k2: OpenFst delays
outputs and emits the left-over word of a final state on an input-epsilon arc;
after the disambiguators are erased such arcs remain, and removing them needs
arcs with several words. Emitting each word on its last token avoids both.

Why the back-off epsilons stay by default: removing them copies into every LM
history state the arcs of the histories it backs off to (about one arc per
distinct first token of the vocabulary), e.g. 0.16M -> 23M arcs for a 3-gram
LM of 5000 sentences. The decoder follows them as back-off links instead.
"""

import logging
from dataclasses import dataclass

import kaldifst
import numpy as np

from local.lexicon import DISAMBIG_SYMBOL
from shared.fsa_search import FstArrays, arrays_to_fst, fst_to_arrays


def size(fst: kaldifst.StdVectorFst) -> str:
    num_arcs = sum(fst.num_arcs(state) for state in range(fst.num_states))
    return f"{fst.num_states} states, {num_arcs} arcs"


@dataclass
class WordEndCodes:
    """How step 1 relabelled L.

    Attributes:
      code_offset: word-end code of word w is code_offset + w; every other
        input label of L is smaller.
      token_disambig: input label of L's "#0" self-loop.
      last_token: {word id: token id of the last piece of its spelling}.
    """

    code_offset: int
    token_disambig: int
    last_token: dict[int, int]


def encode_word_ends(
    lexicon_fst: FstArrays, word_disambig: int
) -> tuple[FstArrays, WordEndCodes]:
    """Step 1: gives the last arc of every word the input label code_offset + word.

    Relies on L's layout (local/prepare_lang_bpe.py): every word is a chain
    that leaves the start state on an arc carrying the word and re-enters it;
    chain states have exactly one arc out.

    Args:
      lexicon_fst: L_disambig.
      word_disambig: word id of "#0" (its self-loop is not a word).
    Returns:
      (the relabelled L, how it was relabelled).
    Raises:
      ValueError: if L does not have that layout.
    """
    loop_state = lexicon_fst.start
    ilabel = lexicon_fst.ilabel.copy()
    arcs_out = np.bincount(lexicon_fst.src, minlength=lexicon_fst.num_states)
    arc_of_chain_state = {}
    for arc, src in enumerate(lexicon_fst.src.tolist()):
        if src != loop_state:
            if arcs_out[src] != 1:
                raise ValueError(f"L state {src} is inside a word but has {arcs_out[src]} arcs")
            arc_of_chain_state[src] = arc
    code_offset = int(lexicon_fst.ilabel.max()) + 1
    last_token: dict[int, int] = {}
    token_disambig = -1
    for first_arc in np.flatnonzero(lexicon_fst.src == loop_state).tolist():
        word = int(lexicon_fst.olabel[first_arc])
        if word == word_disambig:
            token_disambig = int(lexicon_fst.ilabel[first_arc])
            continue
        if word == 0:
            raise ValueError("an arc leaving L's start state outputs no word")
        arc = first_arc
        for _ in range(lexicon_fst.num_states):
            if lexicon_fst.dst[arc] == loop_state:
                break
            arc = arc_of_chain_state[int(lexicon_fst.dst[arc])]
        else:
            raise ValueError(f"the spelling of word {word} in L never ends")
        if word in last_token:
            raise ValueError(f"word {word} has two spellings in L")
        last_token[word] = int(ilabel[arc])
        ilabel[arc] = code_offset + word
    encoded = FstArrays(
        src=lexicon_fst.src, dst=lexicon_fst.dst, ilabel=ilabel, olabel=lexicon_fst.olabel,
        weight=lexicon_fst.weight, final_weight=lexicon_fst.final_weight,
        start=lexicon_fst.start,
    )
    if token_disambig < 0:
        raise ValueError(f"L has no {DISAMBIG_SYMBOL} self-loop: is it L_disambig.fst?")
    return encoded, WordEndCodes(code_offset, token_disambig, last_token)


def decode_codes(lg: FstArrays, word_end_codes: WordEndCodes) -> FstArrays:
    """Step 5: maps the code labels of the determinized acceptor back to
    (token id, word id) pairs; "#0" becomes epsilon:epsilon."""
    code_offset = word_end_codes.code_offset
    last_token = word_end_codes.last_token
    codes = lg.ilabel
    is_word_end = codes >= code_offset
    words = np.where(is_word_end, codes - code_offset, 0)
    last_token_of = np.zeros(max(last_token) + 1, dtype=np.int64)
    last_token_of[list(last_token)] = list(last_token.values())
    tokens = np.where(is_word_end, last_token_of[words], codes)
    tokens[codes == word_end_codes.token_disambig] = 0
    if (is_word_end & (tokens == 0)).any():
        raise ValueError("a word-end code names a word that L does not spell")
    return FstArrays(
        src=lg.src, dst=lg.dst, ilabel=tokens, olabel=words, weight=lg.weight,
        final_weight=lg.final_weight, start=lg.start,
    )


def compile_lg(
    lexicon_fst: kaldifst.StdVectorFst,
    grammar_fst: kaldifst.StdVectorFst,
    word_disambig: int,
    remove_backoff_epsilons: bool,
    minimize: bool,
) -> kaldifst.StdVectorFst:
    """Steps 1-6 of the module docstring.

    Args:
      lexicon_fst: L_disambig (token ids -> word ids, with the #0:#0 self-loop).
      grammar_fst: G with "#0" on the input side of its back-off arcs.
      word_disambig: word id of "#0".
      remove_backoff_epsilons: run rmepsilon on the result.
      minimize: minimize after determinization.
    Returns:
      LG, input-label sorted. `grammar_fst` is arc-sorted in place.
    """
    lexicon_arrays, word_end_codes = encode_word_ends(fst_to_arrays(lexicon_fst), word_disambig)
    lexicon_coded = arrays_to_fst(lexicon_arrays)
    kaldifst.arcsort(lexicon_coded, sort_type="olabel")
    kaldifst.arcsort(grammar_fst, sort_type="ilabel")

    lg = kaldifst.compose(lexicon_coded, grammar_fst, connect=True)
    logging.info(f"L o G: {size(lg)}")

    lg_arrays = fst_to_arrays(lg)
    lg_arrays.olabel = lg_arrays.ilabel
    lg = kaldifst.determinize(arrays_to_fst(lg_arrays))
    logging.info(f"determinized: {size(lg)}")
    if minimize:
        kaldifst.minimize(lg)
        logging.info(f"minimized: {size(lg)}")

    lg = arrays_to_fst(decode_codes(fst_to_arrays(lg), word_end_codes))
    if remove_backoff_epsilons:
        kaldifst.rmepsilon(lg)
        logging.info(f"epsilons removed: {size(lg)}")
    kaldifst.connect(lg)
    kaldifst.arcsort(lg, sort_type="ilabel")
    return lg
