"""Tests of context_graph.py (hotwords): the automaton's scores against a
brute-force scan, and contextual biasing in modified_beam_search."""

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pruned_transducer_stateless4.beam_search import modified_beam_search
from pruned_transducer_stateless4.context_graph import ContextGraph
from tests.helpers import (
    HOTWORD_SCORE,
    TinyDecoder,
    TinyJoiner,
    check_hotword_effect,
)


@pytest.fixture(autouse=True)
def _threads_restored():
    """pretrained.main sets torch's thread count (--num-threads 1): give the
    other tests back theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def reference_total(phrases: list[list[int]], tokens: list[int], score: float) -> float:
    """The bonus a hypothesis keeps: scanning left to right, at the first
    position where a phrase ends (starting after the last completed one), the
    longest such phrase earns len * score and the scan restarts after it;
    an unfinished match earns nothing."""
    total, start = 0.0, 0
    for i in range(len(tokens)):
        ending = [p for p in phrases
                  if len(p) <= i + 1 - start and tokens[i + 1 - len(p) : i + 1] == p]
        if ending:
            total += score * max(map(len, ending))
            start = i + 1
    return total


def walk(graph: ContextGraph, tokens: list[int]) -> tuple[float, list[float]]:
    """(total after finalize, running score after each token)."""
    state, total, running = None, 0.0, []
    for token in tokens:
        delta, state = graph.forward_one_step(state, token)
        total += delta
        running.append(total)
    return total + graph.finalize(state), running


def test_context_graph_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(300):
        phrases = [list(rng.integers(1, 5, int(rng.integers(1, 4))))
                   for _phrase in range(int(rng.integers(1, 5)))]
        phrases = [[int(t) for t in p] for p in phrases]
        tokens = [int(t) for t in rng.integers(1, 5, int(rng.integers(0, 12)))]
        graph = ContextGraph(phrases, 1.5)
        total, running = walk(graph, tokens)
        assert total == pytest.approx(reference_total(phrases, tokens, 1.5)), (phrases, tokens)
        # While matching, the score never exceeds what full matches would give.
        assert all(r <= 1.5 * len(tokens) + 1e-9 for r in running)


def test_bonus_row_equals_forward_one_step():
    graph = ContextGraph([[1, 2, 3], [2, 4], [3]], 2.0)
    states = [None]
    for tokens in itertools.product([1, 2, 4], repeat=2):
        state = None
        for token in tokens:
            state = graph.forward_one_step(state, token)[1]
        states.append(state)
    for state in states:
        default, exceptions = graph.bonus_row(state, 6, blank_id=0)
        for token in range(1, 6):
            expected = graph.forward_one_step(state, token)[0]
            assert exceptions.get(token, default) == pytest.approx(expected)
        assert exceptions[0] == 0.0


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.decoder = TinyDecoder()
    model.joiner = TinyJoiner()
    with torch.no_grad():
        model.joiner.output_linear.bias[0] += 1.0  # blank on about half of the frames
    return model.eval()


def test_biasing_in_modified_beam_search():
    """A phrase the unbiased search does not output comes out with a bonus;
    a bonus of 0 or phrases over tokens never proposed change nothing."""
    model = tiny_model()
    encoder_out = torch.randn(6, 30, 16)
    lens = torch.full((6,), 30)
    plain = modified_beam_search(model, encoder_out, lens, beam=4)
    assert sum(map(len, plain)) >= 6 * 5, plain

    def count(results, phrase):
        """How many results contain the phrase."""
        return sum(any(r[i : i + len(phrase)] == phrase for i in range(len(r)))
                   for r in results)

    # The phrase: a two-token sequence none of the unbiased results holds.
    phrase = next([a, b] for a in range(1, 20) for b in range(1, 20)
                  if a != b and count(plain, [a, b]) == 0)
    biased = modified_beam_search(model, encoder_out, lens, beam=4,
                                  context_graph=ContextGraph([phrase], 1.0))
    print(f"phrase {phrase} in {count(biased, phrase)} of 6 biased results")
    assert count(biased, phrase) >= 3

    zero = modified_beam_search(model, encoder_out, lens, beam=4,
                                context_graph=ContextGraph([phrase], 0.0))
    assert zero == plain


# Hotwords on real speech: the trained demo model (tests/data/demo_model) on
@pytest.mark.slow
def test_hotwords_raise_recognition_of_rare_words(rare_word_wavs, capsys):
    """pretrained.py --method modified_beam_search with and without
    --context-file, simulated streaming as the model is deployed: the listed
    words are recognised more often with the context file (measured: 0 -> 11
    of 22), and the sentences without them are recognised no worse."""
    from tests.helpers import PROJECT_DIR, demo_model_argv, demo_model_options, import_script

    pretrained = PROJECT_DIR / "pruned_transducer_stateless4/pretrained.py"
    options = demo_model_options()
    argv = [*demo_model_argv(), "--method", "modified_beam_search", "--beam-size", "4",
            "--simulate-streaming", "1", "--decode-chunk-size",
            str(options["decode_chunk_size"]), "--left-context", str(options["left_context"]),
            *map(str, rare_word_wavs)]

    def decode(*extra: str) -> dict[Path, str]:
        capsys.readouterr()
        handlers = logging.root.handlers[:]
        try:
            assert import_script(pretrained).main([*extra, *argv]) == 0
        finally:  # main's logging.basicConfig(force=True) points at capsys's stream
            logging.root.handlers = handlers
        lines = [line for line in capsys.readouterr().out.splitlines() if line]
        texts = dict(line.split(": ", 1) for line in lines)  # "FILE: TEXT", TEXT may be ""
        return {path: texts[str(path)] for path in rare_word_wavs}

    context_file = next(iter(rare_word_wavs)).parent / "hotwords.txt"
    plain = decode()
    biased = decode("--context-file", str(context_file), "--context-score", str(HOTWORD_SCORE))
    check_hotword_effect(rare_word_wavs, plain, biased, min_gain=len(rare_word_wavs) // 4)


@pytest.mark.slow
def test_streaming_hotwords_raise_recognition_of_rare_words(rare_word_wavs):
    """The same through streaming_decode.py's decoding loop (real streaming,
    all utterances as one batch of streams; the server's search), with the
    context graph that streaming_decode.py builds from --context-file
    (measured: 0 -> 12 of 22)."""
    import sentencepiece as spm

    from pruned_transducer_stateless4.audio_input import read_audio
    from pruned_transducer_stateless4.context_graph import context_graph_of
    from pruned_transducer_stateless4.streaming_engine import (
        StreamingSetup,
        decode_dataset,
        make_search_config,
    )
    from shared.utils import AttributeDict
    from tests.helpers import DEMO_MODEL_DIR, demo_model_options, load_demo_model

    model = load_demo_model()
    sp = spm.SentencePieceProcessor(model_file=str(DEMO_MODEL_DIR / "bpe.model"))
    options = demo_model_options()
    context_file = next(iter(rare_word_wavs)).parent / "hotwords.txt"

    class WavCut:
        def __init__(self, path: Path) -> None:
            self.id, self.path, self.supervisions = str(path), path, []

    def decode(context_file: Path | None) -> dict[Path, str]:
        params = AttributeDict(decoding_method="modified_beam_search", max_sym_per_frame=1,
                               beam_size=4, beam=20.0, max_states=64, max_contexts=8,
                               context_file=context_file, context_score=HOTWORD_SCORE)
        params.context_graph = context_graph_of(params, sp)
        setup = StreamingSetup(model, options["decode_chunk_size"], options["left_context"],
                               make_search_config(params))
        with torch.no_grad():
            results, _ = decode_dataset([WavCut(p) for p in rare_word_wavs], setup,
                                        num_decode_streams=len(rare_word_wavs),
                                        simulate_realtime=False,
                                        load_audio=lambda cut: read_audio(cut.path)[0])
        return {Path(r.cut_id): sp.decode(r.tokens) for r in results}

    torch.set_num_threads(1)  # the machine's other sessions; restored by _threads_restored
    check_hotword_effect(rare_word_wavs, decode(None), decode(context_file),
                         min_gain=len(rare_word_wavs) // 4)
