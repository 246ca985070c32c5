#!/usr/bin/env python3
"""Transcribe sound files with cpu_jit.pt (export.py --jit 1) alone, streaming.

Usage:

  ./pruned_transducer_stateless4/jit_pretrained.py \\
      --nn-model-filename exp/pruned_transducer_stateless4/cpu_jit.pt \\
      --bpe-model data/lang_bpe_500/bpe.model \\
      --method greedy_search \\
      FILE1.wav FILE2.flac ...

No checkpoint is needed: the network comes from the TorchScript file (and
greedy search needs no model code either, see below).  Audio is fed to an
online kaldi-native-fbank front end in pieces of --feed-seconds, and the
encoder runs chunk by chunk with its cached state as soon as enough feature
frames are ready (4 * chunk + 11 frames per step, advancing by 4 * chunk); the
search consumes each chunk's frames right away (greedy_search,
modified_beam_search, fast_beam_search; beam_search searches after the last
chunk).  At the end of a file the last partial chunk is padded and only its
real frames are used, so, unlike sherpa-onnx (which runs full windows only),
no tail padding audio is needed.

Any sample rate and channel count: channels are averaged and the audio is
resampled to 16 kHz with a windowed-sinc polyphase filter (both said in the
log).  One line per file on stdout, "FILE: TEXT"; a file that cannot be
decoded (missing, empty, corrupt, too short) gets one line on stderr and the
others are still decoded; the exit code is then 1.

Greedy search needs only torch (and numpy, soundfile, kaldi-native-fbank,
sentencepiece or --tokens): the searches of jit_streaming.py; the other
methods use the recipe's search code (beam_search.py, shared/fsa_search.py).
"""

import argparse
import logging
import sys
from pathlib import Path

import torch

from pruned_transducer_stateless4.audio_input import AudioError, read_audio
from pruned_transducer_stateless4.decoding_methods import add_search_arguments, methods
from pruned_transducer_stateless4.jit_streaming import (
    OfflineBeamSearch,
    StreamingFastBeamSearch,
    StreamingGreedySearch,
    StreamingModifiedBeamSearch,
    stream_encoder,
)
from pruned_transducer_stateless4.token_table import TokenDecoder
from shared.utils import HelpFormatter

# The searches of jit_streaming.py, by method: (model, args, vocab_size) ->
# an object with advance(encoder_out) and result().
JIT_SEARCHES = {
    "greedy_search": lambda model, args, vocab_size: StreamingGreedySearch(model),
    "beam_search": lambda model, args, vocab_size: OfflineBeamSearch(model, args.beam_size),
    "modified_beam_search": lambda model, args, vocab_size: StreamingModifiedBeamSearch(
        model, args.beam_size),
    "fast_beam_search": lambda model, args, vocab_size: StreamingFastBeamSearch(
        model, vocab_size, args.beam, args.max_states, args.max_contexts),
}


def make_search(model, args: argparse.Namespace, vocab_size: int):
    return JIT_SEARCHES[args.decoding_method](model, args, vocab_size)


# ---------------------------------------------------------------- main ----
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--nn-model-filename", type=Path, required=True,
                        help="cpu_jit.pt written by export.py --jit 1.")
    parser.add_argument("--bpe-model", type=Path, default=None,
                        help="Sentencepiece model of the training run.")
    parser.add_argument("--tokens", type=Path, default=None,
                        help="tokens.txt ('symbol id' per line) instead of --bpe-model.")
    # icefall's --method; greedy search emits at most one token per frame
    # (sherpa-onnx's), so it has no --max-sym-per-frame.
    add_search_arguments(parser, [name for name in methods() if name in JIT_SEARCHES],
                         option="--method",
                         options=("beam_size", "beam", "max_contexts", "max_states"))
    parser.add_argument("--decode-chunk-size", type=int, default=0,
                        help="Chunk size in frames after subsampling; 0 = the one stored in "
                        "cpu_jit.pt (export.py --decode-chunk-size).")
    parser.add_argument("--left-context", type=int, default=-1,
                        help="Cached left-context frames; -1 = the one stored in cpu_jit.pt.")
    parser.add_argument("--feed-seconds", type=float, default=0.1,
                        help="Audio is given to the front end in pieces of this length.")
    parser.add_argument("--num-threads", "--threads", dest="num_threads", type=int, default=1,
                        help="Torch threads.")
    parser.add_argument("sound_files", type=Path, nargs="+",
                        help="Sound files (wav, flac, ...) at any sample rate.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] "
                        "%(message)s", level=logging.INFO, force=True)
    torch.set_num_threads(args.num_threads)
    if not args.nn_model_filename.is_file():
        raise FileNotFoundError(f"{args.nn_model_filename} not found")
    model = torch.jit.load(str(args.nn_model_filename), map_location="cpu")
    model.eval()
    tokens = TokenDecoder(args.bpe_model, args.tokens)
    if tokens.vocab_size != int(model.vocab_size):
        raise ValueError(f"the vocabulary has {tokens.vocab_size} tokens, the model "
                         f"{int(model.vocab_size)}")
    chunk_size = args.decode_chunk_size or int(model.decode_chunk_size)
    left_context = args.left_context if args.left_context >= 0 else int(model.left_context)
    logging.info(f"{args.nn_model_filename}: streaming with chunks of {chunk_size} frames "
                 f"({chunk_size * 40} ms), {left_context} frames of left context, "
                 f"{args.decoding_method}")

    failed = 0
    for path in args.sound_files:
        try:
            samples, notes = read_audio(path)
        except AudioError as error:
            print(f"{path}: error: {error}", file=sys.stderr, flush=True)
            failed += 1
            continue
        for note in notes:
            logging.info(f"{path}: {note}")
        search = make_search(model, args, tokens.vocab_size)
        stream_encoder(model, samples, chunk_size, left_context, search, args.feed_seconds)
        print(f"{path}: {tokens(search.result())}", flush=True)
    if failed:
        logging.error(f"{failed} of {len(args.sound_files)} files could not be decoded")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"jit_pretrained.py: error: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
