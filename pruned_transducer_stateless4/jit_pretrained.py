#!/usr/bin/env python3
"""Transcribe sound files with cpu_jit.pt (export.py --jit 1) alone, streaming.

Usage:

  ./pruned_transducer_stateless4/jit_pretrained.py \\
      --nn-model-filename exp/pruned_transducer_stateless4/cpu_jit.pt \\
      --bpe-model data/lang_bpe_500/bpe.model \\
      --method greedy_search \\
      FILE1.wav FILE2.flac ...

No checkpoint and no model code is needed: the network comes from the
TorchScript file.  Audio is fed to an online kaldi-native-fbank front end in
pieces of --feed-seconds, and the encoder runs chunk by chunk with its cached
state as soon as enough feature frames are ready (4 * chunk + 11 frames per
step, advancing by 4 * chunk); the search consumes each chunk's frames right
away (greedy_search, modified_beam_search, fast_beam_search; beam_search
searches after the last chunk).  At the end of a file the last partial chunk
is padded and only its real frames are used, so, unlike sherpa-onnx (which
runs full windows only), no tail padding audio is needed.

Any sample rate and channel count: channels are averaged and the audio is
resampled to 16 kHz with a windowed-sinc polyphase filter (both said in the
log).  One line per file on stdout, "FILE: TEXT"; a file that cannot be
decoded (missing, empty, corrupt, too short) gets one line on stderr and the
others are still decoded; the exit code is then 1.

The audio helpers here (read_audio, resample) are also used by pretrained.py.
"""

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

from shared.utils import HelpFormatter

SAMPLE_RATE = 16000
# The training front end (shared/features.py: lhotse Fbank, 80 bins, 25/10 ms,
# povey window, dither 0, snip_edges False, high_freq -400, low_freq 20,
# samples in [-1, 1]); kaldi-native-fbank with these settings agrees within
# 3e-4 (tests/test_export.py checks it).
NUM_MEL_BINS = 80
LOW_FREQ = 20.0
HIGH_FREQ = -400.0
# Feature value of the padding frames of the last chunk (log(1e-10)).
LOG_EPS = -23.025850929940457
# The encoder needs 7 feature frames for its first output frame; with
# snip_edges False a file of n samples has (n + 80) // 160 frames.
MIN_SAMPLES = 7 * 160 - 80


class AudioError(Exception):
    """A sound file that cannot be transcribed; the message is one line."""


# ---------------------------------------------------------------- audio ----
def _kaiser(x: np.ndarray, beta: float) -> np.ndarray:
    """Kaiser window at positions x in [-1, 1]."""
    return np.i0(beta * np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))) / np.i0(beta)


