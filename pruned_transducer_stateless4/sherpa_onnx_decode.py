#!/usr/bin/env python3
"""Decode cut sets with sherpa-onnx on the ONNX export of export.py --onnx 1.

Usage (from the project root, after export.py --onnx 1):

  ./pruned_transducer_stateless4/sherpa_onnx_decode.py \\
      --exp-dir exp/pruned_transducer_stateless4 --epoch 30 --avg 9 \\
      --int8 false --num-threads 1 --test-sets test-clean test-other

  # the int8-quantised files, and an explicit streaming_decode.py recogs file
  ./pruned_transducer_stateless4/sherpa_onnx_decode.py ... --int8 true \\
      --compare-recogs 'recogs-{part}-greedy_search-epoch-30-avg-9-streaming-*.txt'

The model is encoder/decoder/joiner-SUFFIX.onnx (.int8.onnx with --int8 true)
and tokens.txt in --exp-dir, SUFFIX = epoch-E-avg-A (or iter-B-avg-A) as
export.py names them.  Every cut of --test-sets is read as AUDIO (cut.load_audio(),
16 kHz) and decoded by sherpa_onnx.OnlineRecognizer (greedy_search): all of an
utterance's samples are given to its stream at once, followed by
--tail-padding-seconds of silence and input_finished().  sherpa-onnx runs
only full encoder windows (4 * chunk + 11 feature frames), and only when a
frame follows them, so the silence must hold 4 * chunk + 8 frames for every
frame of speech to be decoded: 0.72 s for chunks of 16, the default with
--tail-padding-seconds -1 (with chunks of 16, a fixed 0.3 s changed the
transcript of 11 of 30 test utterances cut mid-speech).  Up to --num-decode-streams
streams are decoded together, each decode_streams() call running the encoder
on one chunk of every ready stream as one batch (as streaming_decode.py does).

Outputs in EXP_DIR/sherpa_onnx/, KEY = greedy_search-float or greedy_search-int8:
  recogs-PART-KEY.txt, errs-PART-KEY.txt, wer-summary-PART-KEY.txt
                         as decode.py and streaming_decode.py write them
  rtf-PART-KEY.json      rtf = processing_seconds / audio_seconds, where
                         processing_seconds is the wall time of the decoding
                         (front end, encoder, search), excluding model loading
                         and reading the audio files
  agreement-PART-KEY.json  fraction of utterances whose sherpa-onnx
                         transcript equals streaming_decode.py's greedy one
                         word for word (see below)
  record-PART-KEY.json   the run's record for make_results.py (shared/run_record.py):
                         arguments, settings, WER, RTF and agreement
  log-decode-KEY         the log

Agreement.  streaming_decode.py --decoding-method greedy_search writes
EXP_DIR/streaming/greedy_search/recogs-PART-greedy_search-SUFFIX-streaming-
chunk-size-C-left-context-L-max-sym-per-frame-1[-use-averaged-model]
[-tail-padding-S].txt; by default the file of the same checkpoint suffix, of
the export's chunk size C and left context L (read from the encoder's
metadata) and of this run's tail padding S is used (streaming_decode.py
--tail-padding-seconds -1 gives it the default padding), else the unpadded
one.  If none exists the agreement is skipped with a warning, unless
--compare-dir or --compare-recogs was given, which makes it an error.
Against the padded file both decode the same samples; the remaining
differences come from float arithmetic, from streaming_decode.py also
decoding the last partial chunk of silence, and from sherpa-onnx's greedy
search treating <unk> as blank.  Against the unpadded file expect more at the
ends of utterances: there streaming_decode.py pads the last partial chunk with
the log floor and uses only its real frames, while sherpa-onnx's last frames
see silence in their chunk.
"""

