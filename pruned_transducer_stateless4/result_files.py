"""Names and writers of the result files of decode.py, streaming_decode.py and
sherpa_onnx_decode.py.

Each run writes, for each test set PART, into its results directory
(EXP_DIR/METHOD, EXP_DIR/streaming/METHOD, EXP_DIR/sherpa_onnx):

  recogs-NAME.txt, errs-NAME.txt, wer-summary-NAME.txt   (write_wer_files)
  latency-NAME.{txt,json}                               (streaming only)

where NAME = PART-KEY-SUFFIX: KEY holds the search settings as icefall names
them (decoding_methods.result_key; sherpa-onnx's files have no SUFFIX) and
SUFFIX the checkpoints and the streaming settings.  make_results.py,
RESULTS.md and sherpa_onnx_decode.py's agreement find the files by these
names, so they must not change.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pruned_transducer_stateless4.decode_stream import flush_padding_seconds
from pruned_transducer_stateless4.decoding_methods import STREAMING, result_key, streaming_suffix
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
