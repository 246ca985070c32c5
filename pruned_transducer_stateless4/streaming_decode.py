#!/usr/bin/env python3
"""Real streaming decoding: raw audio in, chunk by chunk, many streams at once.

Usage (from the project root, after training):

  ./pruned_transducer_stateless4/streaming_decode.py \\
    --epoch 30 --avg 10 --use-averaged-model true \\
    --exp-dir exp/pruned_transducer_stateless4 --bpe-model data/lang_bpe_500/bpe.model \\
    --decode-chunk-size 16 --left-context 64 --num-decode-streams 100 \\
    --decoding-method greedy_search            # or another method --help lists

Every utterance of --test-sets is read as AUDIO (cut.load_audio()), not as
precomputed features, and becomes a `DecodeStream` (decode_stream.py) with an
online fbank front end.  Up to --num-decode-streams streams are active; each
step runs the encoder (`Conformer.streaming_forward`) and the search
(streaming_beam_search.py) on one chunk of every active stream that has a
chunk ready, as one batch; a finished stream's slot takes the next utterance.

Simulated real time.  Audio is delivered as if from live sources: a stream
that takes a slot at time S receives its audio in pieces of --audio-piece-ms,
the piece ending at sample k arriving at S + k / 16000 (with
--simulate-realtime false, all audio arrives at S).  A simulated clock runs the
show: it advances by the measured wall time of every step (feeding audio,
features, encoder, search) and, when no stream has a chunk ready, jumps to
the next arrival of audio (a real server would wait for it).

Reported (logged, and written to latency-<part>-<key>-<suffix>.{txt,json}, and with the
WER and arguments to record-<part>-<key>-<suffix>.json, shared/run_record.py's record
that make_results.py reads):

* RTF = processing time / audio duration, where processing time is the sum
  of the measured step times (idle waiting and reading audio files excluded).
* Token latency, for each token of each final result: E - A, where E is the
  clock time at which the partial result of the token's chunk was available
  (end of the step that processed the chunk), and A the arrival time of the
  audio that completed that chunk, i.e. of the piece that made its last
  feature frame computable (for the last chunk: the end of the audio).  The
  token's chunk is the one after which every partial result (the best
  hypothesis after each chunk) begins with the final result's tokens up to
  this one; for greedy search that is the chunk that emitted it.  Mean and
  95th percentile over all tokens.
* Frame latency: the same E minus the arrival of the last audio that the
  token's own encoder frame depends on; it adds the wait for the rest of the
  chunk (up to the chunk duration), the part of the latency that the chunk
  size sets.
* Final-result delay: clock time when the utterance's final result was
  available minus the arrival time of the end of its audio.

Tail padding.  By default the last chunk of an utterance is padded with the
log floor and only its real frames count, which gives exactly the frames of
simulated streaming (decode.py --simulate-streaming true).  A deployed client
instead appends silence before ending the stream, and sherpa-onnx decodes
only full chunks, so its last frames see silence as their future context.
--tail-padding-seconds S appends S seconds of zeros to every utterance (they
arrive with the end of the audio and do not count in its duration); -1
appends what sherpa_onnx_decode.py appends by default, (4 * chunk + 8) * 10
ms, so that the two decode the same samples.  The result files then carry
-tail-padding-S in their suffix.
"""

import argparse
import logging
import sys

from pruned_transducer_stateless4.asr_datamodule import LibriSpeechAsrDataModule
from pruned_transducer_stateless4.decoding_methods import STREAMING, result_key
from pruned_transducer_stateless4.model_config import add_model_arguments
from pruned_transducer_stateless4.result_files import (
    add_test_sets_argument,
    part_name,
    tail_padding_seconds,
    write_streaming_record,
    write_streaming_results,
)
from pruned_transducer_stateless4.result_files import streaming_result_suffix as result_suffix
from pruned_transducer_stateless4.streaming_engine import (
    add_checkpoint_arguments,
    add_streaming_arguments,
    decode_dataset,
    format_summary,
    load_tokenizer_and_model,
    summarize,
)
from pruned_transducer_stateless4.timestamps import word_start_times
from shared.checkpoint import explicit_options
from shared.features import SAMPLE_RATE
from shared.utils import AttributeDict, HelpFormatter, run_main, setup_logging, str2bool


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    add_checkpoint_arguments(parser)
    add_streaming_arguments(parser)
    parser.add_argument("--num-decode-streams", type=int, default=100,
                        help="Streams decoded in parallel (one batch per chunk step).")
    add_test_sets_argument(parser)
    parser.add_argument("--simulate-realtime", type=str2bool, default=True,
                        help="Deliver each stream's audio at real-time pace on the simulated "
                        "clock; false delivers all of it when the stream starts.")
    parser.add_argument("--audio-piece-ms", type=float, default=100.0,
                        help="Audio arrives in pieces of this many milliseconds.")
    parser.add_argument("--tail-padding-seconds", type=float, default=0.0,
                        help="Seconds of silence appended to every utterance before the "
                        "end of its stream; -1: sherpa_onnx_decode.py's default, "
                        "(4 * chunk + 8) * 10 ms (see the module docstring).")
    add_model_arguments(parser)
    LibriSpeechAsrDataModule.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    params = AttributeDict(vars(args))
    params.explicit_options = explicit_options(sys.argv[1:] if argv is None else argv)
    res_dir = params.exp_dir / "streaming" / params.decoding_method
    suffix = result_suffix(params)
    setup_logging(res_dir / f"log-decode-{suffix}")
    sp, setup = load_tokenizer_and_model(params)
    data = LibriSpeechAsrDataModule(args)
    key = result_key(params, STREAMING)
    for test_set in params.test_sets:
        cuts = data.cuts_by_name_or_path(test_set)
        name = part_name(test_set)
        results, busy = decode_dataset(
            cuts, setup, params.num_decode_streams, params.simulate_realtime,
            max(1, round(params.audio_piece_ms * SAMPLE_RATE / 1000)),
            tail_padding_samples=round(tail_padding_seconds(params) * SAMPLE_RATE))
        summary = summarize(results, busy)
        texts = [(r.cut_id, r.ref, sp.decode(r.tokens)) for r in results]
        word_times = {r.cut_id: [start for _, start in word_start_times(
            [sp.id_to_piece(t) for t in r.tokens], r.token_frames)] for r in results}
        wer = write_streaming_results(res_dir, name, key, suffix, texts, summary, word_times)
        write_streaming_record(res_dir, params, vars(args), argv, name, texts, summary)
        logging.info(f"{name} {key}: WER {wer * 100:.2f}% ({len(results)} utterances)")
        logging.info(f"{name} {key}: {format_summary(summary)}")
    logging.info(f"results in {res_dir}")


if __name__ == "__main__":
    run_main(main)
