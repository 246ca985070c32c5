#!/usr/bin/env python3
"""Decode test sets with a trained transducer and write WER reports.

Usage (from the project root, after ./prepare.sh and train.py):

  # greedy search, average of epochs 21..30 (running averages stored by train.py)
  ./pruned_transducer_stateless4/decode.py --epoch 30 --avg 10 \\
      --exp-dir exp/pruned_transducer_stateless4 --bpe-model data/lang_bpe_500/bpe.model \\
      --max-duration 100 --decoding-method greedy_search

  # modified beam search, simulated streaming (chunks of 16 frames, 64 of left context)
  ./pruned_transducer_stateless4/decode.py ... --decoding-method modified_beam_search \\
      --beam-size 4 --simulate-streaming true --decode-chunk-size 16 --left-context 64

  # fast beam search with the LG graph of prepare.sh stage 5
  ./pruned_transducer_stateless4/decode.py ... --decoding-method fast_beam_search_nbest_LG \\
      --lang-dir data/lang_bpe_500 --beam 20 --max-contexts 8 --max-states 64 \\
      --num-paths 200 --nbest-scale 0.5 --ngram-lm-scale 0.01

  # average of checkpoint-B.pt files with B <= 8000 (newest 5)
  ./pruned_transducer_stateless4/decode.py --iter 8000 --avg 5 --use-averaged-model false ...

  # an exported model: ln -s pretrained.pt EXP_DIR/epoch-999.pt
  ./pruned_transducer_stateless4/decode.py --epoch 999 --avg 1 --use-averaged-model false ...

  # icefall's own pretrained.pt (only {"model": state_dict}): the model options
  # on the command line, e.g. a streaming stateless4 model (docs/icefall-model.md)
  ./pruned_transducer_stateless4/decode.py --epoch 999 --avg 1 --use-averaged-model false \\
      --causal-convolution true --simulate-streaming true ...

Decoding methods: every method of decoding_methods.py (--help lists them;
the *_LG ones need --lang-dir's LG graph).  The model options (encoder
size, context size, vocabulary, ...) are read from the checkpoint when it
has them; a model option given on the command line that differs from it is
reported and ignored (shared.checkpoint.load_inference_model).

Outputs in EXP_DIR/<decoding-method>/, for each test set PART:
  recogs-PART-KEY-SUFFIX.txt       reference and hypothesis of every utterance
  errs-PART-KEY-SUFFIX.txt         alignments, frequent errors, per-word stats
  wer-summary-PART-KEY-SUFFIX.txt  "settings  WER"
  speed-PART-KEY-SUFFIX.json       decoding time, RTF and utterances/s
  record-PART-KEY-SUFFIX.json      the run's record for make_results.py: arguments,
                                   settings, WER with error counts, speed (shared/run_record.py)
  log-decode-SUFFIX-*              the log (WER and speed per part)
where KEY holds the search settings (e.g. beam_size_4) and SUFFIX the model
(e.g. epoch-30-avg-10-use-averaged-model, plus -streaming-chunk-size-16-left-context-64).
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from tqdm import tqdm

from pruned_transducer_stateless4.asr_datamodule import (
    LibriSpeechAsrDataModule,
    batch_features,
    batch_texts,
)
from pruned_transducer_stateless4.conformer import encode
from pruned_transducer_stateless4.context_graph import context_graph_of
from pruned_transducer_stateless4.decoding_methods import (
    SearchInputs,
    add_search_arguments,
    get_method,
    methods,
    result_key,
)
from pruned_transducer_stateless4.model_config import MODEL_OPTION_NAMES, add_model_arguments
from pruned_transducer_stateless4.model_loading import inference_params, load_model
from pruned_transducer_stateless4.result_files import (
    add_test_sets_argument,
    part_name,
    write_decode_record,
    write_decode_results,
)
from pruned_transducer_stateless4.result_files import offline_result_suffix as result_suffix
from pruned_transducer_stateless4.timestamps import batch_word_times
from pruned_transducer_stateless4.token_table import load_bpe_model
from shared.checkpoint import add_checkpoint_arguments, explicit_options
from shared.fsa_search import (
    DecodingGraph,
    load_decoding_graph,
    read_word_table,
    trivial_graph,
)
from shared.utils import (
    AttributeDict,
    HelpFormatter,
    RecipeError,
    add_device_argument,
    get_device,
    run_main,
    setup_logging,
    str2bool,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--exp-dir", type=Path, default=Path("exp/pruned_transducer_stateless4"),
                        help="Directory with the checkpoints; results go to "
                        "EXP_DIR/<decoding-method>/.")
    parser.add_argument("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
                        help="Sentencepiece model the checkpoint was trained with.")
    parser.add_argument("--lang-dir", type=Path, default=Path("data/lang_bpe_500"),
                        help="Directory with LG.fst and words.txt (prepare.sh stage 5); used by "
                        "the *_LG methods.")
    add_search_arguments(parser, methods())
    parser.add_argument("--simulate-streaming", type=str2bool, default=False,
                        help="Encode with chunk-wise attention masks, as the streaming model "
                        "sees the audio (needs a model trained with --causal-convolution true).")
    parser.add_argument("--decode-chunk-size", type=int, default=16,
                        help="--simulate-streaming: chunk size in frames after subsampling.")
    parser.add_argument("--left-context", type=int, default=64,
                        help="--simulate-streaming: left context in frames after subsampling.")
    add_test_sets_argument(parser)
    parser.add_argument("--num-threads", "--threads", dest="num_threads", type=int, default=1,
                        help="Torch threads on CPU; 0 keeps torch's default. The searches run "
                        "many small tensor operations, which extra threads slow down (by 10x "
                        "and more when the cores are shared), hence 1.")
    add_device_argument(parser)
    add_checkpoint_arguments(parser)
    add_model_arguments(parser)
    LibriSpeechAsrDataModule.add_arguments(parser)
    return parser


def get_params() -> AttributeDict:
    """Fixed settings, as in train.py; the checkpoint's values win."""
    return inference_params()


