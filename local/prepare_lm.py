#!/usr/bin/env python3
"""Stage 5b of prepare.sh: a word n-gram LM of the training transcripts, and G.

Reads from --lang-dir:
  transcript_words.txt  one training transcript per line (stage 4)
  words.txt             the word table (./local/prepare_lang_bpe.py)

Writes into --lang-dir, for --order N:
  G_N_gram.arpa      the LM in ARPA format (log10 probabilities and back-offs)
  G_N_gram.fst.txt   G as an OpenFst text FST with integer labels, as icefall keeps it
  G_N_gram.fst       the same G as an OpenFst binary (kaldifst.StdVectorFst.read)

The LM is interpolated Kneser-Ney, estimated here in pure Python:

  P(w | h) = max(a(hw) - D_k, 0) / A(h) + gamma(h) * P(w | h')

where h' is h without its first word, k = |hw|, a(.) is the raw count at the
highest order and for n-grams that start with <s> (nothing can precede them),
and the continuation count N1+(. g) (number of distinct left neighbours) at
the lower orders; A(h) = sum_w a(hw); gamma(h) = D_k * |{w : a(hw) > 0}| / A(h);
D_k = n1 / (n1 + 2 n2) from the count-of-counts of a(.) at order k. Unigrams
are a(w) / sum a(.) with no discount: every word of words.txt that occurs in
the transcripts has a(w) >= 1. Because the model is interpolated, gamma(h) is
exactly the ARPA back-off weight of h, and for every context the listed
probabilities plus gamma(h) times the lower-order mass of the unlisted words
sum to 1.

G is made by kaldilm's arpa2fst with words.txt as its symbol table and "#0" on
the input side of back-off arcs (output epsilon); <s> and </s> become the start
state and the final weights. Weights are -ln P (natural log) as in Kaldi.

The outputs are rebuilt only when one of them is missing or older than an input.
"""

import argparse
import logging
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import kaldilm

from local.lexicon import (
    DISAMBIG_SYMBOL,
    SPECIAL_WORDS,
    STAGE4_HINT,
    UNK_WORD,
    read_symbol_table,
    report_missing_input,
    write_text_atomically,
)
from shared.utils import HelpFormatter, outputs_are_up_to_date, setup_logging

BOS = "<s>"
EOS = "</s>"
# ARPA's stand-in for log10(0): the probability of predicting <s>.
ARPA_LOG10_ZERO = -99.0
# Used when the count-of-counts cannot give a discount (tiny corpora).
FALLBACK_DISCOUNT = 0.5

NGram = tuple[str, ...]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--lang-dir",
        type=Path,
        required=True,
        help="Directory with transcript_words.txt and words.txt; outputs go here too.",
    )
    parser.add_argument(
        "--order",
        type=int,
        default=3,
        help="Order N of the n-gram LM; the outputs are named G_N_gram.*.",
    )
    return parser


# ------------------------------------------------------------------- counts


def read_sentences(path: Path, vocabulary: set[str]) -> Iterator[list[str]]:
    """Yields each transcript as a list of words; words not in `vocabulary`
    become <UNK>, and empty lines are skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if words:
                yield [word if word in vocabulary else UNK_WORD for word in words]


def count_ngrams(sentences: Iterable[list[str]], order: int) -> list[Counter[NGram]]:
    """Raw counts of every n-gram of length 1..order in "<s> words </s>".

    Returns:
      counts[k - 1][ngram] for k = 1..order. The unigram <s> is not counted:
      it is never predicted.
    """
    counts: list[Counter[NGram]] = [Counter() for _ in range(order)]
    for words in sentences:
        padded = [BOS, *words, EOS]
        for end in range(1, len(padded)):
            for k in range(1, order + 1):
                begin = end + 1 - k
                if begin < 0:
                    break
                counts[k - 1][tuple(padded[begin : end + 1])] += 1
    return counts


def kneser_ney_counts(raw_counts: list[Counter[NGram]]) -> list[dict[NGram, int]]:
    """The counts a(.) of interpolated Kneser-Ney (see the module docstring)."""
    order = len(raw_counts)
    left_neighbours: list[Counter[NGram]] = [Counter() for _ in range(order)]
    for k in range(2, order + 1):
        for ngram in raw_counts[k - 1]:
            left_neighbours[k - 2][ngram[1:]] += 1
    adjusted: list[dict[NGram, int]] = []
    for k in range(1, order + 1):
        if k == order:
            adjusted.append(dict(raw_counts[k - 1]))
            continue
        adjusted.append(
            {
                ngram: (count if ngram[0] == BOS else left_neighbours[k - 1][ngram])
                for ngram, count in raw_counts[k - 1].items()
            }
        )
    return adjusted


def discount(counts: dict[NGram, int]) -> float:
    """Ney's absolute discount n1 / (n1 + 2 n2), kept inside (0, 1)."""
    count_of_counts = Counter(count for count in counts.values() if count <= 2)
    n1, n2 = count_of_counts[1], count_of_counts[2]
    if n1 == 0 or n2 == 0:
        return FALLBACK_DISCOUNT
    return min(max(n1 / (n1 + 2 * n2), 0.01), 0.99)


# -------------------------------------------------------------------- model