def resample(
    samples: np.ndarray, orig_rate: int, new_rate: int, zero_crossings: int = 24,
    rolloff: float = 0.99, beta: float = 8.6,
) -> np.ndarray:
    """Band-limited resampling with a Kaiser-windowed sinc, polyphase.

    With up/down = new_rate/orig_rate in lowest terms, output sample m sits at
    input position m * down / up, whose fractional part is one of `up`
    phases; each phase has its own precomputed filter of 2K taps.  The
    low-pass cut-off is rolloff * min(orig_rate, new_rate) / 2 (anti-aliasing
    when downsampling, anti-imaging when upsampling).

    Args:
      samples: 1-D float array.
      zero_crossings: filter half-width in zero crossings of the sinc.
    Returns:
      ceil(len(samples) * new_rate / orig_rate) float32 samples.
    """
    if orig_rate == new_rate:
        return samples.astype(np.float32, copy=False)
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    # Cut-off in cycles per input sample.
    cutoff = rolloff * 0.5 * min(orig_rate, new_rate) / orig_rate
    half_width = zero_crossings / (2.0 * cutoff)  # in input samples
    num_taps = int(math.ceil(half_width))
    offsets = np.arange(-num_taps + 1, num_taps + 1)  # (2K,)
    phases = np.arange(up) / up  # fractional input positions
    t = offsets[None, :] - phases[:, None]  # (up, 2K) distances to the taps
    filters = 2.0 * cutoff * np.sinc(2.0 * cutoff * t) * _kaiser(t / half_width, beta)

    num_out = -(-len(samples) * up // down)
    padded = np.concatenate([np.zeros(num_taps), samples.astype(np.float64),
                             np.zeros(num_taps + 1)])
    out = np.empty(num_out, dtype=np.float32)
    block = 8192
    for start in range(0, num_out, block):
        m = np.arange(start, min(start + block, num_out))
        base = (m * down) // up
        phase = (m * down) % up
        taps = padded[(base + num_taps)[:, None] + offsets[None, :]]
        out[start : start + len(m)] = np.einsum("mk,mk->m", taps, filters[phase])
    return out


def read_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, list[str]]:
    """Reads a sound file as mono float32 in [-1, 1] at `sample_rate`.

    Returns:
      (samples, notes): notes say what was done to the audio (mixing down,
      resampling), for the log.
    Raises:
      AudioError: missing, empty, undecodable, non-finite or too short.
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError("no such file")
    if path.is_dir():
        raise AudioError("is a directory")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AudioError(f"cannot decode audio ({message})") from error
    if data.shape[0] == 0:
        raise AudioError("no audio samples")
    if not np.isfinite(data).all():
        raise AudioError("non-finite samples")
    notes = []
    if data.shape[1] > 1:
        notes.append(f"mixed {data.shape[1]} channels down to mono")
    samples = data.mean(axis=1)
    if rate != sample_rate:
        notes.append(f"resampled from {rate} Hz to {sample_rate} Hz")
        samples = resample(samples, rate, sample_rate)
    if len(samples) < MIN_SAMPLES:
        raise AudioError(f"too short ({1000 * len(samples) / sample_rate:.0f} ms; at least "
                         f"{1000 * MIN_SAMPLES / sample_rate:.0f} ms needed)")
    return samples.astype(np.float32, copy=False), notes


def make_online_fbank():
    """kaldi-native-fbank's online fbank with the training settings."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.frame_length_ms = 25.0
    opts.mel_opts.num_bins = NUM_MEL_BINS
    opts.mel_opts.low_freq = LOW_FREQ
    opts.mel_opts.high_freq = HIGH_FREQ
    return knf.OnlineFbank(opts)


# ------------------------------------------------------------- tokens ----
class TokenDecoder:
    """Token ids -> text, with sentencepiece or a tokens.txt table."""

    def __init__(self, bpe_model: Path | None, tokens: Path | None) -> None:
        self.sp = None
        self.symbols: list[str] = []
        if tokens is not None:
            if not tokens.is_file():
                raise FileNotFoundError(f"token table {tokens} not found")
            table = {}
            for line in tokens.read_text().splitlines():
                fields = line.split()
                if len(fields) == 2:
                    table[int(fields[1])] = fields[0]
            self.symbols = [table.get(i, "") for i in range(max(table) + 1)]
        else:
            import sentencepiece as spm

            if bpe_model is None or not bpe_model.is_file():
                raise FileNotFoundError(f"BPE model {bpe_model} not found (or pass --tokens)")
            self.sp = spm.SentencePieceProcessor(model_file=str(bpe_model))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() if self.sp is not None else len(self.symbols)

    def pieces(self, token_ids: list[int]) -> list[str]:
        """The BPE piece of each token id."""
        if self.sp is not None:
            return [self.sp.id_to_piece(i) for i in token_ids]
        return [self.symbols[i] for i in token_ids]

    def __call__(self, token_ids: list[int]) -> str:
        if self.sp is not None:
            return self.sp.decode(token_ids)
        return "".join(self.symbols[i] for i in token_ids).replace("\u2581", " ").strip()