# ---------------------------------------------------------------- decoding --
@torch.no_grad()
def decode_one_batch(
    params: AttributeDict,
    model: torch.nn.Module,
    sp: spm.SentencePieceProcessor,
    batch: dict[str, Any],
    decoding_graph: DecodingGraph | None,
    word_table: dict[int, str] | None,
    generator: torch.Generator,
    word_times: list[list[float]] | None = None,
) -> list[str]:
    """Hypothesis texts of one batch, in the order of its supervisions; with
    word_times, the start second of each hypothesis word is appended to it
    per utterance (timestamps.batch_word_times)."""
    device = next(model.parameters()).device
    features, feature_lens = batch_features(batch, device)
    chunk_size = params.decode_chunk_size if params.simulate_streaming else -1
    encoder_out, encoder_out_lens = encode(model.encoder, features, feature_lens,
                                           chunk_size=chunk_size, left_context=params.left_context)

    method = get_method(params.decoding_method)
    hyps = method.offline(model, encoder_out, encoder_out_lens,
                          SearchInputs(params, decoding_graph, generator,
                                       params.get("context_graph")))
    if method.gives_words:
        texts = [" ".join(word_table[w] for w in ids) for ids in hyps]
        tokens = sp.encode(texts)
    else:
        tokens = hyps
    if word_times is not None:  # not part of the decoding time (speed-*.json)
        started = time.time()
        word_times.extend(batch_word_times(model, sp, encoder_out, encoder_out_lens, tokens))
        params.alignment_seconds = params.get("alignment_seconds", 0.0) + time.time() - started
    return texts if method.gives_words else sp.decode(tokens)


def decode_dataset(
    params: AttributeDict, model: torch.nn.Module, sp: spm.SentencePieceProcessor,
    dataloader: torch.utils.data.DataLoader, part: str,
    decoding_graph: DecodingGraph | None, word_table: dict[int, str] | None,
) -> tuple[list[tuple[str, str, str]], float, float]:
    """Returns ([(cut_id, ref, hyp)], audio seconds, decoding seconds)."""
    results = []
    audio_seconds = 0.0
    start = time.time()
    generator = torch.Generator().manual_seed(0)
    # Word start times for the recogs file (write_decode_results), by cut id.
    params.word_times = {}
    params.alignment_seconds = 0.0
    for batch in tqdm(dataloader, desc=f"{part} {params.decoding_method}", unit="batch",
                      disable=None):
        times: list[list[float]] = []
        hyps = decode_one_batch(params, model, sp, batch, decoding_graph, word_table, generator,
                                times)
        cuts = batch["supervisions"]["cut"]
        for cut, ref, hyp, word_times in zip(cuts, batch_texts(batch), hyps, times):
            results.append((cut.id, ref, hyp))
            params.word_times[cut.id] = word_times
            audio_seconds += cut.duration
    return results, audio_seconds, time.time() - start - params.alignment_seconds


