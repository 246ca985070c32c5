#!/usr/bin/env python3
"""RTF of sherpa-onnx (float and int8 ONNX export) against our own
streaming_decode.py greedy search, one thread each, on the same audio, as a
markdown table.

The two recipe scripts run as subprocesses (each with one thread,
OMP_NUM_THREADS=1) and their JSON outputs are read back:

* streaming_decode.py --decoding-method greedy_search --num-threads 1
  --simulate-realtime false --tail-padding-seconds -1, with the chunk size and
  left context of the ONNX export (read from the encoder's metadata):
  latency-PART-greedy_search-*.json;
* sherpa_onnx_decode.py --num-threads 1 --int8 false, then --int8 true:
  rtf-PART-KEY.json, and agreement-PART-KEY.json against the recogs file
  streaming_decode.py has just written.

Both scripts give every stream all of its audio and the same tail padding
of silence at once and decode up to --num-decode-streams streams as one
batch per chunk, so they do the same work on the same samples;
RTF = processing seconds / audio seconds, where processing excludes model
loading and reading audio in both (see the scripts' docstrings).
Neither warms up, so on a few seconds of audio the first calls dominate.

Usage (the checkpoints and the ONNX export of the same --epoch/--avg in
--exp-dir; a quiet machine gives meaningful numbers)::

  python benchmarks/sherpa_vs_streaming_rtf.py --exp-dir exp/pruned_transducer_stateless4 \\
      --epoch 30 --avg 9 --bpe-model data/lang_bpe_500/bpe.model --test-sets test-clean
  python benchmarks/sherpa_vs_streaming_rtf.py ... --max-utts 20 --output-json rtf.json

With --max-utts N the first N cuts are written to a temporary cut set named
PART-first-N.  The scripts' result files go to a temporary directory of links
to EXP_DIR's checkpoints and exports (benchmarks/linked_exp_dir.py), never into
EXP_DIR itself.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from itertools import islice
from pathlib import Path
from typing import Any

from lhotse import CutSet
from linked_exp_dir import link_exp_dir

from pruned_transducer_stateless4.asr_datamodule import LibriSpeechAsrDataModule
from pruned_transducer_stateless4.decode_stream import flush_padding_seconds
from pruned_transducer_stateless4.decoding_methods import SHERPA_ONNX, result_key
from pruned_transducer_stateless4.onnx_contract import (
    check_export,
    export_streaming_config,
    export_suffix,
    onnx_export_paths,
)
from pruned_transducer_stateless4.result_files import (
    add_test_sets_argument,
    part_name,
    streaming_result_name,
    streaming_settings,
)
from shared.utils import HelpFormatter, RecipeError, run_main, str2bool

PROJECT_DIR = Path(__file__).resolve().parent.parent
SCRIPTS = PROJECT_DIR / "pruned_transducer_stateless4"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--exp-dir", type=Path, default=Path("exp/pruned_transducer_stateless4"),
                        help="Holds the checkpoints (for streaming_decode.py) and the ONNX "
                        "export of export.py --onnx 1 (for sherpa-onnx).")
    parser.add_argument("--epoch", type=int, default=30,
                        help="Checkpoint and export --epoch.")
    parser.add_argument("--iter", type=int, default=0,
                        help="If > 0, checkpoint and export --iter instead of --epoch.")
    parser.add_argument("--avg", type=int, default=9,
                        help="Checkpoint and export --avg.")
    parser.add_argument("--use-averaged-model", type=str2bool, default=True,
                        help="streaming_decode.py --use-averaged-model (as the export was "
                        "made).")
    parser.add_argument("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
                        help="Sentencepiece model, for streaming_decode.py.")
    add_test_sets_argument(parser, several=False)
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/fbank"),
                        help="Directory with the cut sets of prepare.sh stage 3.")
    parser.add_argument("--max-utts", type=int, default=0,
                        help="Decode only the first N cuts (0 = all).")
    parser.add_argument("--num-decode-streams", type=int, default=100,
                        help="Streams decoded together, by both.")
    parser.add_argument("--output-json", type=Path, default=None,
                        help="Also write the rows to this JSON file.")
    return parser


def run_script(script: str, options: list[str]) -> None:
    """Runs a recipe script with one thread; a failure ends the benchmark
    with the script's last error line."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, str(SCRIPTS / script), *options]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        raise RecipeError(f"{script} failed: {lines[-1]}")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def read_wer(path: Path) -> float:
    """The WER (%) of a wer-summary file ("settings\\tWER", "KEY\\tWER")."""
    return float(path.read_text().splitlines()[1].split("\t")[1])