# ------------------------------------------------------------ searches ----
class StreamingGreedySearch:
    """Greedy search carried across chunks, one token per frame at most
    (what sherpa-onnx's greedy_search does).

    Args:
      model: cpu_jit.pt's module or a Transducer (decoder and joiner used).
      blank_like: token ids handled like blank when they win (nothing is
        emitted); sherpa-onnx does so with <unk>.
    """

    def __init__(self, model, blank_like: tuple[int, ...] = ()) -> None:
        self.model = model
        self.blank_id = int(model.decoder.blank_id)
        self.blank_like = set(blank_like) | {self.blank_id}
        self.context_size = int(model.decoder.context_size)
        self.hyp = [self.blank_id] * self.context_size
        self.decoder_out = self._decoder_out()

    def _decoder_out(self) -> torch.Tensor:
        context = torch.tensor([self.hyp[-self.context_size :]], dtype=torch.int64)
        return self.model.joiner.decoder_proj(self.model.decoder(context, False))[:, 0]

    def advance(self, encoder_out: torch.Tensor) -> None:
        """encoder_out: (T, encoder_dim) valid frames of one chunk."""
        encoder_proj = self.model.joiner.encoder_proj(encoder_out)
        for t in range(encoder_proj.size(0)):
            logits = self.model.joiner(encoder_proj[t : t + 1], self.decoder_out, False)
            token = int(logits.argmax(dim=-1)[0])
            if token not in self.blank_like:
                self.hyp.append(token)
                self.decoder_out = self._decoder_out()

    def result(self) -> list[int]:
        return self.hyp[self.context_size :]


class StreamingModifiedBeamSearch:
    """beam_search.modified_beam_search_step carried across chunks."""

    def __init__(self, model, beam: int) -> None:
        from pruned_transducer_stateless4.beam_search import Hypothesis, HypothesisList

        self.model = model
        self.beam = beam
        self.context_size = int(model.decoder.context_size)
        blank_id = int(model.decoder.blank_id)
        self.hyps = HypothesisList([Hypothesis([blank_id] * self.context_size, 0.0)])

    def advance(self, encoder_out: torch.Tensor) -> None:
        from pruned_transducer_stateless4.beam_search import modified_beam_search_step

        encoder_proj = self.model.joiner.encoder_proj(encoder_out)
        for t in range(encoder_proj.size(0)):
            self.hyps = modified_beam_search_step(self.model, encoder_proj[t : t + 1],
                                                  [self.hyps], self.beam)[0]

    def result(self) -> list[int]:
        return self.hyps.get_most_probable(length_norm=True).ys[self.context_size :]


class StreamingFastBeamSearch:
    """fsa_search.FastBeamSearchStream (trivial graph) advanced per chunk."""

    def __init__(self, model, vocab_size: int, beam: float, max_states: int,
                 max_contexts: int) -> None:
        from shared.fsa_search import FastBeamSearchConfig, FastBeamSearchStream, trivial_graph

        self.model = model
        self.config = FastBeamSearchConfig(beam, max_states, max_contexts)
        self.stream = FastBeamSearchStream(trivial_graph(vocab_size),
                                           int(model.decoder.context_size),
                                           int(model.decoder.blank_id))

    def advance(self, encoder_out: torch.Tensor) -> None:
        from shared.fsa_search import FastBeamSearchStreams

        FastBeamSearchStreams(self.model, [self.stream], self.config).advance(
            encoder_out.unsqueeze(0))

    def result(self) -> list[int]:
        return self.stream.best_path().tokens


class OfflineBeamSearch:
    """beam_search.beam_search over all frames once the last chunk is in."""

    def __init__(self, model, beam: int) -> None:
        self.model = model
        self.beam = beam
        self.frames: list[torch.Tensor] = []

    def advance(self, encoder_out: torch.Tensor) -> None:
        self.frames.append(encoder_out)

    def result(self) -> list[int]:
        from pruned_transducer_stateless4.beam_search import beam_search

        return beam_search(self.model, torch.cat(self.frames).unsqueeze(0), self.beam)


def make_search(model, args: argparse.Namespace, vocab_size: int):
    if args.method == "greedy_search":
        return StreamingGreedySearch(model)
    if args.method == "modified_beam_search":
        return StreamingModifiedBeamSearch(model, args.beam_size)
    if args.method == "fast_beam_search":
        return StreamingFastBeamSearch(model, vocab_size, args.beam, args.max_states,
                                       args.max_contexts)
    return OfflineBeamSearch(model, args.beam_size)


