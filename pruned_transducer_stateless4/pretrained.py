#!/usr/bin/env python3
"""Transcribe sound files with pretrained.pt (export.py) or any checkpoint.

Usage:

  ./pruned_transducer_stateless4/pretrained.py \\
      --checkpoint exp/pruned_transducer_stateless4/pretrained.pt \\
      --bpe-model data/lang_bpe_500/bpe.model \\
      --method greedy_search \\
      FILE1.wav FILE2.flac ...

  # as the streaming model runs: chunk-wise attention (simulated streaming)
  ./pruned_transducer_stateless4/pretrained.py ... --simulate-streaming 1 \\
      --decode-chunk-size 16 --left-context 64 FILE.wav

  # icefall's own pretrained.pt ({"model": state_dict} only): its model
  # options on the command line (icefall's names and defaults)
  ./pruned_transducer_stateless4/pretrained.py --checkpoint icefall-exp/pretrained.pt \\
      --bpe-model icefall-exp/bpe.model --causal-convolution true FILE.wav

--method is any method of decoding_methods.py that needs no LG graph (the
fast_beam_search ones use the trivial graph).  The model
options come from the checkpoint when it holds them (export.py's
pretrained.pt, train.py's checkpoints), else from the command line
(shared.checkpoint.load_inference_model).  Features are the training ones
(shared/features.py, lhotse).

Any sample rate and channel count: channels are averaged and the audio is
resampled to 16 kHz (audio_input.read_audio; both said in the log).  One
line per file on stdout, "FILE: TEXT"; a file that cannot be decoded
(missing, empty, corrupt, too short) gets one line on stderr and the others
are still decoded; the exit code is then 1.
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from pruned_transducer_stateless4.audio_input import AudioError, read_audio
from pruned_transducer_stateless4.conformer import encode
from pruned_transducer_stateless4.context_graph import context_graph_of
from pruned_transducer_stateless4.decoding_methods import (
    SearchInputs,
    add_search_arguments,
    get_method,
    methods,
)
from pruned_transducer_stateless4.model import Transducer
from pruned_transducer_stateless4.model_config import add_model_arguments
from pruned_transducer_stateless4.model_loading import inference_params, load_model
from pruned_transducer_stateless4.timestamps import (
    align_tokens,
    format_word_times,
    word_start_times,
)
from pruned_transducer_stateless4.token_table import TokenDecoder
from shared.checkpoint import explicit_options
from shared.features import SAMPLE_RATE, make_fbank_extractor
from shared.fsa_search import DecodingGraph, trivial_graph
from shared.utils import (
    HelpFormatter,
    RecipeError,
    add_device_argument,
    get_device,
    run_main,
    str2bool,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="pretrained.pt from export.py (or an epoch-N.pt checkpoint).")
    parser.add_argument("--bpe-model", type=Path, default=None,
                        help="Sentencepiece model of the training run.")
    parser.add_argument("--tokens", type=Path, default=None,
                        help="tokens.txt ('symbol id' per line) instead of --bpe-model.")
    # icefall's pretrained.py calls it --method; every method that needs no
    # LG graph (there is no --lang-dir here).
    add_search_arguments(parser, methods(graph=(None, "trivial")), option="--method")
    parser.add_argument("--simulate-streaming", type=str2bool, default=False,
                        help="Chunk-wise attention masks as in streaming (needs a model with "
                        "causal convolution); otherwise full attention.")
    parser.add_argument("--decode-chunk-size", type=int, default=16,
                        help="Chunk size (frames after subsampling) of --simulate-streaming.")
    parser.add_argument("--left-context", type=int, default=64,
                        help="Left context (frames after subsampling) of --simulate-streaming.")
    parser.add_argument("--num-threads", "--threads", dest="num_threads", type=int, default=1,
                        help="Torch threads.")
    parser.add_argument("--print-timestamps", type=str2bool, default=False,
                        help="Print each word with its start time, WORD@SECONDS, from the "
                        "encoder frames of the best alignment of the result (timestamps.py).")
    add_device_argument(parser)
    parser.add_argument("sound_files", type=Path, nargs="+",
                        help="Sound files (wav, flac, ...) at any sample rate.")
    add_model_arguments(parser)
    return parser


@torch.no_grad()
def transcribe(model: Transducer, samples: np.ndarray, args: argparse.Namespace,
               extractor, graph: DecodingGraph | None) -> tuple[list[int], torch.Tensor]:
    """Searches one utterance (16 kHz mono samples) on the model's device.

    Returns:
      (token ids, encoder output (T, encoder_dim)).
    """
    device = next(model.parameters()).device
    features = torch.from_numpy(extractor.extract(samples, SAMPLE_RATE)).unsqueeze(0).to(device)
    feature_lens = torch.tensor([features.size(1)], device=device)
    chunk_size = args.decode_chunk_size if args.simulate_streaming else -1
    encoder_out, encoder_out_lens = encode(model.encoder, features, feature_lens,
                                           chunk_size=chunk_size, left_context=args.left_context)
    search = get_method(args.decoding_method).offline
    tokens = search(model, encoder_out, encoder_out_lens, SearchInputs(
        args, graph, torch.Generator().manual_seed(0), args.context_graph))[0]
    return tokens, encoder_out[0, : int(encoder_out_lens[0])]


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] "
                        "%(message)s", level=logging.INFO, force=True)
    torch.set_num_threads(args.num_threads)
    tokens = TokenDecoder(args.bpe_model, args.tokens)
    if args.context_file is not None and tokens.sp is None:
        raise RecipeError("--context-file needs --bpe-model (to encode the phrases)")
    args.context_graph = context_graph_of(vars(args), tokens.sp)
    device = get_device(requested=args.device)
    params = inference_params(**vars(args), vocab_size=tokens.vocab_size)
    model = load_model(params, explicit_options(sys.argv[1:] if argv is None else argv), device,
                       checkpoint=args.checkpoint)
    if args.simulate_streaming and not model.encoder.causal:
        raise RecipeError("--simulate-streaming needs a model with causal convolution")
    mode = (f"simulated streaming (chunks of {args.decode_chunk_size} frames, "
            f"{args.left_context} frames of left context)" if args.simulate_streaming
            else "full attention")
    logging.info(f"{args.checkpoint}: {args.decoding_method}, {mode}, on {device}")
    extractor = make_fbank_extractor()
    graph = None
    if get_method(args.decoding_method).graph == "trivial":
        graph = trivial_graph(model.decoder.vocab_size, device)

    failed = 0
    for path in args.sound_files:
        try:
            samples, notes = read_audio(path, SAMPLE_RATE)
        except AudioError as error:
            print(f"{path}: error: {error}", file=sys.stderr, flush=True)
            failed += 1
            continue
        for note in notes:
            logging.info(f"{path}: {note}")
        token_ids, encoder_out = transcribe(model, samples, args, extractor, graph)
        if args.print_timestamps:
            frames = align_tokens(model, encoder_out, token_ids)
            pieces = tokens.pieces(token_ids)
            print(f"{path}: {format_word_times(word_start_times(pieces, frames))}", flush=True)
        else:
            print(f"{path}: {tokens(token_ids)}", flush=True)
    if failed:
        logging.error(f"{failed} of {len(args.sound_files)} files could not be decoded")
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
