#!/usr/bin/env python3
"""Stage 3 of prepare.sh: 80-dim log-mel fbank features for every part.

Cut sets are named as icefall names them, so scripts written for icefall's
LibriSpeech recipe find them:

  data/fbank/librispeech_cuts_{part}.jsonl.gz   (+ librispeech_feats_{part}/)
  data/fbank/musan_cuts.jsonl.gz                (when noise manifests exist)

Training parts (train-*) are speed-perturbed with factors 0.9 and 1.1, as
icefall does (--perturb-speed false: originals only), and, beyond icefall,
each training part's cut set is written shuffled (seed --seed): icefall
writes a copy right after its original, so lhotse's shuffle buffer (20k
cuts) would see a long run of one factor.  A part is skipped when its cut set
is newer than its manifests and was made with the same options.

When all three 960 h training parts exist, their cut sets are shuffled
together into

  data/fbank/librispeech_cuts_train-all-shuf.jsonl.gz

as icefall's prepare.sh does (`cat ... | shuf`), for train.py --full-libri.

The extractor settings are those of lhotse's `Fbank(FbankConfig(num_mel_bins=80))`
(povey window, dither 0, snip_edges False, high_freq -400, samples in [-1, 1]);
`shared/features.py` holds them so that streaming and export use the same ones.
"""

import argparse
import gzip
import json
import logging
import random
import sys
from pathlib import Path

from shared.features import make_fbank_extractor
from shared.utils import HelpFormatter, outputs_are_up_to_date, setup_logging, str2bool

TRAIN_960_PARTS = ("train-clean-100", "train-clean-360", "train-other-500")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"),
                        help="Where stage 1 and 2 wrote the manifests.")
    parser.add_argument("--output-dir", type=Path, default=Path("data/fbank"),
                        help="Where cut sets and features are written.")
    parser.add_argument("--parts", nargs="+", default=None,
                        help="LibriSpeech parts (default: every part with manifests).")
    parser.add_argument("--perturb-speed", type=str, default="true",
                        help="Add 0.9x and 1.1x speed-perturbed copies of train-* parts "
                        "(true/false).")
    parser.add_argument("--num-jobs", type=int, default=2, help="Parallel processes.")
    parser.add_argument("--seed", type=int, default=42,
                        help="Seed of the shuffles of the training cut sets.")
    return parser


def find_parts(manifest_dir: Path) -> list[str]:
    prefix = "librispeech_recordings_"
    return sorted(p.name[len(prefix):-len(".jsonl.gz")]
                  for p in manifest_dir.glob(f"{prefix}*.jsonl.gz"))


def compute_part(part: str, args: argparse.Namespace) -> None:
    from lhotse import CutSet, load_manifest

    cuts_path = args.output_dir / f"librispeech_cuts_{part}.jsonl.gz"
    # The options that shape the cut set, stored next to it: a cut set made with
    # other options, or older than its manifests (stage 1 reran), is made again.
    options_path = cuts_path.with_name(f".{cuts_path.name}.options.json")
    perturb = part.startswith("train") and str2bool(args.perturb_speed)
    shuffle = part.startswith("train")
    options = {"perturb_speed": perturb, "shuffle_seed": args.seed if shuffle else None}
    manifests = [args.manifest_dir / f"librispeech_{kind}_{part}.jsonl.gz"
                 for kind in ("recordings", "supervisions")]
    if (outputs_are_up_to_date([cuts_path, options_path], manifests)
            and json.loads(options_path.read_text()) == options):
        logging.info(f"stage 3: {cuts_path} is up to date; skipping")
        return
    recordings, supervisions = (load_manifest(path) for path in manifests)
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    cuts = cuts.trim_to_supervisions(keep_overlapping=False).to_eager()
    if perturb:
        cuts = cuts + cuts.perturb_speed(0.9) + cuts.perturb_speed(1.1)
    logging.info(f"stage 3: computing fbank for {part} ({len(cuts)} cuts)")
    cuts = compute_features(cuts, args.output_dir / f"librispeech_feats_{part}", args.num_jobs)
    if shuffle:
        cuts = cuts.to_eager().shuffle(random.Random(args.seed))
    write_atomically(cuts, cuts_path)
    options_path.write_text(json.dumps(options))


