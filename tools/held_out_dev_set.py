#!/usr/bin/env python3
"""Make a dev set of voices never heard in training, for probes.

test-other is the only part of the generated corpus with voices that training never
heard, so a probe that picked its settings by test-other would be tuned on the test
set. This script says dev-clean's sentences (never in training, never in a test set)
with the held-out voices instead (local/voices.py, ``held_out=True``), in turn, with
the clean augmentation, and writes them as a lhotse cut set with the recipe's fbank:

    OUT_DIR/<speaker>-900000-<NNNN>.flac
    OUT_DIR/dev-unheard.jsonl.gz        (cuts; decode.py --test-sets takes its path)
    OUT_DIR/feats/                      (lilcom-compressed 80-dim fbank)

Utterance ids start with the voice's speaker id, so make_results' and
experiment_results' WER per speaker separate the voices. A sentence that a voice
fails to say is reported and skipped.

Usage:
    ./tools/held_out_dev_set.py --corpus-dir download/LibriSpeech --num-utts 100 \\
        --out-dir data/dev-unheard
    ./pruned_transducer_stateless4/decode.py ... --test-sets data/dev-unheard/dev-unheard.jsonl.gz
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.features.io import LilcomChunkyWriter

from local.voices import CLEAN, SAMPLE_RATE, VOICES, TtsError, draw_style, render_utterance
from shared.features import make_fbank_extractor
from shared.utils import HelpFormatter, setup_logging
from tools.intelligibility import read_utterances

CUTS_NAME = "dev-unheard.jsonl.gz"
CHAPTER_ID = 900000  # outside the generated corpus's chapter ids (part code 1-4, then 5 digits)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--corpus-dir", type=Path, default=Path("download/LibriSpeech"),
                        help="The generated LibriSpeech-shaped corpus; its dev-clean "
                        "transcripts give the sentences (default: %(default)s).")
    parser.add_argument("--num-utts", type=int, default=100,
                        help="Sentences to say, the first of dev-clean in utterance-id "
                        "order (default: %(default)s).")
    parser.add_argument("--out-dir", type=Path, default=Path("data/dev-unheard"),
                        help="Where the audio, features and cut set go (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=1234,
                        help="Seed of the utterances' random style (default: %(default)s).")
    return parser


def main() -> None:
    args = get_parser().parse_args()
    setup_logging()
    if args.num_utts <= 0:
        raise SystemExit("held_out_dev_set.py: error: --num-utts must be positive")
    sentences = [u.text for u in read_utterances(args.corpus_dir / "dev-clean")][: args.num_utts]
    if not sentences:
        raise SystemExit(f"held_out_dev_set.py: error: no transcripts under "
                         f"{args.corpus_dir / 'dev-clean'}")
    voices = [voice for voice in VOICES if voice.held_out]
    args.out_dir.mkdir(parents=True, exist_ok=True)

    recordings, supervisions = [], []
    with tempfile.TemporaryDirectory(prefix="held-out-dev-") as work_dir:
        for index, text in enumerate(sentences):
            voice = voices[index % len(voices)]
            utterance_id = f"{voice.speaker_id}-{CHAPTER_ID}-{index:04d}"
            rng = np.random.default_rng([args.seed, index])
            try:
                audio = render_utterance(voice, text.lower(), draw_style(CLEAN, rng),
                                         Path(work_dir), rng)
            except TtsError as error:
                logging.warning("%s (%s) skipped: %s", utterance_id, voice.label, error)
                continue
            path = args.out_dir / f"{utterance_id}.flac"
            sf.write(path, audio.astype(np.float32), SAMPLE_RATE)
            recording = Recording.from_file(path, recording_id=utterance_id)
            recordings.append(recording)
            supervisions.append(SupervisionSegment(
                id=utterance_id, recording_id=utterance_id, start=0.0,
                duration=recording.duration, channel=0, text=text,
                speaker=str(voice.speaker_id)))
    if not recordings:
        raise SystemExit("held_out_dev_set.py: error: no held-out voice said any sentence")

    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings(recordings),
                                 supervisions=SupervisionSet.from_segments(supervisions))
    cuts = cuts.compute_and_store_features(
        make_fbank_extractor(), storage_path=str(args.out_dir / "feats"),
        storage_type=LilcomChunkyWriter, num_jobs=1)
    cuts.to_file(args.out_dir / CUTS_NAME)
    minutes = sum(cut.duration for cut in cuts) / 60
    logging.info("Wrote %d cuts (%.1f min; voices %s) to %s", len(cuts), minutes,
                 ", ".join(voice.label for voice in voices), args.out_dir / CUTS_NAME)


if __name__ == "__main__":
    main()
