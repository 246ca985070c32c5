#!/usr/bin/env python3
"""Decoding speed of every decode.py method, as a markdown table.

Each method decodes the same cut set with decode.py (the real script, run as a
subprocess, simulated streaming by default), which writes its WER
(``wer-summary-*``) and a ``speed-PART-KEY-SUFFIX.json`` (decoding seconds,
RTF, utterances/s, threads); this script collects those into one table.
Model loading and graph loading are not timed.

Usage (a quiet machine gives meaningful numbers)::

  python benchmarks/decode_benchmark.py --exp-dir exp/pruned_transducer_stateless4 \\
      --iter 3000 --avg 2 --use-averaged-model true \\
      --bpe-model data/lang_bpe_256/bpe.model --lang-dir data/lang_bpe_256 \\
      --test-sets test-clean --max-utts 100 --num-threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from lhotse import load_manifest
from linked_exp_dir import link_exp_dir

from pruned_transducer_stateless4.decoding_methods import methods
from pruned_transducer_stateless4.result_files import add_test_sets_argument
from shared.utils import HelpFormatter, RecipeError, str2bool

DECODE_PY = Path(__file__).resolve().parent.parent / "pruned_transducer_stateless4/decode.py"



def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--exp-dir", type=Path, required=True, help="Experiment directory.")
    parser.add_argument("--epoch", type=int, default=0, help="As decode.py --epoch.")
    parser.add_argument("--iter", type=int, default=0, help="As decode.py --iter.")
    parser.add_argument("--avg", type=int, default=1, help="As decode.py --avg.")
    parser.add_argument("--use-averaged-model", type=str2bool, default=True,
                        help="As decode.py --use-averaged-model.")
    parser.add_argument("--bpe-model", type=Path, default=Path("data/lang_bpe_256/bpe.model"),
                        help="Sentencepiece model.")
    parser.add_argument("--lang-dir", type=Path, default=Path("data/lang_bpe_256"),
                        help="Directory with LG.fst and words.txt (LG methods).")
    add_test_sets_argument(parser, several=False)
    parser.add_argument("--max-utts", type=int, default=100,
                        help="Decode only the first this many cuts.")
    parser.add_argument("--methods", type=str, default=",".join(methods()),
                        help="Comma-separated decoding methods (decoding_methods.py).")
    parser.add_argument("--num-threads", "--threads", dest="num_threads", type=int, default=1,
                        help="Torch threads.")
    parser.add_argument("--decode-chunk-size", type=int, default=16,
                        help="Simulated-streaming chunk (encoder frames).")
    parser.add_argument("--left-context", type=int, default=64,
                        help="Simulated-streaming left context (encoder frames).")
    parser.add_argument("--output-json", type=Path, default=None,
                        help="Also write the rows as JSON here.")
    return parser


def run_decode(options: list[str]) -> None:
    """Runs decode.py; a failure ends the benchmark with its last error line."""
    result = subprocess.run([sys.executable, str(DECODE_PY), *options], capture_output=True,
                            text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        raise RecipeError(f"decode.py failed: {lines[-1]}")


def main() -> None:
    args = get_parser().parse_args()
    path = Path(args.test_sets)
    if not path.is_file():
        path = Path("data/fbank") / f"librispeech_cuts_{args.test_sets}.jsonl.gz"
    cuts = load_manifest(path)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        subset_path = Path(tmp) / "bench.jsonl.gz"
        exp_dir = link_exp_dir(args.exp_dir, Path(tmp) / "exp")
        cuts.subset(first=min(args.max_utts, len(cuts))).to_file(subset_path)
        for method in args.methods.split(","):
            model_args = ["--exp-dir", str(exp_dir), "--avg", str(args.avg),
                          "--use-averaged-model", str(args.use_averaged_model).lower()]
            model_args += (["--iter", str(args.iter)] if args.iter > 0
                           else ["--epoch", str(args.epoch)])
            run_decode([
                *model_args, "--bpe-model", str(args.bpe_model), "--lang-dir",
                str(args.lang_dir), "--decoding-method", method, "--test-sets",
                str(subset_path), "--num-threads", str(args.num_threads),
                "--simulate-streaming", "true", "--decode-chunk-size",
                str(args.decode_chunk_size), "--left-context", str(args.left_context),
            ])
            speed_file, = (exp_dir / method).glob("speed-bench-*.json")
            speed = json.loads(speed_file.read_text())
            wer_file, = (exp_dir / method).glob("wer-summary-bench-*.txt")
            wer = float(wer_file.read_text().splitlines()[1].split("\t")[1])
            rows.append({"method": method, "wer": wer, **speed})
    print(f"\n{rows[0]['utterances']} utterances of {args.test_sets} "
          f"({rows[0]['audio_seconds']:.0f} s of audio), {args.num_threads} thread(s), "
          f"chunk {args.decode_chunk_size}, left context {args.left_context}\n")
    print("| method | WER % | utterances/s | RTF |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['wer']:.2f} | {row['utterances_per_second']:.2f} "
              f"| {row['rtf']:.4f} |")
    if args.output_json:
        args.output_json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