def make_train_all_shuf(args: argparse.Namespace) -> None:
    """librispeech_cuts_train-all-shuf.jsonl.gz: the lines of the three 960 h
    training cut sets in one random order (icefall's `cat | shuf`).  Lines are
    shuffled as text, so the 960 h cut set (about 843k cuts with the perturbed
    copies) costs its text in memory, not lhotse objects."""
    inputs = [args.output_dir / f"librispeech_cuts_{part}.jsonl.gz" for part in TRAIN_960_PARTS]
    output = args.output_dir / "librispeech_cuts_train-all-shuf.jsonl.gz"
    if not all(path.is_file() for path in inputs):
        missing = [path.name for path in inputs if not path.is_file()]
        logging.info(f"stage 3: no train-all-shuf (missing {', '.join(missing)})")
        return
    if outputs_are_up_to_date([output], inputs):
        logging.info(f"stage 3: {output} is up to date; skipping")
        return
    lines = []
    for path in inputs:
        with gzip.open(path, "rt") as f:
            lines.extend(line if line.endswith("\n") else line + "\n" for line in f if line.strip())
    random.Random(args.seed).shuffle(lines)
    tmp_path = output.with_name(f"tmp.{output.name}")
    with gzip.open(tmp_path, "wt") as f:
        f.writelines(lines)
    tmp_path.rename(output)
    logging.info(f"stage 3: wrote {output} ({len(lines)} cuts of {len(inputs)} parts, shuffled)")


def compute_features(cuts, storage_path: Path, num_jobs: int):
    """Fbank of every cut, stored with LilcomChunkyWriter.

    The batched extractor runs the fbank on many cuts at once in this process
    (vectorised torch) while `num_jobs` DataLoader workers read and resample
    audio; on 2 cores that is about twice as fast as one process per job, and
    it shows per-cut progress.
    """
    from lhotse import LilcomChunkyWriter

    return cuts.compute_and_store_features_batch(
        extractor=make_fbank_extractor(),
        storage_path=storage_path,
        batch_duration=300.0,
        num_workers=num_jobs,
        storage_type=LilcomChunkyWriter,
        overwrite=True,
    )


def compute_musan(args: argparse.Namespace) -> None:
    """Features for the noise set, cut into 10 s windows as icefall does."""
    from lhotse import CutSet, combine, load_manifest

    cuts_path = args.output_dir / "musan_cuts.jsonl.gz"
    recording_paths = sorted(args.manifest_dir.glob("musan_recordings_*.jsonl.gz"))
    if cuts_path.is_file() or not recording_paths:
        if not recording_paths:
            logging.info("stage 3: no noise manifests (stage 2); no musan_cuts")
        return
    recordings = combine(*[load_manifest(p) for p in recording_paths])
    cuts = (
        CutSet.from_manifests(recordings=recordings)
        .cut_into_windows(10.0)
        .filter(lambda cut: cut.duration > 5.0)
        .to_eager()
    )
    logging.info(f"stage 3: computing fbank for noise ({len(cuts)} cuts)")
    cuts = compute_features(cuts, args.output_dir / "musan_feats", args.num_jobs)
    write_atomically(cuts, cuts_path)


def write_atomically(cuts, path: Path) -> None:
    """Writes the cut set under a temporary name first: a killed run leaves no
    half-written manifest that a rerun would mistake for a finished one."""
    tmp_path = path.with_name(f"tmp.{path.name}")
    cuts.to_file(tmp_path)
    tmp_path.rename(path)


def main() -> int:
    args = get_parser().parse_args()
    setup_logging()
    parts = args.parts or find_parts(args.manifest_dir)
    if not parts:
        logging.error(
            f"stage 3: no manifests in {args.manifest_dir}; "
            "run ./prepare.sh --stage 1 --stop-stage 1"
        )
        return 1
    for part in parts:
        if not (args.manifest_dir / f"librispeech_recordings_{part}.jsonl.gz").is_file():
            logging.error(f"stage 3: no manifests for {part}; run ./prepare.sh --stage 1")
            return 1
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for part in parts:
        compute_part(part, args)
    make_train_all_shuf(args)
    compute_musan(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
