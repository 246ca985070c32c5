"""The lang dir's word and token tables, the BPE lexicon and the lexicon FST L
(stage 5 of prepare.sh), and the file handling the three stage-5 scripts
share (local/prepare_lang_bpe.py, local/prepare_lm.py, local/compile_lg.py).

L's label conventions (token ids in, word ids out, the word id on a word's
first arc, the "#0" self-loop of L_disambig) are written out in
local/prepare_lang_bpe.py's docstring.
"""

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import kaldifst
import sentencepiece as spm

# Word-table entries that are not words of the transcripts, in icefall's order.
# The first four come first (ids 0..3); the last three follow the real words.
LEADING_SPECIAL_WORDS = ("<eps>", "!SIL", "<SPOKEN_NOISE>", "<UNK>")
TRAILING_SPECIAL_WORDS = ("#0", "<s>", "</s>")
SPECIAL_WORDS = frozenset(LEADING_SPECIAL_WORDS + TRAILING_SPECIAL_WORDS)
UNK_WORD = "<UNK>"
DISAMBIG_SYMBOL = "#0"

STAGE4_HINT = "./prepare.sh --stage 4 --stop-stage 4"

Lexicon = list[tuple[str, list[str]]]


# ------------------------------------------------------------------ helpers
# The three stage-5 scripts share this report (and shared.utils.outputs_are_up_to_date)
# so that they fail and skip in exactly the same way.


def report_missing_input(
    stage_name: str, inputs: Sequence[Path], hints: Sequence[str]
) -> bool:
    """Logs one line naming the first missing input and how to make it.

    Args:
      stage_name: prefix of the message, e.g. "stage 5 (prepare_lm)".
      inputs: the files the caller needs.
      hints: for each input, the command that produces it.
    Returns:
      True if an input is missing (and was reported), else False.
    """
    for path, hint in zip(inputs, hints, strict=True):
        if not path.is_file():
            logging.error(f"{stage_name}: missing {path}; run {hint}")
            return True
    return False


def write_text_atomically(path: Path, text: str) -> None:
    """Writes `text` to `path` via a temporary file and a rename, so that an
    interrupted run never leaves a truncated file that looks up to date."""
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp_path.write_text(text, encoding="utf-8")
    os.replace(tmp_path, path)


def write_fst_atomically(fst: kaldifst.StdVectorFst, path: Path) -> None:
    """kaldifst's `write` followed by a rename (see `write_text_atomically`)."""
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if not fst.write(str(tmp_path)):
        raise OSError(f"kaldifst could not write {tmp_path}")
    os.replace(tmp_path, path)


# ------------------------------------------------------------ symbol tables


def read_symbol_table(path: Path) -> dict[str, int]:
    """Reads "<symbol> <id>" lines (tokens.txt, words.txt) into a dict."""
    table: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{path}:{line_number}: expected '<symbol> <id>', got {line!r}")
            symbol, symbol_id = fields[0], int(fields[1])
            if symbol in table:
                raise ValueError(f"{path}:{line_number}: duplicate symbol {symbol!r}")
            table[symbol] = symbol_id
    return table


def disambig_token_id(token2id: dict[str, int]) -> int:
    """The input label that stands for the back-off disambiguator "#0" in L.

    tokens.txt of stage 4 lists only sentencepiece pieces, so "#0" gets the
    first id after them; if tokens.txt already has "#0" (icefall writes its
    disambiguators there), that id is used. Either way the id is larger than
    every real token id and is erased from LG by local/compile_lg.py.
    """
    if DISAMBIG_SYMBOL in token2id:
        return token2id[DISAMBIG_SYMBOL]
    return max(token2id.values()) + 1


def read_transcript_words(path: Path) -> list[str]:
    """The distinct words of the transcripts, sorted by code point.

    Code-point order is what `LC_ALL=C sort` gives, which icefall's word
    tables follow. Reserved symbols of the word table are left out.
    """
    words: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            words.update(line.split())
    reserved = words & SPECIAL_WORDS
    if reserved - {UNK_WORD}:
        logging.warning(f"{path}: ignoring reserved symbols {sorted(reserved - {UNK_WORD})}")
    return sorted(words - SPECIAL_WORDS)