# -------------------------------------------------------------------- main --
def main(argv: list[str] | None = None) -> dict[str, float]:
    """Decodes every test set; returns {part: WER (a fraction)}."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_parser().parse_args(argv)
    params = get_params()
    params.update(vars(args))
    params.res_dir = params.exp_dir / params.decoding_method
    params.res_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(params.res_dir / f"log-decode-{result_suffix(params)}-"
                  f"{time.strftime('%Y-%m-%d-%H-%M-%S')}")
    logging.info(f"decoding with {params.decoding_method}: {result_key(params)}, "
                 f"{result_suffix(params)}")
    device = get_device(requested=params.device)
    logging.info(f"decoding on {device}")
    if device.type == "cpu" and params.num_threads > 0:
        torch.set_num_threads(params.num_threads)

    sp = load_bpe_model(params.bpe_model)
    params.blank_id = sp.piece_to_id("<blk>")
    params.vocab_size = sp.get_piece_size()
    params.context_graph = context_graph_of(params, sp)

    decoding_graph, word_table = None, None
    graph = get_method(params.decoding_method).graph
    if graph == "LG":
        lg_path, words_path = params.lang_dir / "LG.fst", params.lang_dir / "words.txt"
        for path in (lg_path, words_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found ({params.decoding_method} needs the "
                                        "LG graph); run ./prepare.sh --stage 5 --stop-stage 5")
        try:
            decoding_graph = load_decoding_graph(lg_path, device)
        except ValueError as error:
            raise RecipeError(f"cannot use {lg_path}: {error}") from error
        word_table = read_word_table(words_path)
        logging.info(f"LG graph {lg_path}: {decoding_graph}")
    elif graph == "trivial":
        decoding_graph = trivial_graph(params.vocab_size, device)

    model = load_model(params, explicit_options(argv), device)
    if params.simulate_streaming and not params.causal_convolution:
        raise RecipeError("--simulate-streaming needs a model trained with "
                          "--causal-convolution true")
    logging.info(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
                 + ", ".join(f"{name}={params[name]}" for name in MODEL_OPTION_NAMES
                             if name in params))

    datamodule = LibriSpeechAsrDataModule(args)
    wers = {}
    for test_set in params.test_sets:
        part = part_name(test_set)
        dataloader = datamodule.test_dataloaders(datamodule.cuts_by_name_or_path(test_set))
        results, audio_seconds, seconds = decode_dataset(
            params, model, sp, dataloader, part, decoding_graph, word_table)
        wer = write_decode_results(params, part, results)
        wers[part] = wer
        speed = {"utterances": len(results), "audio_seconds": audio_seconds,
                 "decoding_seconds": seconds, "rtf": seconds / max(audio_seconds, 1e-9),
                 "utterances_per_second": len(results) / max(seconds, 1e-9),
                 "num_threads": torch.get_num_threads()}
        key, suffix = result_key(params), result_suffix(params)
        speed_path = params.res_dir / f"speed-{part}-{key}-{suffix}.json"
        speed_path.write_text(json.dumps(speed, indent=2) + "\n")
        write_decode_record(params, vars(args), argv, part, results, speed)
        logging.info(
            f"{part}: {params.decoding_method} WER {wer * 100:.2f}% on {len(results)} "
            f"utterances; {seconds:.1f} s for {audio_seconds:.1f} s of audio "
            f"({len(results) / max(seconds, 1e-9):.2f} utterances/s, "
            f"RTF {seconds / max(audio_seconds, 1e-9):.4f})"
        )
    summary = "  ".join(f"{part} {wer * 100:.2f}" for part, wer in wers.items())
    logging.info(f"WER (%) {params.decoding_method} {result_key(params)} "
                 f"{result_suffix(params)}: {summary}")
    logging.info(f"results in {params.res_dir}")
    return wers


if __name__ == "__main__":
    torch.set_num_interop_threads(1)
    run_main(main)
