#!/usr/bin/env python3
"""Check that generated speech is intelligible, with an independent recogniser.

Decodes random utterances of one part of a LibriSpeech-shaped corpus with pocketsphinx
(its bundled US English acoustic model, language model and dictionary, which have never
seen our TTS voices) and prints the word error rate against the transcripts, overall and
per speaker (= per TTS voice). A voice far worse than the others is a sign of a broken
engine or of augmentation that is too harsh.

Usage:
    ./tools/check_intelligibility.py --corpus-dir download/LibriSpeech --part test-clean \\
        --num-utts 50 --max-wer 30

With ``--max-wer`` the exit status is 1 when the WER is above it.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import defaultdict
from pathlib import Path

import kaldialign

from shared.utils import HelpFormatter
from tools.intelligibility import make_decoder, read_utterances, recognise


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--corpus-dir",
        type=Path,
        default=Path("download/LibriSpeech"),
        help="LibriSpeech-shaped corpus (default: %(default)s).",
    )
    parser.add_argument(
        "--part", default="test-clean", help="Part to check (default: %(default)s)."
    )
    parser.add_argument(
        "--num-utts",
        type=int,
        default=50,
        help="Number of random utterances to decode (default: %(default)s).",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the random choice (default: %(default)s)."
    )
    parser.add_argument(
        "--max-wer",
        type=float,
        default=None,
        help="Exit with status 1 if the WER in percent is above this.",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="Print every reference and hypothesis."
    )
    return parser


def main() -> None:
    args = get_parser().parse_args()
    logging.basicConfig(
        format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
        level=logging.INFO,
    )
    utterances = read_utterances(args.corpus_dir / args.part)
    if not utterances:
        raise SystemExit(f"no utterances under {args.corpus_dir / args.part}")
    chosen = random.Random(args.seed).sample(utterances, min(args.num_utts, len(utterances)))
    decoder = make_decoder()

    errors: dict[str, int] = defaultdict(int)
    words: dict[str, int] = defaultdict(int)
    for utterance in sorted(chosen, key=lambda u: u.utterance_id):
        reference = utterance.text.split()
        hypothesis = recognise(decoder, utterance.audio_path).split()
        distance = kaldialign.edit_distance(reference, hypothesis)
        errors[utterance.speaker] += distance["total"]
        words[utterance.speaker] += len(reference)
        if args.verbose:
            print(
                f"{utterance.utterance_id}\n  REF: {utterance.text}\n  HYP: {' '.join(hypothesis)}"
            )

    for speaker in sorted(words):
        print(
            f"speaker {speaker}: WER {100 * errors[speaker] / words[speaker]:5.1f}% "
            f"({errors[speaker]}/{words[speaker]} words)"
        )
    wer = 100 * sum(errors.values()) / sum(words.values())
    print(
        f"{args.part}: pocketsphinx WER {wer:.2f}% on {len(chosen)} utterances "
        f"({sum(errors.values())} errors / {sum(words.values())} words)"
    )
    if args.max_wer is not None and wer > args.max_wer:
        logging.error("WER %.2f%% is above --max-wer %.2f%%", wer, args.max_wer)
        sys.exit(1)


if __name__ == "__main__":
    main()