import argparse
import glob
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pruned_transducer_stateless4.asr_datamodule import LibriSpeechAsrDataModule
from pruned_transducer_stateless4.audio_input import load_cut_audio
from pruned_transducer_stateless4.decode_stream import flush_padding_seconds
from pruned_transducer_stateless4.decoding_methods import (
    SHERPA_ONNX,
    add_search_arguments,
    methods,
    result_key,
)
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
    write_sherpa_record,
    write_wer_files,
)
from pruned_transducer_stateless4.sherpa_recognizer import (
    build_recognizer,
    decode_waves,
    sherpa_word_times,
)
from shared.features import SAMPLE_RATE
from shared.metrics import read_recogs
from shared.utils import (
    AttributeDict,
    HelpFormatter,
    RecipeError,
    run_main,
    setup_logging,
    str2bool,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--exp-dir", type=Path, default=Path("exp/pruned_transducer_stateless4"),
                        help="Where export.py --onnx 1 wrote the ONNX files and tokens.txt; "
                        "results go to EXP_DIR/sherpa_onnx.")
    parser.add_argument("--epoch", type=int, default=30,
                        help="The export of export.py --epoch E (file suffix epoch-E-avg-A).")
    parser.add_argument("--iter", type=int, default=0,
                        help="If > 0, the export of export.py --iter B (suffix iter-B-avg-A).")
    parser.add_argument("--avg", type=int, default=9,
                        help="The --avg of the export (the same default as export.py).")
    parser.add_argument("--use-averaged-model", type=str2bool, default=False,
                        help="Only for finding streaming_decode.py's recogs file: it was "
                        "decoded with --use-averaged-model true (the ONNX file names do not "
                        "say).")
    parser.add_argument("--int8", type=str2bool, default=False,
                        help="Use the int8-quantised files (*.int8.onnx).")
    parser.add_argument("--num-threads", "--threads", dest="num_threads", type=int, default=1,
                        help="onnxruntime threads of sherpa-onnx.")
    # sherpa-onnx's searches (the agreement with streaming_decode.py is computed
    # for greedy_search only); its greedy search has no --max-sym-per-frame.
    add_search_arguments(parser, methods(sherpa_onnx=True), options=("beam_size",))
    parser.add_argument("--hotwords-file", type=Path, default=None,
                        help="Hotwords of a method that takes them, one phrase a line (words "
                        "of the BPE model's case, optionally ' :SCORE'), encoded with "
                        "EXP_DIR/bpe.vocab (modeling_unit bpe; export.py copies it there).")
    parser.add_argument("--hotwords-score", type=float, default=1.5,
                        help="Bonus per token of a hotword (sherpa-onnx's default).")
    parser.add_argument("--num-decode-streams", type=int, default=100,
                        help="Streams decoded together (one encoder batch per chunk step), as "
                        "streaming_decode.py --num-decode-streams.")
    parser.add_argument("--tail-padding-seconds", type=float, default=-1.0,
                        help="Silence appended to every utterance before input_finished(), "
                        "so that sherpa-onnx decodes its last frames; -1: just enough for "
                        "the export's chunk size, (4 * chunk + 8) * 10 ms.")
    add_test_sets_argument(parser)
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/fbank"),
                        help="Directory with the cut sets of prepare.sh stage 3.")
    parser.add_argument("--compare-dir", type=Path, default=None,
                        help="Directory of streaming_decode.py's greedy recogs files "
                        "(default: EXP_DIR/streaming/greedy_search).")
    parser.add_argument("--compare-recogs", type=str, default=None,
                        help="Name or glob (in --compare-dir, or a path) of the recogs file to "
                        "compare with; '{part}' is replaced by the part name.  Default: "
                        "streaming_decode.py's name for this checkpoint, chunk size and left "
                        "context.")
    return parser


# ---------------------------------------------------------------- agreement --
def streaming_recogs_name(part: str, settings: AttributeDict) -> str:
    """The name streaming_decode.py gives its recogs file of `part`."""
    return f"recogs-{streaming_result_name(part, settings)}.txt"


