#!/usr/bin/env python3
"""Generate a small noise corpus laid out like MUSAN, for --enable-musan without MUSAN.

Stage 2 of prepare.sh when the real MUSAN corpus is absent. The output is read unchanged
by ``lhotse.recipes.musan.prepare_musan(OUT/musan)``::

    OUT/musan/noise/free-sound/synth-noise-NNNN.wav   coloured noise, mains hum, mixtures
    OUT/musan/speech/synth-babble/synth-babble-NNNN.wav   babble of generated speech
    OUT/musan/music/synth/synth-music-NNNN.wav        simple synthesised tunes
    OUT/musan/music/synth/ANNOTATIONS                 "<id> <genres> <vocals Y/N> <artist>"

Babble mixes several talkers, each a run of random train-clean-100 utterances of the
generated LibriSpeech corpus (stage 0). The music is plain additive synthesis (melody,
bass, chords) with no vocals; it stands in for MUSAN's music as an interfering signal.
All files are 16 kHz mono, 6 to 30 seconds long (icefall drops MUSAN cuts of 5 s or
less), and depend only on ``--seed`` and the source corpus. A ``.done`` marker holding a
hash of the options makes re-runs skip the work.

Usage:
    ./local/generate_noise.py --out-dir download --librispeech-dir download/LibriSpeech
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from local.noise import SAMPLE_RATE, babble_signal, music_signal, noise_signal
from shared.utils import HelpFormatter

# Bump when the generated signals change: old outputs are then regenerated.
GENERATOR_VERSION = 1

MIN_SECONDS = 6.0
MAX_SECONDS = 30.0
BABBLE_SOURCE_PART = "train-clean-100"
DONE_MARKER = ".done"

NOISE_DIR = Path("noise/free-sound")
SPEECH_DIR = Path("speech/synth-babble")
MUSIC_DIR = Path("music/synth")


# ------------------------------------------------------------------------ writing


def write_wav_atomically(path: Path, samples: np.ndarray, peak_dbfs: float) -> None:
    """Scale ``samples`` to the given peak and write a 16-bit wav under a temporary name."""
    samples = samples * (10 ** (peak_dbfs / 20) / (np.max(np.abs(samples)) + 1e-12))
    partial = path.with_name(f".{path.name}.partial")
    sf.write(str(partial), samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(partial, path)


def file_rng(seed: int, category: int, index: int) -> np.random.Generator:
    """The random generator of one file: independent of every other file."""
    return np.random.default_rng([seed, category, index])


def generate_category(
    directory: Path,
    prefix: str,
    num_files: int,
    make_signal: Callable[[int, np.random.Generator], np.ndarray],
    seed: int,
    category: int,
) -> list[str]:
    """Write ``num_files`` files made by ``make_signal``; return their ids."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = []
    for index in tqdm(range(num_files), desc=prefix, unit="file", dynamic_ncols=True):
        rng = file_rng(seed, category, index)
        num_samples = int(rng.uniform(MIN_SECONDS, MAX_SECONDS) * SAMPLE_RATE)
        peak_dbfs = rng.uniform(-12.0, -1.0)
        recording_id = f"{prefix}-{index:04d}"
        write_wav_atomically(
            directory / f"{recording_id}.wav", make_signal(num_samples, rng), peak_dbfs
        )
        ids.append(recording_id)
    return ids


def babble_sources(librispeech_dir: Path) -> list[Path]:
    """The training FLAC files of the generated corpus, in a fixed order."""
    sources = sorted((librispeech_dir / BABBLE_SOURCE_PART).rglob("*.flac"))
    if not sources:
        raise SystemExit(
            f"No FLAC files under {librispeech_dir / BABBLE_SOURCE_PART}: generate the corpus "
            "first (local/generate_synth_corpus.py) or pass --librispeech-dir"
        )
    return sources


def options_hash(args: argparse.Namespace, sources: Sequence[Path]) -> str:
    """Hash of everything the output depends on, the babble source corpus included.

    The source corpus is identified by its file names and, when it was made by
    generate_synth_corpus.py, by its ``.done`` marker (which hashes that run's options).
    """
    source_part = args.librispeech_dir / BABBLE_SOURCE_PART
    source_marker = source_part / ".done"
    names = "\n".join(str(path.relative_to(source_part)) for path in sources)
    options = {
        "generator_version": GENERATOR_VERSION,
        "num_files": args.num_files,
        "seed": args.seed,
        "babble_sources": hashlib.sha256(names.encode()).hexdigest(),
        "babble_corpus": source_marker.read_text() if source_marker.is_file() else None,
    }
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("download"),
        help="Directory that receives musan/ (default: %(default)s).",
    )
    parser.add_argument(
        "--librispeech-dir",
        type=Path,
        default=Path("download/LibriSpeech"),
        help="Generated LibriSpeech corpus whose train-clean-100 part is the source of "
        "babble (default: %(default)s).",
    )
    parser.add_argument(
        "--num-files",
        type=int,
        default=60,
        help="Number of files in each of noise, speech and music (default: %(default)s).",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="Seed of every random choice (default: %(default)s).",
    )
    return parser


def main() -> None:
    args = get_parser().parse_args()
    logging.basicConfig(
        format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
        level=logging.INFO,
    )
    musan_dir = args.out_dir / "musan"
    sources = babble_sources(args.librispeech_dir)
    digest = options_hash(args, sources)
    marker = musan_dir / DONE_MARKER
    if marker.is_file() and marker.read_text().strip() == digest:
        logging.info("%s is complete: skipping it", musan_dir)
        return
    marker.unlink(missing_ok=True)
    for directory in (NOISE_DIR, SPEECH_DIR, MUSIC_DIR):
        # Files of an older run with more files or another seed must not linger.
        for stale in (musan_dir / directory).glob("*.wav"):
            stale.unlink()

    def babble(num_samples: int, rng: np.random.Generator) -> np.ndarray:
        return babble_signal(num_samples, sources, rng)

    categories = [
        (NOISE_DIR, "synth-noise", noise_signal),
        (SPEECH_DIR, "synth-babble", babble),
        (MUSIC_DIR, "synth-music", music_signal),
    ]
    recording_ids = {}
    for category, (directory, prefix, make_signal) in enumerate(categories, start=1):
        recording_ids[directory] = generate_category(
            musan_dir / directory, prefix, args.num_files, make_signal, args.seed, category
        )
    # MUSAN's music ANNOTATIONS: "<id> <genres> <vocals Y/N> <artist>".
    (musan_dir / MUSIC_DIR / "ANNOTATIONS").write_text(
        "".join(
            f"{recording_id} synthetic N generated\n" for recording_id in recording_ids[MUSIC_DIR]
        )
    )
    marker.write_text(digest + "\n")
    logging.info("Wrote %d noise, babble and music files each to %s", args.num_files, musan_dir)


if __name__ == "__main__":
    main()