# ------------------------------------------------------------ streaming ----
@torch.no_grad()
def stream_encoder(
    model, samples: np.ndarray, chunk_size: int, left_context: int, search,
    feed_seconds: float = 0.1, full_windows_only: bool = False,
) -> int:
    """Runs the streaming encoder over `samples` as they arrive and hands each
    chunk's valid encoder frames to `search.advance`.

    Args:
      model: cpu_jit.pt's module (or a Transducer: only .encoder is used).
      samples: 16 kHz mono float32.
      chunk_size, left_context: in frames after subsampling.
      search: an object with advance(encoder_out (T, encoder_dim)).
      feed_seconds: size of the audio pieces given to the front end.
      full_windows_only: stop after the last full window, as sherpa-onnx does
        (for comparisons); by default the last partial chunk is padded.
    Returns:
      the number of encoder steps run.
    """
    encoder = model.encoder
    pad_length = int(encoder.pad_length)
    window = chunk_size * 4 + pad_length
    shift = chunk_size * 4
    fbank = make_online_fbank()
    states = [s.unsqueeze(2) for s in encoder.get_init_state(left_context, torch.device("cpu"))]
    processed = torch.zeros(1, dtype=torch.int64)
    start = 0  # first feature frame of the next window
    steps = 0

    def run(num_real: int) -> None:
        nonlocal states, start, steps
        num_real = min(num_real, window)
        end = min(start + num_real, fbank.num_frames_ready)
        frames = [fbank.get_frame(i) for i in range(start, end)]
        # Frames past the audio hold LOG_EPS (the final padding).
        x = torch.full((1, window, NUM_MEL_BINS), LOG_EPS)
        if frames:
            x[0, : end - start] = torch.tensor(np.array(frames, dtype=np.float32))
        x_lens = torch.tensor([num_real], dtype=torch.int64)
        encoder_out, encoder_out_lens, states = encoder.streaming_forward(
            x, x_lens, states, processed, left_context, 0, chunk_size, False)
        search.advance(encoder_out[0, : int(encoder_out_lens[0])])
        processed.add_(encoder_out_lens)
        start += shift
        steps += 1

    # sherpa-onnx runs a window only when a frame follows it.
    extra = 1 if full_windows_only else 0
    piece = max(1, int(feed_seconds * SAMPLE_RATE))
    for offset in range(0, len(samples), piece):
        fbank.accept_waveform(SAMPLE_RATE, samples[offset : offset + piece].tolist())
        while fbank.num_frames_ready >= start + window + extra:
            run(window)
    fbank.input_finished()
    while fbank.num_frames_ready >= start + window + extra:
        run(window)
    if full_windows_only:
        return steps
    # icefall's end of a stream: pad_length LOG_EPS frames, counted as real,
    # and windows until no more than those are left.
    total = fbank.num_frames_ready + pad_length
    while total - start > pad_length:
        run(total - start)
    return steps


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
    parser.add_argument("--method", default="greedy_search",
                        choices=["greedy_search", "beam_search", "modified_beam_search",
                                 "fast_beam_search"],
                        help="Search method.")
    parser.add_argument("--beam-size", type=int, default=4,
                        help="Beam of beam_search and modified_beam_search.")
    parser.add_argument("--beam", type=float, default=20.0,
                        help="Log-probability beam of fast_beam_search.")
    parser.add_argument("--max-contexts", type=int, default=8,
                        help="fast_beam_search: decoder contexts kept per frame.")
    parser.add_argument("--max-states", type=int, default=64,
                        help="fast_beam_search: states kept per frame.")
    parser.add_argument("--decode-chunk-size", type=int, default=0,
                        help="Chunk size in frames after subsampling; 0 = the one stored in "
                        "cpu_jit.pt (export.py --decode-chunk-size).")
    parser.add_argument("--left-context", type=int, default=-1,
                        help="Cached left-context frames; -1 = the one stored in cpu_jit.pt.")
    parser.add_argument("--feed-seconds", type=float, default=0.1,
                        help="Audio is given to the front end in pieces of this length.")
    parser.add_argument("--num-threads", type=int, default=1,
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
                 f"{args.method}")

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