def find_compare_file(compare_dir: Path, pattern: str | None, default_names: Sequence[str],
                      part: str, required: bool) -> Path | None:
    """The recogs file to compare with, or None (warned) if there is none and
    none was asked for explicitly.  Without `pattern`, the first of
    `default_names` that exists."""
    patterns = [pattern.replace("{part}", part)] if pattern else list(default_names)
    matches: list[str] = []
    for name in patterns:
        full = name if os.path.isabs(name) or os.sep in name else str(compare_dir / name)
        matches += sorted(glob.glob(full))
        if matches and not pattern:
            break
    matches = sorted(set(matches))
    if len(matches) > 1:
        raise RecipeError(f"{len(matches)} recogs files match {patterns} in {compare_dir} "
                          f"({', '.join(Path(m).name for m in matches[:3])}, ...); pass "
                          "--compare-recogs with the exact name")
    if not matches:
        message = (f"no streaming_decode.py recogs file {patterns} in {compare_dir}; run "
                   "streaming_decode.py --decoding-method greedy_search with the export's "
                   "--decode-chunk-size/--left-context, or pass --compare-recogs")
        if required:
            raise RecipeError(message)
        logging.warning(f"{message}: agreement of {part} skipped")
        return None
    return Path(matches[0])


def agreement(ours: dict[str, list[str]], sherpa: dict[str, list[str]],
              num_examples: int = 5) -> dict[str, Any]:
    """Fraction of the utterances of `sherpa` whose words equal those in `ours`.

    Args:
      ours: cut id -> words of streaming_decode.py.
      sherpa: cut id -> words of sherpa-onnx.
    Returns:
      {num_utts, num_equal, agreement, num_missing (ids of `sherpa` that `ours`
      lacks; not counted in num_utts), example_differences: the first
      num_examples differing utterances by id, as (id, ours, sherpa) texts}.
    """
    common = sorted(set(sherpa) & set(ours))
    different = [cut_id for cut_id in common if ours[cut_id] != sherpa[cut_id]]
    return {
        "num_utts": len(common),
        "num_equal": len(common) - len(different),
        "agreement": (len(common) - len(different)) / len(common) if common else float("nan"),
        "num_missing": len(set(sherpa) - set(ours)),
        "example_differences": [(cut_id, " ".join(ours[cut_id]), " ".join(sherpa[cut_id]))
                                for cut_id in different[:num_examples]],
    }


# -------------------------------------------------------------------- main --
def cut_waves(cuts: Iterable, durations: list[float]) -> Iterable[np.ndarray]:
    """Yields the samples (S,) float32 16 kHz of every cut and appends its
    duration in seconds (of the samples, without tail padding) to durations."""
    for cut in cuts:
        samples = load_cut_audio(cut)
        durations.append(samples.size / SAMPLE_RATE)
        yield samples


