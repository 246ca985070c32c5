"""Decoding with sherpa-onnx's OnlineRecognizer on the ONNX export.

build_recognizer loads the export of onnx_contract.py's file names;
decode_waves decodes many waves as streams, batched as the PyTorch streaming
engine batches them (streaming_engine.py); sherpa_word_times turns
sherpa-onnx's token times into word start times.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pruned_transducer_stateless4.decode_stream import with_tail_padding
from pruned_transducer_stateless4.decoding_methods import get_method, methods
from pruned_transducer_stateless4.onnx_contract import check_export, onnx_export_paths
from pruned_transducer_stateless4.timestamps import FRAME_SHIFT_SECONDS, word_start_times
from shared.features import SAMPLE_RATE
from shared.utils import RecipeError

WORD_START = "\u2581"  # sentencepiece's word-start mark


def build_recognizer(exp_dir: Path, suffix: str = "epoch-30-avg-9", int8: bool = False,
                     num_threads: int = 1, decoding_method: str = "greedy_search",
                     max_active_paths: int = 4, hotwords_file: Path | None = None,
                     hotwords_score: float = 1.5):
    """A sherpa_onnx.OnlineRecognizer on the ONNX export in exp_dir.

    The front end is sherpa-onnx's default (kaldi-native-fbank, 80 bins,
    16 kHz), which computes the training features (export.py's docstring).
    Hotwords (of a method that takes them) are encoded with exp_dir/bpe.vocab.
    """
    import sherpa_onnx

    paths = onnx_export_paths(exp_dir, suffix, int8)
    check_export(paths, suffix)
    hotwords = {}
    if hotwords_file is not None:
        if not get_method(decoding_method).uses_context:
            takers = [m for m in methods(sherpa_onnx=True) if get_method(m).uses_context]
            raise RecipeError(f"--hotwords-file needs --decoding-method {' or '.join(takers)}")
        bpe_vocab = Path(exp_dir) / "bpe.vocab"
        for path in (hotwords_file, bpe_vocab):
            if not Path(path).is_file():
                raise RecipeError(f"{path} not found" + (
                    " (export.py --onnx 1 copies it next to tokens.txt)"
                    if path == bpe_vocab else ""))
        hotwords = dict(hotwords_file=str(hotwords_file), hotwords_score=hotwords_score,
                        modeling_unit="bpe", bpe_vocab=str(bpe_vocab))
    return sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(paths["tokens"]), encoder=str(paths["encoder"]),
        decoder=str(paths["decoder"]), joiner=str(paths["joiner"]), num_threads=num_threads,
        sample_rate=SAMPLE_RATE, feature_dim=80, decoding_method=decoding_method,
        max_active_paths=max_active_paths, **hotwords,
    )


@dataclass
class SherpaResult:
    tokens: list[str]  # token symbols as in tokens.txt (with the word-start mark)
    text: str
    timestamps: list[float] = field(default_factory=list)  # seconds of each token

    @property
    def words(self) -> list[str]:
        return self.text.split()


def decode_waves(
    recognizer,
    waves: Iterable[np.ndarray],
    tail_padding_seconds: float,
    num_streams: int = 100,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[SherpaResult], float]:
    """Decodes every wave as a sherpa-onnx stream, up to num_streams at a time.

    Each wave (S,) float32 mono 16 kHz samples in [-1, 1] is given to its
    stream at once, followed by tail_padding_seconds of zeros (see
    flush_padding_seconds), then input_finished(); every step
    decodes one chunk of each ready stream as one batch, and a finished
    stream's slot takes the next wave.

    Returns:
      (results in the order of `waves`, processing seconds): the time spent
      in sherpa-onnx (front end, encoder, search), not in producing the waves
      (`waves` may be a generator that reads audio files).
    """
    if num_streams < 1:
        raise RecipeError(f"the number of streams must be >= 1, got {num_streams}")
    wave_iter = iter(waves)
    exhausted = False
    active: list[tuple[int, Any]] = []  # (index of the wave, stream)
    results: dict[int, SherpaResult] = {}
    num_waves = 0
    busy = 0.0
    while True:
        while not exhausted and len(active) < num_streams:
            samples = next(wave_iter, None)  # reading audio: not timed
            if samples is None:
                exhausted = True
                break
            started = clock()
            stream = recognizer.create_stream()
            stream.accept_waveform(SAMPLE_RATE, with_tail_padding(samples, tail_padding_seconds))
            stream.input_finished()
            busy += clock() - started
            active.append((num_waves, stream))
            num_waves += 1
        if not active:
            break
        started = clock()
        ready = [stream for _, stream in active if recognizer.is_ready(stream)]
        if ready:
            recognizer.decode_streams(ready)
        remaining = []
        for index, stream in active:
            if recognizer.is_ready(stream):
                remaining.append((index, stream))
            else:  # all its input is in and decoded
                result = recognizer.get_result_all(stream)
                # sherpa-onnx spells the word-start mark as a space.
                tokens = [token.replace(" ", WORD_START) for token in result.tokens]
                results[index] = SherpaResult(tokens, result.text.strip(),
                                              list(result.timestamps))
        busy += clock() - started
        active = remaining
    return [results[i] for i in range(num_waves)], busy


def sherpa_word_times(result: SherpaResult) -> list[float]:
    """Start second of each word of a sherpa-onnx result (its token times)."""
    return [start for _, start in word_start_times(
        result.tokens, [round(t / FRAME_SHIFT_SECONDS) for t in result.timestamps])]
