"""Names and writers of the result files of decode.py, streaming_decode.py and
sherpa_onnx_decode.py.

Each run writes, for each test set PART, into its results directory
(EXP_DIR/METHOD, EXP_DIR/streaming/METHOD, EXP_DIR/sherpa_onnx):

  recogs-NAME.txt, errs-NAME.txt, wer-summary-NAME.txt   (write_wer_files)
  latency-NAME.{txt,json}                               (streaming only)
  record-NAME.json    the run's record for make_results.py (shared/run_record.py)

where NAME = PART-KEY-SUFFIX: KEY holds the search settings as icefall names
them (decoding_methods.result_key; sherpa-onnx's files have no SUFFIX) and
SUFFIX the checkpoints and the streaming settings.  make_results.py,
RESULTS.md and sherpa_onnx_decode.py's agreement find the files by these
names, so they must not change.
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pruned_transducer_stateless4.decode_stream import flush_padding_seconds
from pruned_transducer_stateless4.decoding_methods import (
    STREAMING,
    get_method,
    result_key,
    search_settings,
    streaming_suffix,
)
from pruned_transducer_stateless4.streaming_engine import LATENCY_DEFINITION, format_summary
from shared import run_record
from shared.metrics import write_error_stats, write_recogs
from shared.utils import AttributeDict, RecipeError


def add_test_sets_argument(parser: argparse.ArgumentParser, several: bool = True,
                           default: Sequence[str] = ("test-clean", "test-other")) -> None:
    """--test-sets (dest test_sets; old spellings --test-set, --parts, --part,
    --cuts), the test sets a script decodes: LibriSpeech part names (cut sets
    MANIFEST_DIR/librispeech_cuts_PART.jsonl.gz) or paths of cut sets;
    several, or one (a string) for a script that takes one."""
    what = ("LibriSpeech part names (cut sets in --manifest-dir)" if several
            else "One LibriSpeech part name (a cut set in --manifest-dir)")
    parser.add_argument("--test-sets", "--test-set", "--parts", "--part", "--cuts",
                        dest="test_sets", type=str, nargs="+" if several else None,
                        default=list(default) if several else default[0],
                        help=f"{what} or paths of cut sets (.jsonl.gz).")


def part_name(test_set: str) -> str:
    """What the result files call a test set given by --test-sets:
    test-clean -> test-clean, data/fbank/librispeech_cuts_dev-clean.jsonl.gz
    -> dev-clean, cuts/mine.jsonl.gz -> mine."""
    name = Path(test_set).name
    for ending in (".jsonl.gz", ".jsonl"):
        if name.endswith(ending):
            name = name[: -len(ending)]
    return name.removeprefix("librispeech_cuts_")


# ------------------------------------------------------------------ names ----
def offline_result_suffix(params: Any) -> str:
    """decode.py's model and encoding settings."""
    suffix = f"iter-{params.iter}" if params.iter > 0 else f"epoch-{params.epoch}"
    suffix += f"-avg-{params.avg}"
    if params.use_averaged_model:
        suffix += "-use-averaged-model"
    if params.simulate_streaming:
        suffix += (f"-streaming-chunk-size-{params.decode_chunk_size}"
                   f"-left-context-{params.left_context}")
    return suffix


def tail_padding_seconds(params: Any) -> float:
    """--tail-padding-seconds, with -1 resolved (0 when the option is absent)."""
    seconds = getattr(params, "tail_padding_seconds", 0.0)
    if seconds == -1:
        return flush_padding_seconds(params.decode_chunk_size)
    if seconds < 0:
        raise RecipeError(f"--tail-padding-seconds must be >= 0 or -1, got {seconds}")
    return seconds


def streaming_result_suffix(params: Any) -> str:
    """streaming_decode.py's checkpoints, chunk, search and tail padding."""
    suffix = (f"iter-{params.iter}-avg-{params.avg}" if params.iter > 0
              else f"epoch-{params.epoch}-avg-{params.avg}")
    suffix += f"-streaming-chunk-size-{params.decode_chunk_size}"
    suffix += f"-left-context-{params.left_context}"
    suffix += f"-{streaming_suffix(params)}"
    if params.use_averaged_model:
        suffix += "-use-averaged-model"
    tail_padding = tail_padding_seconds(params)
    if tail_padding > 0:
        suffix += f"-tail-padding-{tail_padding:.2f}"
    return suffix


def streaming_settings(epoch: int, iter: int, avg: int, chunk_size: int, left_context: int,
                       use_averaged_model: bool,
                       tail_padding_seconds: float = 0.0) -> AttributeDict:
    """The options of a streaming_decode.py greedy run that decodes what an
    ONNX export of this chunk size and left context decodes
    (max_sym_per_frame 1: sherpa-onnx emits at most one token per frame)."""
    return AttributeDict(decoding_method="greedy_search", epoch=epoch, iter=iter, avg=avg,
                         decode_chunk_size=chunk_size, left_context=left_context,
                         max_sym_per_frame=1, use_averaged_model=use_averaged_model,
                         tail_padding_seconds=tail_padding_seconds)


def streaming_result_name(part: str, settings: Any) -> str:
    """PART-KEY-SUFFIX of streaming_decode.py's files of `part`."""
    return f"{part}-{result_key(settings, STREAMING)}-{streaming_result_suffix(settings)}"