def write_json(path: Path, value: dict[str, Any]) -> None:
    with open(path, "w") as out:
        json.dump(value, out, indent=2)
        out.write("\n")


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Decodes every part; returns {part: {"wer", "rtf", "agreement" (or None)}}."""
    args = get_parser().parse_args(argv)
    if args.num_threads < 1:
        raise RecipeError(f"--num-threads must be >= 1, got {args.num_threads}")
    if args.num_decode_streams < 1:
        raise RecipeError(f"--num-decode-streams must be >= 1, got {args.num_decode_streams}")
    if args.tail_padding_seconds < 0 and args.tail_padding_seconds != -1:
        raise RecipeError(f"--tail-padding-seconds must be >= 0 or -1, got "
                          f"{args.tail_padding_seconds}")
    suffix = export_suffix(args.epoch, args.iter, args.avg)
    paths = onnx_export_paths(args.exp_dir, suffix, args.int8)
    # Before creating EXP_DIR/sherpa_onnx: a wrong --exp-dir leaves nothing behind.
    check_export(paths, suffix)
    key = result_key(args, SHERPA_ONNX)
    res_dir = args.exp_dir / "sherpa_onnx"
    setup_logging(res_dir / f"log-decode-{key}")
    chunk_size, left_context = export_streaming_config(paths["encoder"])
    tail_padding = (flush_padding_seconds(chunk_size) if args.tail_padding_seconds == -1
                    else args.tail_padding_seconds)
    logging.info(f"sherpa-onnx on {paths['encoder'].name} (and decoder, joiner): chunks of "
                 f"{chunk_size} frames, {left_context} frames of left context, "
                 f"{tail_padding:.2f} s of tail padding, {args.num_threads} thread(s), "
                 f"{args.num_decode_streams} streams")
    recognizer = build_recognizer(args.exp_dir, suffix, args.int8, args.num_threads,
                                  args.decoding_method, args.beam_size,
                                  args.hotwords_file, args.hotwords_score)

    compare_dir = args.compare_dir or args.exp_dir / "streaming" / "greedy_search"
    # Preferably the streaming_decode.py run that got the same silence at the
    # end of every utterance (--tail-padding-seconds), else the unpadded one.
    compare_settings = [
        streaming_settings(args.epoch, args.iter, args.avg, chunk_size, left_context,
                           args.use_averaged_model, padding)
        for padding in dict.fromkeys([tail_padding, 0.0])
    ]
    compare_required = args.compare_dir is not None or args.compare_recogs is not None
    if args.decoding_method != "greedy_search":
        if compare_required:
            raise RecipeError("the agreement is with streaming_decode.py's greedy search: "
                              "--compare-dir/--compare-recogs need --decoding-method "
                              "greedy_search")
        compare_settings = []
    data = LibriSpeechAsrDataModule(argparse.Namespace(manifest_dir=args.manifest_dir))
    summary: dict[str, dict[str, Any]] = {}
    for test_set in args.test_sets:
        part = part_name(test_set)
        cuts = list(data.cuts_by_name_or_path(test_set))
        if not cuts:
            raise RecipeError(f"cut set {test_set} is empty")
        compare_file = None if not compare_settings else find_compare_file(
            compare_dir, args.compare_recogs,
            [streaming_recogs_name(part, settings) for settings in compare_settings],
            part, compare_required)

        durations: list[float] = []
        sherpa, processing_seconds = decode_waves(
            recognizer, cut_waves(cuts, durations), tail_padding, args.num_decode_streams)
        audio_seconds = sum(durations)
        results = [(cut.id, " ".join(s.text for s in cut.supervisions if s.text), r.text)
                   for cut, r in zip(cuts, sherpa)]
        res_dir.mkdir(parents=True, exist_ok=True)
        word_times = {cut.id: sherpa_word_times(r) for cut, r in zip(cuts, sherpa)}
        wer = write_wer_files(res_dir, part, key, f"{part}-{key}", results, word_times)
        rtf = processing_seconds / audio_seconds if audio_seconds > 0 else float("nan")
        speed = {
            "rtf": rtf, "audio_seconds": audio_seconds,
            "processing_seconds": processing_seconds, "num_threads": args.num_threads,
            "num_utterances": len(cuts), "num_decode_streams": args.num_decode_streams,
            "tail_padding_seconds": tail_padding,
            "model": str(paths["encoder"]),
            "definition": "processing_seconds: wall time of sherpa-onnx's feature "
            "extraction, encoder and search (tail padding included); model loading and "
            "audio reading excluded; audio_seconds without the tail padding",
        }
        write_json(res_dir / f"rtf-{part}-{key}.json", speed)
        logging.info(f"{part} {key}: WER {wer * 100:.2f}% ({len(cuts)} utterances); RTF "
                     f"{rtf:.4f} ({processing_seconds:.2f} s for {audio_seconds:.2f} s of audio)")

        agreed = None
        if compare_file is not None:
            try:
                ours = {cut_id: hyp for cut_id, (_, hyp) in read_recogs(compare_file).items()}
            except ValueError as error:
                raise RecipeError(str(error)) from error
            agreed = agreement(ours, {cut.id: r.words for cut, r in zip(cuts, sherpa)})
            agreed["compare_file"] = str(compare_file)
            write_json(res_dir / f"agreement-{part}-{key}.json", agreed)
            missing = f", {agreed['num_missing']} not in it" if agreed["num_missing"] else ""
            logging.info(f"{part} {key}: agreement with {compare_file.name}: "
                         f"{agreed['num_equal']}/{agreed['num_utts']} = "
                         f"{agreed['agreement'] * 100:.2f}% of the utterances{missing}")
        write_sherpa_record(res_dir, key, args, argv, part,
                            (chunk_size, left_context, tail_padding), results, speed, agreed)
        summary[part] = {"wer": wer, "rtf": rtf,
                         "agreement": None if agreed is None else agreed["agreement"]}
    logging.info(f"results in {res_dir}")
    return summary


if __name__ == "__main__":
    run_main(main)