def run(args: argparse.Namespace, work_dir: Path) -> list[dict[str, Any]]:
    """Decodes the part with the three systems; returns one row per system."""
    suffix = export_suffix(args.epoch, args.iter, args.avg)
    check_export(onnx_export_paths(args.exp_dir, suffix), suffix)
    check_export(onnx_export_paths(args.exp_dir, suffix, int8=True), suffix)
    chunk_size, left_context = export_streaming_config(
        onnx_export_paths(args.exp_dir, suffix)["encoder"])

    test_set = args.test_sets
    if args.max_utts > 0:
        data = LibriSpeechAsrDataModule(argparse.Namespace(manifest_dir=args.manifest_dir))
        cuts = data.cuts_by_name_or_path(args.test_sets)
        subset = work_dir / f"{part_name(args.test_sets)}-first-{args.max_utts}.jsonl.gz"
        # Recording paths may be relative to the current directory: the
        # scripts run from it too.
        CutSet.from_cuts(islice(cuts, args.max_utts)).to_file(subset)
        test_set = str(subset)
    part = part_name(test_set)
    exp_dir = link_exp_dir(args.exp_dir, work_dir / "exp")
    model = ["--exp-dir", str(exp_dir), "--epoch", str(args.epoch), "--iter",
             str(args.iter), "--avg", str(args.avg), "--use-averaged-model",
             str(args.use_averaged_model).lower()]
    common = ["--manifest-dir", str(args.manifest_dir),
              "--num-decode-streams", str(args.num_decode_streams)]

    rows = []
    run_script("streaming_decode.py", [
        *model, *common, "--bpe-model", str(args.bpe_model), "--test-sets", test_set,
        "--decoding-method", "greedy_search", "--num-threads", "1",
        "--decode-chunk-size", str(chunk_size), "--left-context", str(left_context),
        "--simulate-realtime", "false", "--tail-padding-seconds", "-1"])
    res_dir = exp_dir / "streaming" / "greedy_search"
    settings = streaming_settings(args.epoch, args.iter, args.avg, chunk_size, left_context,
                                  args.use_averaged_model, flush_padding_seconds(chunk_size))
    names = streaming_result_name(part, settings)
    latency = read_json(res_dir / f"latency-{names}.json")
    rows.append({"system": "streaming_decode.py (PyTorch)", "threads": 1,
                 "num_utterances": latency["num_utterances"],
                 "audio_seconds": latency["audio_seconds"],
                 "processing_seconds": latency["processing_seconds"], "rtf": latency["rtf"],
                 "wer": read_wer(res_dir / f"wer-summary-{names}.txt"), "agreement": None})

    for int8 in (False, True):
        run_script("sherpa_onnx_decode.py", [
            *model, *common, "--test-sets", test_set, "--int8", str(int8).lower(),
            "--num-threads", "1"])
        key = result_key(dict(decoding_method="greedy_search", int8=int8), SHERPA_ONNX)
        sherpa_dir = exp_dir / "sherpa_onnx"
        rtf = read_json(sherpa_dir / f"rtf-{part}-{key}.json")
        agreement = read_json(sherpa_dir / f"agreement-{part}-{key}.json")
        rows.append({"system": f"sherpa-onnx {'int8' if int8 else 'float'}", "threads": 1,
                     "num_utterances": rtf["num_utterances"],
                     "audio_seconds": rtf["audio_seconds"],
                     "processing_seconds": rtf["processing_seconds"], "rtf": rtf["rtf"],
                     "wer": read_wer(sherpa_dir / f"wer-summary-{part}-{key}.txt"),
                     "agreement": agreement["agreement"]})
    for row in rows:
        row.update(part=part, chunk_size=chunk_size, left_context=left_context)
    return rows


def markdown_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    first = rows[0]
    lines = [
        f"Greedy search, chunk {first['chunk_size']} frames ({first['chunk_size'] * 40} ms), "
        f"left context {first['left_context']}, {args.num_decode_streams} stream(s), "
        f"{first['num_utterances']} utterances ({first['audio_seconds']:.1f} s of audio) "
        f"of {first['part']}; agreement = fraction of utterances with streaming_decode.py's "
        "words",
        "",
        "| system | threads | processing (s) | RTF | speed-up | WER % | agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        speedup = first["rtf"] / row["rtf"] if row["rtf"] > 0 else float("nan")
        agreement = ("(reference)" if row["agreement"] is None
                     else f"{row['agreement'] * 100:.1f}%")
        lines.append(f"| {row['system']} | {row['threads']} | {row['processing_seconds']:.2f} "
                     f"| {row['rtf']:.4f} | {speedup:.2f}x | {row['wer']:.2f} | "
                     f"{agreement} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sherpa_vs_streaming_") as work_dir:
        rows = run(args, Path(work_dir))
    print(markdown_table(rows, args))
    if args.output_json is not None:
        args.output_json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
