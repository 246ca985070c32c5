"""Names and writers of the result files of decode.py, streaming_decode.py and
sherpa_onnx_decode.py.

Each run writes, for each test set PART, into its results directory
(EXP_DIR/METHOD, EXP_DIR/streaming/METHOD, EXP_DIR/sherpa_onnx):

  recogs-NAME.txt, errs-NAME.txt, wer-summary-NAME.txt   (write_wer_files)
  latency-NAME.{txt,json}                               (streaming only)

where NAME = PART-KEY-SUFFIX: KEY holds the search settings as icefall names
them (offline_result_key, streaming_result_key; sherpa_result_key for
sherpa-onnx, which has no SUFFIX) and SUFFIX the checkpoints and the
streaming settings.  make_results.py, RESULTS.md and sherpa_onnx_decode.py's
agreement find the files by these names, so they must not change.
"""

from pathlib import Path
from typing import Any

from pruned_transducer_stateless4.context_graph import context_key
from pruned_transducer_stateless4.decode_stream import flush_padding_seconds
from shared.metrics import write_error_stats, write_recogs
from shared.utils import AttributeDict, RecipeError


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
def offline_result_key(params: Any) -> str:
    """decode.py's search settings, as icefall names them."""
    method = params.decoding_method
    if method == "greedy_search":
        return f"greedy_search_max_sym_per_frame_{params.max_sym_per_frame}"
    if method in ("beam_search", "modified_beam_search"):
        return f"beam_size_{params.beam_size}" + context_key(params)
    key = f"beam_{params.beam}_max_contexts_{params.max_contexts}_max_states_{params.max_states}"
    if "nbest" in method:
        key += f"_num_paths_{params.num_paths}_nbest_scale_{params.nbest_scale}"
    if "LG" in method:
        key += f"_ngram_lm_scale_{params.ngram_lm_scale}"
    return key


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


def streaming_result_key(params: Any) -> str:
    """streaming_decode.py's search settings, as icefall's streaming_decode.py
    names them."""
    if params.decoding_method == "greedy_search":
        return "greedy_search"
    if params.decoding_method == "modified_beam_search":
        return f"num_active_paths_{params.beam_size}" + context_key(params)
    return f"beam_{params.beam}_max_contexts_{params.max_contexts}_max_states_{params.max_states}"


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
    if params.decoding_method == "fast_beam_search":
        suffix += (f"-beam-{params.beam}-max-contexts-{params.max_contexts}"
                   f"-max-states-{params.max_states}")
    elif params.decoding_method == "modified_beam_search":
        suffix += f"-{params.decoding_method}-beam-size-{params.beam_size}"
    else:
        suffix += f"-max-sym-per-frame-{params.max_sym_per_frame}"
    if params.use_averaged_model:
        suffix += "-use-averaged-model"
    tail_padding = tail_padding_seconds(params)
    if tail_padding > 0:
        suffix += f"-tail-padding-{tail_padding:.2f}"
    return suffix


def sherpa_result_key(int8: bool, decoding_method: str = "greedy_search",
                      hotwords_score: float | None = None) -> str:
    """sherpa_onnx_decode.py's KEY: greedy_search-float,
    modified_beam_search-int8-hotwords-1.5, ..."""
    key = f"{decoding_method}-{'int8' if int8 else 'float'}"
    return key if hotwords_score is None else f"{key}-hotwords-{hotwords_score}"


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
    return f"{part}-{streaming_result_key(settings)}-{streaming_result_suffix(settings)}"


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
