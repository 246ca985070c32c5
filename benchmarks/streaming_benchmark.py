#!/usr/bin/env python3
"""RTF and token latency of real streaming decoding for several chunk sizes
and thread counts, as a markdown table.

For every (threads, chunk size) the cut set is decoded by
``streaming_engine.decode_dataset`` (audio delivered at real-time pace on a
simulated clock, see streaming_decode.py for the exact definitions):

* RTF: processing time / audio duration;
* token latency: emission time of a token's chunk minus the arrival of the
  audio that completed that chunk (processing and queueing delay);
* frame latency: emission time minus the arrival of the audio of the token's
  own encoder frame (adds the wait for the rest of the chunk, so it grows
  with the chunk size);
* final delay: final result after the end of the audio.

Usage (a quiet machine gives meaningful numbers)::

  python benchmarks/streaming_benchmark.py --exp-dir exp/pruned_transducer_stateless4 \\
      --epoch 30 --avg 1 --bpe-model data/lang_bpe_500/bpe.model --test-sets test-clean
  python benchmarks/streaming_benchmark.py ... --chunk-sizes 8,16,32 --num-threads 1,2 \\
      --num-decode-streams 1 --max-utts 50 --output-json streaming.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from itertools import islice
from pathlib import Path

import torch

from pruned_transducer_stateless4.asr_datamodule import LibriSpeechAsrDataModule
from pruned_transducer_stateless4.audio_input import load_cut_audio
from pruned_transducer_stateless4.model_config import add_model_arguments
from pruned_transducer_stateless4.result_files import add_test_sets_argument
from pruned_transducer_stateless4.streaming_engine import (
    StreamingSetup,
    add_checkpoint_arguments,
    add_streaming_arguments,
    decode_dataset,
    load_tokenizer_and_model,
    summarize,
)
from shared.features import SAMPLE_RATE
from shared.metrics import word_error_rate
from shared.utils import AttributeDict, HelpFormatter, setup_logging


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    add_checkpoint_arguments(parser)
    add_streaming_arguments(parser, num_threads=False)
    add_test_sets_argument(parser, several=False)
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/fbank"),
                        help="Directory with the cut sets of prepare.sh stage 3.")
    parser.add_argument("--max-utts", type=int, default=0,
                        help="Decode only the first N cuts (0 = all).")
    parser.add_argument("--chunk-sizes", type=_int_list, default=[8, 16, 32],
                        help="Comma-separated chunk sizes (encoder frames, 40 ms each).")
    parser.add_argument("--num-threads", "--threads", dest="num_threads", type=_int_list,
                        default=[1, 2], help="Comma-separated torch thread counts.")
    parser.add_argument("--num-decode-streams", type=int, default=1,
                        help="Concurrent streams (1 = one user; more = a loaded server).")
    parser.add_argument("--audio-piece-ms", type=float, default=100.0,
                        help="Audio arrives in pieces of this many milliseconds.")
    parser.add_argument("--output-json", type=Path, default=None,
                        help="Also write the rows to this JSON file.")
    add_model_arguments(parser)
    return parser


def run(params: AttributeDict) -> list[dict]:
    """Decodes the cuts for every (threads, chunk size); returns the rows."""
    sp, setup = load_tokenizer_and_model(AttributeDict(params, num_threads=0))
    data = LibriSpeechAsrDataModule(argparse.Namespace(manifest_dir=params.manifest_dir))
    cuts = data.cuts_by_name_or_path(params.test_sets)
    if params.max_utts > 0:
        cuts = list(islice(cuts, params.max_utts))
    else:
        cuts = list(cuts)
    audio = {cut.id: load_cut_audio(cut) for cut in cuts}  # read once, outside the timing
    piece = max(1, round(params.audio_piece_ms * SAMPLE_RATE / 1000))
    rows = []
    for threads in params.num_threads:
        torch.set_num_threads(threads)
        for chunk_size in params.chunk_sizes:
            config = StreamingSetup(setup.model, chunk_size, params.left_context, setup.search,
                                    setup.device)
            # Warm-up (first calls allocate and pick kernels).
            decode_dataset(cuts[:1], config, 1, simulate_realtime=False,
                           load_audio=lambda cut: audio[cut.id])
            started = time.perf_counter()
            results, busy = decode_dataset(cuts, config, params.num_decode_streams,
                                           simulate_realtime=True, piece_samples=piece,
                                           load_audio=lambda cut: audio[cut.id])
            summary = summarize(results, busy)
            wer = word_error_rate([r.ref for r in results],
                                  [sp.decode(r.tokens) for r in results])
            row = {"threads": threads, "chunk_size": chunk_size,
                   "chunk_ms": chunk_size * 40, "wer": wer,
                   "wall_seconds": time.perf_counter() - started, **summary}
            logging.info(f"threads {threads} chunk {chunk_size}: RTF {row['rtf']:.4f}")
            rows.append(row)
    return rows


def markdown_table(rows: list[dict], params: AttributeDict) -> str:
    lines = [
        f"Streaming {params.decoding_method}, left context {params.left_context} frames, "
        f"{params.num_decode_streams} concurrent stream(s), {rows[0]['num_utterances']} "
        f"utterances ({rows[0]['audio_seconds']:.1f} s of audio) from {params.test_sets}",
        "",
        "| threads | chunk | RTF | token latency mean / p95 (ms) "
        "| frame latency mean / p95 (ms) | final delay mean / p95 (ms) | WER % |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        token, frame, final = row["token_latency_ms"], row["frame_latency_ms"], \
            row["final_delay_ms"]
        lines.append(
            f"| {row['threads']} | {row['chunk_size']} ({row['chunk_ms']} ms) | "
            f"{row['rtf']:.4f} | {token['mean']:.1f} / {token['p95']:.1f} | "
            f"{frame['mean']:.1f} / {frame['p95']:.1f} | {final['mean']:.1f} / "
            f"{final['p95']:.1f} | {100 * row['wer']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(level=logging.ERROR)
    params = AttributeDict(vars(args))
    rows = run(params)
    print(markdown_table(rows, params))
    if params.output_json is not None:
        params.output_json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
