#!/usr/bin/env python3
"""Microphone-like streaming demo: feeds a sound file in 100 ms pieces at
real-time pace and prints the partial result whenever it changes.

Usage:

  ./pruned_transducer_stateless4/streaming_demo.py FILE.wav \\
    --exp-dir exp/pruned_transducer_stateless4 --epoch 30 --avg 1 \\
    --bpe-model data/lang_bpe_500/bpe.model --decode-chunk-size 16 --left-context 64

  # as fast as possible instead of at real-time pace
  ./pruned_transducer_stateless4/streaming_demo.py FILE.wav --no-realtime ...

Each output line is `[audio time] partial text`, where audio time is how
much audio had been fed; the last line is the final result, followed by the
token latency (wall clock, defined as in streaming_decode.py) and the delay of
the final result after the end of the audio.  Any format lhotse/soundfile
reads works; audio is resampled to 16 kHz and mixed down to mono.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pruned_transducer_stateless4.audio_input import load_recording
from pruned_transducer_stateless4.decode_stream import token_latencies
from pruned_transducer_stateless4.model_config import add_model_arguments
from pruned_transducer_stateless4.streaming_engine import (
    add_checkpoint_arguments,
    add_streaming_arguments,
    decode_one_chunk,
    load_tokenizer_and_model,
)
from shared.features import SAMPLE_RATE
from shared.utils import AttributeDict, HelpFormatter, run_main, setup_logging


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("sound_file", type=Path, help="The audio to recognise.")
    parser.add_argument("--no-realtime", action="store_true",
                        help="Feed the audio as fast as possible instead of at real-time pace.")
    parser.add_argument("--piece-ms", type=float, default=100.0,
                        help="Milliseconds of audio per piece fed to the recogniser.")
    add_checkpoint_arguments(parser)
    add_streaming_arguments(parser)
    add_model_arguments(parser)
    return parser


@torch.no_grad()
def run_demo(params: AttributeDict, out=None) -> str:
    """Streams params.sound_file and prints partial results (to `out`,
    default sys.stdout); returns the final text."""
    out = out if out is not None else sys.stdout
    sp, setup = load_tokenizer_and_model(params)
    audio = load_recording(params.sound_file)
    piece = max(1, round(params.piece_ms * SAMPLE_RATE / 1000))
    stream = setup.new_stream(params.sound_file.name)
    realtime = not params.no_realtime
    shown = ""

    def process_ready_chunks() -> None:
        nonlocal shown
        while stream.chunk_ready():
            decode_one_chunk(setup, [stream])
            stream.record_partial()
            text = sp.decode(stream.partial_tokens())
            if text != shown:
                shown = text
                print(f"[{stream.num_samples / SAMPLE_RATE:6.2f} s] {text}", file=out, flush=True)

    start = time.monotonic()
    for begin in range(0, audio.size, piece):
        end = min(begin + piece, audio.size)
        if realtime:
            # Piece [begin, end) is complete at end / 16000 s after the start.
            time.sleep(max(0.0, start + end / SAMPLE_RATE - time.monotonic()))
        stream.accept_waveform(audio[begin:end])
        process_ready_chunks()
    end_of_audio = time.monotonic()
    stream.input_finished(end_of_audio)
    process_ready_chunks()
    final_time = time.monotonic()
    if not stream.chunks or list(stream.chunks[-1].tokens) != stream.partial_tokens():
        stream.chunk_arrival = end_of_audio
        stream.record_partial(final_time)
    text = sp.decode(stream.partial_tokens())
    print(f"FINAL: {text}", file=out)
    latencies, _ = token_latencies(stream)
    if latencies:
        values = np.asarray(latencies) * 1000
        print(f"token latency: mean {values.mean():.1f} ms, p95 {np.percentile(values, 95):.1f} "
              f"ms over {values.size} tokens", file=out)
    print(f"final result {1000 * (final_time - end_of_audio):.1f} ms after the end of the "
          f"audio; {audio.size / SAMPLE_RATE:.2f} s of audio in "
          f"{final_time - start:.2f} s{'' if realtime else ' (not real-time)'}", file=out)
    return text


def main(argv: list[str] | None = None) -> str:
    """Streams the file; returns the final text."""
    args = get_parser().parse_args(argv)
    setup_logging(level=logging.ERROR)
    return run_demo(AttributeDict(vars(args)))


if __name__ == "__main__":
    run_main(main)