# ---------------------------------------------------------------- writers ----
def write_wer_files(res_dir: Path, part: str, key: str, name: str,
                    results: list[tuple[str, str, str]],
                    word_times: dict[str, list[float]] | None = None) -> float:
    """Writes recogs-NAME.txt (with the start second of each hypothesis word,
    word_times by cut id), errs-NAME.txt and wer-summary-NAME.txt
    ("settings\\tWER", "KEY\\tWER%"); returns the WER (a fraction).

    Args:
      results: (cut id, reference, hypothesis) of every utterance.
    """
    write_recogs(res_dir / f"recogs-{name}.txt", results, word_times)
    wer = write_error_stats(res_dir / f"errs-{name}.txt", f"{part}-{key}", results)
    with open(res_dir / f"wer-summary-{name}.txt", "w") as out:
        out.write("settings\tWER\n")
        out.write(f"{key}\t{wer * 100:.2f}\n")
    return wer


# ---------------------------------------------------- decode.py's files ----
def write_decode_results(params: Any, part: str, results: list[tuple[str, str, str]]) -> float:
    """decode.py's recogs/errs/wer-summary files of `part` in params.res_dir
    (params.word_times: start seconds of the hypothesis words by cut id, for
    the recogs file); returns the WER (a fraction)."""
    key, suffix = result_key(params), offline_result_suffix(params)
    return write_wer_files(params.res_dir, part, key, f"{part}-{key}-{suffix}", results,
                           params.get("word_times"))


def write_decode_record(params: Any, args: dict[str, Any], argv: list[str], part: str,
                        results: list[tuple[str, str, str]], speed: dict[str, Any]) -> Path:
    """Writes RES_DIR/record-PART-KEY-SUFFIX.json, the record make_results.py reads
    (shared/run_record.py): arguments, settings, WER, the recogs file, speed."""
    key, suffix = result_key(params), offline_result_suffix(params)
    path = params.res_dir / f"record-{part}-{key}-{suffix}.json"
    streaming = run_record.SIMULATED if params.simulate_streaming else run_record.FULL_CONTEXT
    settings = run_record.DecodeSettings.from_options(params, streaming, search_settings(params))
    run_record.record_decode(path, "decode.py", part, settings, results,
                             recogs=f"recogs-{part}-{key}-{suffix}.txt", args=args, argv=argv,
                             speed=speed)
    return path


# ------------------------------------------- streaming_decode.py's files ----
def write_streaming_results(res_dir: Path, part: str, key: str, suffix: str,
                            results: list[tuple[str, str, str]], summary: dict[str, Any],
                            word_times: dict[str, list[float]] | None = None) -> float:
    """streaming_decode.py's recogs/errs/wer-summary files and its latency files
    (summary: streaming_engine.summarize's) of `part`; returns the WER (a
    fraction).  word_times: {cut_id: start second of each hypothesis word}."""
    res_dir.mkdir(parents=True, exist_ok=True)
    wer = write_wer_files(res_dir, part, key, f"{part}-{key}-{suffix}", results, word_times)
    with open(res_dir / f"latency-{part}-{key}-{suffix}.txt", "w") as out:
        out.write(format_summary(summary) + "\n\n" + LATENCY_DEFINITION + "\n")
    with open(res_dir / f"latency-{part}-{key}-{suffix}.json", "w") as out:
        json.dump({**summary, "definition": LATENCY_DEFINITION}, out, indent=2)
    return wer


def write_streaming_record(res_dir: Path, params: Any, args: dict[str, Any],
                           argv: list[str] | None, part: str,
                           results: list[tuple[str, str, str]],
                           summary: dict[str, Any]) -> Path:
    """Writes RES_DIR/record-PART-KEY-SUFFIX.json, the record make_results.py
    reads (shared/run_record.py): arguments, settings, WER, recogs file, latency."""
    key, suffix = result_key(params, STREAMING), streaming_result_suffix(params)
    path = res_dir / f"record-{part}-{key}-{suffix}.json"
    settings = run_record.DecodeSettings.from_options(params, run_record.REAL,
                                                      search_settings(params),
                                                      tail_padding_seconds(params))
    run_record.record_decode(path, "streaming_decode.py", part, settings, results,
                             recogs=f"recogs-{part}-{key}-{suffix}.txt", args=args,
                             argv=argv, speed=summary)
    return path


# ----------------------------------------- sherpa_onnx_decode.py's files ----
def write_sherpa_record(res_dir: Path, key: str, args: argparse.Namespace,
                        argv: list[str] | None, part: str, streaming: tuple[int, int, float],
                        results: list[tuple[str, str, str]], speed: dict[str, Any],
                        agreed: dict[str, Any] | None) -> Path:
    """Writes RES_DIR/record-PART-KEY.json, the record make_results.py reads
    (shared/run_record.py).  streaming: the export's chunk size and left context
    and the tail padding in seconds; agreed: the agreement with
    streaming_decode.py, or None."""
    path = res_dir / f"record-{part}-{key}.json"
    chunk_size, left_context, tail_padding = streaming
    search: dict[str, Any] = {}
    if "beam_size" in get_method(args.decoding_method).options:
        search["max_active_paths"] = args.beam_size  # sherpa-onnx's name
    if args.hotwords_file is not None:
        search.update(hotwords_file=str(args.hotwords_file), hotwords_score=args.hotwords_score)
    settings = run_record.DecodeSettings(
        method=args.decoding_method,
        model=run_record.model_selection(args.epoch, args.iter, args.avg),
        use_averaged_model=args.use_averaged_model, streaming=run_record.SHERPA_ONNX,
        chunk_size=chunk_size, left_context=left_context, tail_padding_seconds=tail_padding,
        search=search, model_format="onnx-int8" if args.int8 else "onnx-float")
    run_record.record_decode(path, "sherpa_onnx_decode.py", part, settings, results,
                             recogs=f"recogs-{part}-{key}.txt", args=vars(args), argv=argv,
                             speed=speed, agreement=agreed)
    return path