def make_word_table(words: Iterable[str]) -> dict[str, int]:
    """icefall's word table: the leading specials, `words`, then #0 <s> </s>."""
    symbols = [*LEADING_SPECIAL_WORDS, *words, *TRAILING_SPECIAL_WORDS]
    return {symbol: word_id for word_id, symbol in enumerate(symbols)}


def write_symbol_table(table: dict[str, int], path: Path) -> None:
    lines = [f"{symbol} {symbol_id}\n" for symbol, symbol_id in table.items()]
    write_text_atomically(path, "".join(lines))


# ------------------------------------------------------------------ lexicon


def generate_lexicon(
    sp: spm.SentencePieceProcessor, words: Sequence[str], token2id: dict[str, int]
) -> Lexicon:
    """Spells every word with the pieces the BPE model gives it.

    sentencepiece splits at whitespace before segmenting, so a word is spelt
    the same on its own as inside a sentence: the token sequence of a
    transcript is the concatenation of its words' spellings, which is what
    makes LG accept exactly the BPE encodings of in-vocabulary sentences.

    Returns:
      (word, pieces) in the order of `words`, followed by ("<UNK>", [unk piece]).
    """
    unk_piece = sp.id_to_piece(sp.unk_id())
    if unk_piece not in token2id:
        raise ValueError(f"the unknown piece {unk_piece!r} of bpe.model is not in tokens.txt")
    lexicon: Lexicon = []
    for word, pieces in zip(words, sp.encode(list(words), out_type=str), strict=True):
        unknown = [piece for piece in pieces if piece not in token2id]
        if unknown:
            raise ValueError(
                f"pieces {unknown} of word {word!r} are not in tokens.txt: "
                "bpe.model and tokens.txt disagree; re-run " + STAGE4_HINT
            )
        if not pieces or any(token2id[piece] == 0 for piece in pieces):
            raise ValueError(f"word {word!r} is spelt {pieces}: empty or with the blank")
        lexicon.append((word, pieces))
    lexicon.append((UNK_WORD, [unk_piece]))
    return lexicon


def write_lexicon(lexicon: Lexicon, path: Path) -> None:
    write_text_atomically(path, "".join(f"{word} {' '.join(pieces)}\n" for word, pieces in lexicon))


def lexicon_to_fst(
    lexicon: Lexicon,
    token2id: dict[str, int],
    word2id: dict[str, int],
    add_disambig_self_loop: bool,
) -> kaldifst.StdVectorFst:
    """Builds L (token ids -> word ids); see the module docstring for its layout.

    Args:
      lexicon: (word, pieces) pairs, e.g. from `generate_lexicon`.
      token2id: tokens.txt.
      word2id: words.txt.
      add_disambig_self_loop: add the #0:#0 self-loop at the loop state
        (needed to compose with a G whose back-off arcs read "#0").
    Returns:
      An FST whose arcs leaving each state are in lexicon order (not sorted).
    """
    fst = kaldifst.StdVectorFst()
    loop_state = fst.add_state()
    fst.start = loop_state
    fst.set_final(loop_state, 0.0)
    for word, pieces in lexicon:
        word_id = word2id[word]
        piece_ids = [token2id[piece] for piece in pieces]
        src = loop_state
        for position, piece_id in enumerate(piece_ids):
            is_last = position == len(piece_ids) - 1
            dst = loop_state if is_last else fst.add_state()
            fst.add_arc(src, kaldifst.StdArc(piece_id, word_id if position == 0 else 0, 0.0, dst))
            src = dst
    if add_disambig_self_loop:
        disambig_arc = kaldifst.StdArc(
            disambig_token_id(token2id), word2id[DISAMBIG_SYMBOL], 0.0, loop_state
        )
        fst.add_arc(loop_state, disambig_arc)
    return fst
