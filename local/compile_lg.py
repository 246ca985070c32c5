#!/usr/bin/env python3
"""Stage 5c of prepare.sh: compile LG = L o G for fast_beam_search_LG.

Reads from --lang-dir:
  L_disambig.fst, words.txt   (./local/prepare_lang_bpe.py)
  <lm>.fst                    (./local/prepare_lm.py), e.g. G_3_gram.fst

Writes --lang-dir/LG.fst, an OpenFst binary: token ids in, word ids out, at
most one word per arc (on the last token of the word), and no epsilon arcs
except the LM's back-off arcs (at most one per state, outputting nothing).
`shared.fsa_search.load_decoding_graph` loads it; shared/fsa_search.py documents
the format.

How (OpenFst operations through kaldifst, and why): local/lg_graph.py.

LG.fst is rebuilt only when it is missing or older than an input; delete it
to rebuild with other options.
"""

import argparse
import logging
import re
import sys
from pathlib import Path

import kaldifst

from local.lexicon import (
    DISAMBIG_SYMBOL,
    read_symbol_table,
    report_missing_input,
    write_fst_atomically,
)
from local.lg_graph import compile_lg, size
from shared.utils import HelpFormatter, outputs_are_up_to_date, setup_logging, str2bool


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--lang-dir",
        type=Path,
        required=True,
        help="Directory with L_disambig.fst, words.txt and the G FST; "
        "LG.fst is written here.",
    )
    parser.add_argument(
        "--lm",
        type=str,
        default="G_3_gram",
        help="Stem of the G FST in --lang-dir: <lm>.fst is read.",
    )
    parser.add_argument(
        "--remove-backoff-epsilons",
        type=str2bool,
        default=False,
        help="Remove G's back-off epsilon arcs (OpenFst rmepsilon) so that the graph "
        "has no back-off links; only sensible for small LMs, as it multiplies the "
        "number of arcs by up to the number of distinct word-initial tokens.",
    )
    parser.add_argument(
        "--minimize",
        type=str2bool,
        default=True,
        help="Minimize LG (over codes) after determinization.",
    )
    return parser


def main() -> int:
    args = get_parser().parse_args()
    setup_logging()
    lang_dir: Path = args.lang_dir
    l_disambig_fst = lang_dir / "L_disambig.fst"
    words_txt = lang_dir / "words.txt"
    g_fst = lang_dir / f"{args.lm}.fst"
    inputs = [l_disambig_fst, words_txt, g_fst]
    lg_fst = lang_dir / "LG.fst"

    if outputs_are_up_to_date([lg_fst], inputs):
        logging.info(f"stage 5 (compile_lg): {lg_fst} is up to date; skipping")
        return 0
    stage5 = "(part of ./prepare.sh --stage 5 --stop-stage 5)"
    lang_hint = f"./local/prepare_lang_bpe.py --lang-dir {lang_dir} {stage5}"
    order = re.fullmatch(r"G_(\d+)_gram", args.lm)
    order_option = f" --order {order.group(1)}" if order else ""
    lm_hint = f"./local/prepare_lm.py --lang-dir {lang_dir}{order_option} {stage5}"
    if report_missing_input(
        "stage 5 (compile_lg)", inputs, [lang_hint, lang_hint, lm_hint]
    ):
        return 1

    word_disambig = read_symbol_table(words_txt)[DISAMBIG_SYMBOL]
    lexicon_fst = kaldifst.StdVectorFst.read(str(l_disambig_fst))
    grammar_fst = kaldifst.StdVectorFst.read(str(g_fst))
    logging.info(f"stage 5 (compile_lg): L_disambig {size(lexicon_fst)}; G {size(grammar_fst)}")

    lg = compile_lg(
        lexicon_fst, grammar_fst, word_disambig,
        remove_backoff_epsilons=args.remove_backoff_epsilons, minimize=args.minimize,
    )
    write_fst_atomically(lg, lg_fst)
    logging.info(f"stage 5 (compile_lg): wrote {lg_fst}: {size(lg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
