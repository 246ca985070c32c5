#!/usr/bin/env python3
"""Stage 2 of prepare.sh: lhotse manifests of a MUSAN-shaped noise corpus.

Reads the real MUSAN (download/musan) or the generated noise set that
local/generate_noise.py lays out the same way; only the parts present
(music, speech, noise) are prepared.

Output: data/manifests/musan_recordings_{part}.jsonl.gz
"""

import argparse
import logging
import sys
from pathlib import Path

from shared.utils import HelpFormatter, setup_logging

MUSAN_PARTS = ("music", "speech", "noise")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--musan-dir", type=Path, required=True,
                        help="Directory holding music/, speech/ and/or noise/.")
    parser.add_argument("--output-dir", type=Path, default=Path("data/manifests"),
                        help="Where the manifests are written.")
    return parser


def main() -> int:
    args = get_parser().parse_args()
    setup_logging()
    parts = [part for part in MUSAN_PARTS if (args.musan_dir / part).is_dir()]
    if not parts:
        logging.error(f"stage 2: no music/, speech/ or noise/ in {args.musan_dir}")
        return 1
    outputs = [args.output_dir / f"musan_recordings_{part}.jsonl.gz" for part in parts]
    if all(path.is_file() for path in outputs):
        logging.info(f"stage 2: noise manifests exist in {args.output_dir}; skipping")
        return 0

    from lhotse.recipes.musan import prepare_musan

    manifests = prepare_musan(args.musan_dir, output_dir=args.output_dir, parts=parts)
    for part in parts:
        recordings = manifests[part]["recordings"]
        minutes = sum(r.duration for r in recordings) / 60
        logging.info(f"stage 2: {part}: {len(recordings)} recordings, {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
