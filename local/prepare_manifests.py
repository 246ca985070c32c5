#!/usr/bin/env python3
"""Stage 1 of prepare.sh: lhotse manifests for a LibriSpeech-shaped corpus.

The same code path serves the real LibriSpeech download and the generated
corpus (stage 0 lays it out exactly like LibriSpeech).  Before lhotse reads
anything, every audio file is opened and decoded, so that a corrupt or empty
file is reported by name instead of failing deep inside lhotse.

Output: data/manifests/librispeech_{recordings,supervisions}_{part}.jsonl.gz
"""

import argparse
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import soundfile as sf

from shared.utils import HelpFormatter, outputs_are_up_to_date, setup_logging

LIBRISPEECH_PARTS = (
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--corpus-dir",
        type=Path,
        default=Path("download/LibriSpeech"),
        help="Directory holding the LibriSpeech parts (train-clean-100/, ...).",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("data/manifests"),
        help="Where the manifests are written.",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=None,
        help="Parts to prepare (default: every LibriSpeech part present in --corpus-dir).",
    )
    parser.add_argument(
        "--check-audio",
        choices=["full", "header", "none"],
        default="full",
        help="How audio files are checked before lhotse reads them: 'full' decodes "
        "every file, 'header' only reads the header.",
    )
    parser.add_argument("--num-jobs", type=int, default=2, help="Parallel processes.")
    return parser


def check_audio_file(path: Path, full: bool) -> str | None:
    """Returns None if `path` is readable non-empty audio, else the reason."""
    try:
        info = sf.info(str(path))
        if info.frames == 0:
            return "no samples"
        if full:
            samples, _ = sf.read(str(path), dtype="float32")
            if len(samples) == 0:
                return "no samples"
    except Exception as error:  # soundfile raises several types for bad files
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def find_bad_audio(part_dir: Path, full: bool, num_jobs: int) -> list[tuple[Path, str]]:
    """Returns (file, reason) for every unreadable audio file under `part_dir`."""
    audio_files = sorted(part_dir.rglob("*.flac")) + sorted(part_dir.rglob("*.wav"))
    with ProcessPoolExecutor(num_jobs) as pool:
        reasons = list(pool.map(check_audio_file, audio_files, [full] * len(audio_files),
                                chunksize=64))
    return [(path, reason) for path, reason in zip(audio_files, reasons) if reason]


def manifests_exist(output_dir: Path, part: str) -> bool:
    return all(
        (output_dir / f"librispeech_{kind}_{part}.jsonl.gz").is_file()
        for kind in ("recordings", "supervisions")
    )


def manifests_are_current(output_dir: Path, corpus_dir: Path, part: str) -> bool:
    """The part's manifests exist and are newer than the generated corpus's
    ``.done`` marker (written last whenever stage 0 regenerates the part, e.g.
    for another --synth-hours).  Real LibriSpeech has no marker and never changes."""
    outputs = [output_dir / f"librispeech_{kind}_{part}.jsonl.gz"
               for kind in ("recordings", "supervisions")]
    marker = corpus_dir / part / ".done"
    return outputs_are_up_to_date(outputs, [marker] if marker.is_file() else [])


def main() -> int:
    args = get_parser().parse_args()
    setup_logging()
    if not args.corpus_dir.is_dir():
        logging.error(
            f"stage 1: corpus directory {args.corpus_dir} not found; run "
            "./prepare.sh --stage 0 --stop-stage 0 (or put LibriSpeech there)"
        )
        return 1
    parts = args.parts or [p for p in LIBRISPEECH_PARTS if (args.corpus_dir / p).is_dir()]
    missing_parts = [p for p in parts if not (args.corpus_dir / p).is_dir()]
    if not parts or missing_parts:
        logging.error(f"stage 1: parts missing in {args.corpus_dir}: {missing_parts or 'all'}")
        return 1

    todo = [p for p in parts if not manifests_are_current(args.output_dir, args.corpus_dir, p)]
    if not todo:
        logging.info(f"stage 1: manifests for {parts} exist in {args.output_dir}; skipping")
        return 0

    if args.check_audio != "none":
        for part in todo:
            bad = find_bad_audio(args.corpus_dir / part, args.check_audio == "full", args.num_jobs)
            if bad:
                for path, reason in bad:
                    logging.error(f"bad audio file {path}: {reason}")
                logging.error(
                    f"stage 1: {len(bad)} unreadable audio file(s) in {args.corpus_dir / part}, "
                    f"first: {bad[0][0]}; remove or regenerate them"
                )
                return 1

    # Imported late: lhotse's import takes a few seconds, not needed for --help.
    from lhotse.recipes.librispeech import prepare_librispeech

    args.output_dir.mkdir(parents=True, exist_ok=True)
    for part in todo:  # stale ones: lhotse skips a part whose manifests exist
        for kind in ("recordings", "supervisions"):
            (args.output_dir / f"librispeech_{kind}_{part}.jsonl.gz").unlink(missing_ok=True)
    manifests = prepare_librispeech(
        corpus_dir=args.corpus_dir,
        dataset_parts=todo,
        output_dir=args.output_dir,
        num_jobs=args.num_jobs,
    )
    for part in todo:
        if part not in manifests or not manifests_exist(args.output_dir, part):
            logging.error(f"stage 1: lhotse produced no manifest for {part}")
            return 1
        recordings = manifests[part]["recordings"]
        hours = sum(r.duration for r in recordings) / 3600
        logging.info(f"stage 1: {part}: {len(recordings)} recordings, {hours:.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
