"""Tests of context_graph.py (hotwords): the automaton's scores against a
brute-force scan, and contextual biasing in modified_beam_search."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pruned_transducer_stateless4.beam_search import modified_beam_search
from pruned_transducer_stateless4.context_graph import ContextGraph
from tests.test_timestamps import TinyDecoder, TinyJoiner


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
# sentences of the generated corpus's voices, each with names or words it
# never saw in training (none is in the run's transcripts) and gets wrong
# without biasing.  The context file lists RARE_WORDS; CONTROL_SENTENCES hold
# none of them.
RARE_WORDS = ["gandalf", "zanzibar", "kilimanjaro", "pinocchio", "hemingway", "madagascar",
              "timbuktu", "amsterdam", "eleanor", "robert", "neptune"]
RARE_SENTENCES = [
    "we sailed to zanzibar last summer",
    "my friend gandalf lives in amsterdam",
    "they climbed kilimanjaro in the winter",
    "the story of pinocchio is very old",
    "she read a book by hemingway",
    "he flew from madagascar to timbuktu",
    "eleanor and robert went to the market",
    "neptune is far from the sun",
]
CONTROL_SENTENCES = [
    "the weather was cold and the children stayed at home",
    "he opened the door and walked into the garden",
    "she wrote a long letter to her mother",
]
HOTWORD_VOICES = ["slt", "rms"]  # flite voices of the training data


@pytest.mark.slow
def test_hotwords_raise_recognition_of_rare_words(tmp_path, capsys):
    """pretrained.py --method modified_beam_search with and without
    --context-file (icefall's default --context-score 2.0), simulated
    streaming as the model is deployed: the listed words are recognised more
    often with the context file, and the sentences without them are
    recognised no worse."""
    from pruned_transducer_stateless4 import pretrained
    from shared.metrics import word_error_rate
    from tests.helpers import demo_model_argv, demo_model_options, speak

    sentences = RARE_SENTENCES + CONTROL_SENTENCES
    paths = {}
    for voice in HOTWORD_VOICES:
        for i, sentence in enumerate(sentences):
            paths[tmp_path / f"{voice}-{i}.wav"] = sentence
            sf.write(str(tmp_path / f"{voice}-{i}.wav"), speak(sentence, voice), 16000)
    context_file = tmp_path / "hotwords.txt"
    context_file.write_text("".join(f"{word}\n" for word in RARE_WORDS))
    options = demo_model_options()
    argv = [*demo_model_argv(), "--method", "modified_beam_search", "--beam-size", "4",
            "--simulate-streaming", "1", "--decode-chunk-size",
            str(options["decode_chunk_size"]), "--left-context", str(options["left_context"]),
            *map(str, paths)]

    def decode(*extra: str) -> dict[Path, str]:
        capsys.readouterr()
        assert pretrained.main([*extra, *argv]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        texts = dict(line.split(": ", 1) for line in lines)
        return {path: texts[str(path)].lower() for path in paths}

    plain = decode()
    biased = decode("--context-file", str(context_file), "--context-score", "2.0")

    def recognised(texts: dict[Path, str]) -> int:
        """Occurrences of listed words in the sentences that the transcripts hold."""
        return sum(min(paths[p].split().count(w), texts[p].split().count(w))
                   for p in paths for w in RARE_WORDS)

    occurrences = sum(paths[p].split().count(w) for p in paths for w in RARE_WORDS)
    controls = [p for p in paths if paths[p] in CONTROL_SENTENCES]
    refs = [paths[p] for p in controls]
    plain_wer = word_error_rate(refs, [plain[p] for p in controls])
    biased_wer = word_error_rate(refs, [biased[p] for p in controls])
    for path in paths:
        print(f"{path.stem}: {paths[path]!r}\n    plain:  {plain[path]!r}\n"
              f"    biased: {biased[path]!r}")
    print(f"listed words recognised: {recognised(plain)}/{occurrences} without the context "
          f"file, {recognised(biased)}/{occurrences} with it; control WER "
          f"{100 * plain_wer:.1f}% -> {100 * biased_wer:.1f}%")
    # The model does recognise speech (a broken checkpoint fails here) ...
    assert plain_wer < 0.35
    # ... misses most listed words without help, and gets many more with it.
    assert recognised(plain) <= occurrences // 4
    assert recognised(biased) >= recognised(plain) + occurrences // 4
    assert biased_wer <= plain_wer