class KneserNeyLM:
    """Interpolated Kneser-Ney probabilities from the counts of `count_ngrams`."""

    def __init__(self, raw_counts: list[Counter[NGram]]) -> None:
        self.order = len(raw_counts)
        self.counts = kneser_ney_counts(raw_counts)
        # discounts[k - 1] for order k; the unigram level is not discounted.
        self.discounts = [0.0] + [discount(self.counts[k - 1]) for k in range(2, self.order + 1)]
        # context_total[k - 1][h] = A(h) and context_types[k - 1][h] = number
        # of distinct successors, for histories h of length k - 1.
        self.context_total: list[dict[NGram, int]] = []
        self.context_types: list[dict[NGram, int]] = []
        for k in range(1, self.order + 1):
            total: dict[NGram, int] = defaultdict(int)
            types: dict[NGram, int] = defaultdict(int)
            for ngram, count in self.counts[k - 1].items():
                total[ngram[:-1]] += count
                types[ngram[:-1]] += 1
            self.context_total.append(dict(total))
            self.context_types.append(dict(types))
        self._prob_cache: dict[NGram, float] = {}

    def backoff_weight(self, history: NGram) -> float:
        """gamma(history): the mass left for the lower order (1.0 if `history`
        is never followed by anything at order |history| + 1)."""
        k = len(history) + 1
        total = self.context_total[k - 1].get(history, 0)
        if total == 0:
            return 1.0
        return self.discounts[k - 1] * self.context_types[k - 1][history] / total

    def prob(self, ngram: NGram) -> float:
        """P(ngram[-1] | ngram[:-1]), backing off as far as needed."""
        cached = self._prob_cache.get(ngram)
        if cached is not None:
            return cached
        k = len(ngram)
        if k == 1:
            result = self.counts[0].get(ngram, 0) / self.context_total[0][()]
        else:
            history = ngram[:-1]
            lower = self.prob(ngram[1:])
            total = self.context_total[k - 1].get(history, 0)
            if total == 0:
                result = lower
            else:
                count = self.counts[k - 1].get(ngram, 0)
                gamma = self.discounts[k - 1] * self.context_types[k - 1][history] / total
                result = max(count - self.discounts[k - 1], 0.0) / total + gamma * lower
        self._prob_cache[ngram] = result
        return result

    def write_arpa(self, path: Path) -> None:
        """Writes every counted n-gram with log10 P and, below the top order,
        the log10 back-off weight of the n-gram as a history."""
        sections = []
        for k in range(1, self.order + 1):
            ngrams = sorted(self.counts[k - 1])
            if k == 1:
                ngrams = [(BOS,), *ngrams]
            lines = [f"\\{k}-grams:\n"]
            for ngram in ngrams:
                log_prob = ARPA_LOG10_ZERO if ngram == (BOS,) else math.log10(self.prob(ngram))
                line = f"{log_prob:.7f}\t{' '.join(ngram)}"
                if k < self.order and ngram in self.context_total[k]:
                    line += f"\t{math.log10(self.backoff_weight(ngram)):.7f}"
                lines.append(line + "\n")
            sections.append((len(ngrams), "".join(lines)))
        header = ["\\data\\\n"] + [f"ngram {k}={n}\n" for k, (n, _) in enumerate(sections, 1)]
        body = "".join(f"\n{text}" for _, text in sections)
        write_text_atomically(path, "".join(header) + body + "\n\\end\\\n")


# --------------------------------------------------------------------- main


def main() -> int:
    args = get_parser().parse_args()
    setup_logging()
    if args.order < 1:
        logging.error(f"stage 5 (prepare_lm): --order must be >= 1, not {args.order}")
        return 1
    lang_dir: Path = args.lang_dir
    transcript_words = lang_dir / "transcript_words.txt"
    words_txt = lang_dir / "words.txt"
    inputs = [transcript_words, words_txt]
    arpa = lang_dir / f"G_{args.order}_gram.arpa"
    g_fst_txt = lang_dir / f"G_{args.order}_gram.fst.txt"
    g_fst = lang_dir / f"G_{args.order}_gram.fst"
    outputs = [arpa, g_fst_txt, g_fst]

    if outputs_are_up_to_date(outputs, inputs):
        logging.info(f"stage 5 (prepare_lm): {arpa} and G are up to date; skipping")
        return 0
    hints = [
        STAGE4_HINT,
        f"./local/prepare_lang_bpe.py --lang-dir {lang_dir} "
        "(part of ./prepare.sh --stage 5 --stop-stage 5)",
    ]
    if report_missing_input("stage 5 (prepare_lm)", inputs, hints):
        return 1

    vocabulary = set(read_symbol_table(words_txt)) - (SPECIAL_WORDS - {UNK_WORD})
    raw_counts = count_ngrams(read_sentences(transcript_words, vocabulary), args.order)
    if not raw_counts[0]:
        logging.error(f"stage 5 (prepare_lm): {transcript_words} has no words; "
                      f"re-run {STAGE4_HINT}")
        return 1
    if raw_counts[0].get((UNK_WORD,)):
        logging.warning(f"stage 5 (prepare_lm): {raw_counts[0][(UNK_WORD,)]} transcript words "
                        f"are not in {words_txt}; counted as {UNK_WORD}")
    lm = KneserNeyLM(raw_counts)
    lm.write_arpa(arpa)
    logging.info(
        f"stage 5 (prepare_lm): {arpa}: "
        + ", ".join(f"{len(c)} {k}-grams" for k, c in enumerate(lm.counts, 1))
        + f"; discounts {', '.join(f'{d:.3f}' for d in lm.discounts[1:])}"
    )

    # arpa2fst writes the binary itself; its return value is the text form.
    tmp_fst = g_fst.with_name(f".{g_fst.name}.tmp")
    g_text = kaldilm.arpa2fst(
        input_arpa=str(arpa),
        output_fst=str(tmp_fst),
        disambig_symbol=DISAMBIG_SYMBOL,
        read_symbol_table=str(words_txt),
        max_order=args.order,
    )
    write_text_atomically(g_fst_txt, g_text)
    tmp_fst.replace(g_fst)
    logging.info(f"stage 5 (prepare_lm): wrote {g_fst_txt} and {g_fst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
