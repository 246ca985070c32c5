#!/usr/bin/env python3
"""Stage 4 of prepare.sh: a sentencepiece unigram model over training transcripts.

Writes into --lang-dir (e.g. data/lang_bpe_500):
  transcript_words.txt  one upper-case training transcript per line
  bpe.model             the sentencepiece model
  bpe.vocab             sentencepiece's "<piece>\t<score>" list of the same model
                        (sherpa-onnx's hotwords with modeling_unit "bpe" read it)
  tokens.txt            "<piece> <id>" per line; id 0 is the blank "<blk>"

As in icefall, "<blk>" (id 0) and "<sos/eos>" (id 1) are user-defined symbols
and "<unk>" is id 2, so that the transducer's blank is token 0.
"""

import argparse
import gzip
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

from shared.utils import HelpFormatter, outputs_are_up_to_date, setup_logging


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--lang-dir", type=Path, required=True,
                        help="Output directory, e.g. data/lang_bpe_500.")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="Number of tokens including <blk>, <sos/eos> and <unk>.")
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"),
                        help="Where stage 1 wrote the supervision manifests.")
    parser.add_argument("--train-parts", nargs="+", default=None,
                        help="Parts whose transcripts train the model (default: all train-*).")
    return parser


def read_transcripts(supervision_paths: list[Path]) -> list[str]:
    """Reads the `text` field of every supervision, in manifest order."""
    transcripts = []
    for path in supervision_paths:
        with gzip.open(path, "rt") as manifest:
            for line in manifest:
                transcripts.append(json.loads(line)["text"].strip())
    return transcripts


def train_bpe(transcript_path: Path, vocab_size: int, model_path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp_dir:
        model_prefix = Path(tmp_dir) / "bpe"
        spm.SentencePieceTrainer.train(
            input=str(transcript_path),
            model_prefix=str(model_prefix),
            model_type="unigram",
            vocab_size=vocab_size,
            character_coverage=1.0,
            input_sentence_size=100_000_000,
            user_defined_symbols=["<blk>", "<sos/eos>"],
            unk_id=2,
            bos_id=-1,
            eos_id=-1,
            # A small corpus may not support the requested size; take the
            # largest it supports rather than fail (the size is logged).
            hard_vocab_limit=False,
            minloglevel=2,
        )
        shutil.move(f"{model_prefix}.vocab", model_path.with_suffix(".vocab"))
        shutil.move(f"{model_prefix}.model", model_path)


def write_tokens(model_path: Path, tokens_path: Path) -> int:
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    assert sp.piece_to_id("<blk>") == 0, "blank must be token 0"
    with open(tokens_path, "w") as tokens:
        for token_id in range(sp.get_piece_size()):
            tokens.write(f"{sp.id_to_piece(token_id)} {token_id}\n")
    return sp.get_piece_size()


def main() -> int:
    args = get_parser().parse_args()
    setup_logging()
    model_path = args.lang_dir / "bpe.model"
    tokens_path = args.lang_dir / "tokens.txt"
    transcript_path = args.lang_dir / "transcript_words.txt"
    if args.train_parts:
        supervision_paths = [
            args.manifest_dir / f"librispeech_supervisions_{part}.jsonl.gz"
            for part in args.train_parts
        ]
    else:
        supervision_paths = sorted(
            args.manifest_dir.glob("librispeech_supervisions_train-*.jsonl.gz")
        )
    missing = [p for p in supervision_paths if not p.is_file()]
    if not supervision_paths or missing:
        logging.error(
            f"stage 4: training supervisions missing in {args.manifest_dir} "
            f"({missing[0] if missing else 'train-*'}); run ./prepare.sh --stage 1 --stop-stage 1"
        )
        return 1
    # Newer supervisions (stage 1 reran on a regenerated corpus) mean new text.
    vocab_path = model_path.with_suffix(".vocab")
    if outputs_are_up_to_date([model_path, vocab_path, tokens_path, transcript_path],
                              supervision_paths):
        logging.info(f"stage 4: {model_path} is up to date; skipping")
        return 0

    args.lang_dir.mkdir(parents=True, exist_ok=True)
    transcripts = read_transcripts(supervision_paths)
    tmp_transcript_path = transcript_path.with_name("tmp.transcript_words.txt")
    tmp_transcript_path.write_text("\n".join(transcripts) + "\n")
    tmp_transcript_path.rename(transcript_path)

    train_bpe(transcript_path, args.vocab_size, model_path)
    num_tokens = write_tokens(model_path, tokens_path)
    if num_tokens != args.vocab_size:
        logging.warning(
            f"stage 4: the training text supports only {num_tokens} tokens "
            f"(asked for {args.vocab_size}); {model_path} has {num_tokens}"
        )
    logging.info(f"stage 4: {model_path}: {num_tokens} tokens from {len(transcripts)} transcripts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
