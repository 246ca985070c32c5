#!/usr/bin/env python3
"""Stage 5a of prepare.sh: the word list, the BPE lexicon and the lexicon FST L.

Reads from --lang-dir (written by stage 4, ./local/train_bpe_model.py):
  bpe.model             sentencepiece model
  tokens.txt            "<piece> <id>" per line; "<blk>" is id 0
  transcript_words.txt  one upper-case training transcript per line

Writes into --lang-dir:
  words.txt         "<word> <id>", icefall's layout: "<eps> 0", "!SIL 1",
                    "<SPOKEN_NOISE> 2", "<UNK> 3", then the transcript words
                    in code-point order, then "#0", "<s>", "</s>"
  lexicon.txt       "<word> <piece> <piece> ..." for every word of words.txt
                    that is spelt by tokens (the words above plus "<UNK>",
                    which is spelt by the single unknown piece)
  L.fst             OpenFst binary (kaldifst): token ids -> word ids
  L_disambig.fst    L plus the back-off disambiguation self-loop #0:#0

Label conventions of L (and of every graph compiled from it):
  * Input labels are token ids exactly as in tokens.txt, with no offset.
    Token 0 is the transducer's blank "<blk>"; it is never spelt by a word, so
    it never appears on an arc, and label 0 is free to mean epsilon as OpenFst
    requires.
  * Output labels are word ids from words.txt; 0 ("<eps>") means no word.
  * State 0 is the start state and the only final state (weight 0). Each
    lexicon entry is a chain of fresh states leaving and re-entering state 0;
    its FIRST arc carries the word id (so that composition with G consults G
    as soon as a word starts) and the other arcs output epsilon.
  * L_disambig.fst adds one self-loop at state 0 whose input is the token-side
    "#0" and whose output is the word-side "#0". It lets G's back-off arcs
    (input "#0" in G) pass through the composition L o G. The token-side "#0"
    id is tokens.txt's "#0" if it has one, else (max token id + 1); see
    `disambig_token_id`.
  * No prefix/homophone disambiguation symbols (#1, #2, ...) are added:
    local/compile_lg.py determinizes over (token, completed word) codes, under
    which a word that is a prefix of another never makes L o G ambiguous.

The outputs are rebuilt only when one of them is missing or older than an input.
"""

import argparse
import logging
import sys
from pathlib import Path

import sentencepiece as spm

from local.lexicon import (
    STAGE4_HINT,
    generate_lexicon,
    lexicon_to_fst,
    make_word_table,
    read_symbol_table,
    read_transcript_words,
    report_missing_input,
    write_fst_atomically,
    write_lexicon,
    write_symbol_table,
)
from shared.utils import HelpFormatter, outputs_are_up_to_date, setup_logging


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--lang-dir",
        type=Path,
        required=True,
        help="Directory with bpe.model, tokens.txt and transcript_words.txt "
        "(from stage 4); the outputs are written here too. E.g. data/lang_bpe_500.",
    )
    return parser


# --------------------------------------------------------------------- main


def main() -> int:
    args = get_parser().parse_args()
    setup_logging()
    lang_dir: Path = args.lang_dir
    bpe_model = lang_dir / "bpe.model"
    tokens_txt = lang_dir / "tokens.txt"
    transcript_words = lang_dir / "transcript_words.txt"
    inputs = [bpe_model, tokens_txt, transcript_words]
    words_txt = lang_dir / "words.txt"
    lexicon_txt = lang_dir / "lexicon.txt"
    l_fst = lang_dir / "L.fst"
    l_disambig_fst = lang_dir / "L_disambig.fst"
    outputs = [words_txt, lexicon_txt, l_fst, l_disambig_fst]

    if outputs_are_up_to_date(outputs, inputs):
        logging.info(f"stage 5 (prepare_lang_bpe): {lang_dir}/{{words.txt,L.fst,...}} "
                     "are up to date; skipping")
        return 0
    if report_missing_input("stage 5 (prepare_lang_bpe)", inputs, [STAGE4_HINT] * len(inputs)):
        return 1

    token2id = read_symbol_table(tokens_txt)
    if token2id.get("<blk>") != 0:
        logging.error(f"stage 5 (prepare_lang_bpe): {tokens_txt} must give <blk> id 0; "
                      f"re-run {STAGE4_HINT}")
        return 1
    sp = spm.SentencePieceProcessor(model_file=str(bpe_model))

    words = read_transcript_words(transcript_words)
    word2id = make_word_table(words)
    lexicon = generate_lexicon(sp, words, token2id)

    write_symbol_table(word2id, words_txt)
    write_lexicon(lexicon, lexicon_txt)
    write_fst_atomically(lexicon_to_fst(lexicon, token2id, word2id, False), l_fst)
    l_disambig = lexicon_to_fst(lexicon, token2id, word2id, True)
    write_fst_atomically(l_disambig, l_disambig_fst)
    logging.info(
        f"stage 5 (prepare_lang_bpe): {len(words)} words, {len(token2id)} tokens; "
        f"L_disambig has {l_disambig.num_states} states; wrote {', '.join(map(str, outputs))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
