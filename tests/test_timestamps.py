"""Tests of timestamps.py: word start times from token frames, and the
Viterbi alignment of a hypothesis against a brute-force search over every
alignment."""

import itertools

import numpy as np
import pytest
import torch

from pruned_transducer_stateless4.timestamps import (
    _viterbi_frames,
    _viterbi_frames_one_per_frame,
    align_tokens,
    format_word_times,
    word_start_times,
)
from tests.helpers import TinyDecoder, TinyJoiner


def test_word_start_times():
    pieces = ["\u2581he", "llo", "\u2581", "w", "orld", "\u2581a"]
    frames = [3, 5, 10, 11, 14, 20]
    words = word_start_times(pieces, frames)
    assert words == [("hello", 0.12), ("world", 0.4), ("a", 0.8)]
    assert format_word_times(words) == "hello@0.12 world@0.40 a@0.80"
    # A hypothesis that starts inside a word still has its first word.
    assert word_start_times(["lo", "\u2581x"], [1, 2]) == [("lo", 0.04), ("x", 0.08)]
    assert word_start_times([], []) == []
    with pytest.raises(ValueError):
        word_start_times(["\u2581a"], [])


def brute_force_frames(blank_lp: np.ndarray, token_lp: np.ndarray) -> list[int]:
    """Best alignment by enumerating where each token is emitted: token u on
    frame t_u with t_1 <= ... <= t_U; the path takes blank on every frame
    after its tokens of that frame."""
    num_frames, width = blank_lp.shape
    num_tokens = width - 1
    best, best_frames = -np.inf, None
    for frames in itertools.combinations_with_replacement(range(num_frames), num_tokens):
        score, u = 0.0, 0
        for t in range(num_frames):
            while u < num_tokens and frames[u] == t:
                score += token_lp[t, u]
                u += 1
            score += blank_lp[t, u]
        if score > best:
            best, best_frames = score, list(frames)
    return best_frames


def brute_force_one_per_frame(blank_lp: np.ndarray, token_lp: np.ndarray) -> list[int]:
    """Best alignment with at most one token per frame: the tokens' frames
    are any increasing sequence, every other frame takes blank."""
    num_frames, width = blank_lp.shape
    best, best_frames = -np.inf, None
    for frames in itertools.combinations(range(num_frames), width - 1):
        score, u = 0.0, 0
        for t in range(num_frames):
            if u < width - 1 and frames[u] == t:
                score += token_lp[t, u]
                u += 1
            else:
                score += blank_lp[t, u]
        if score > best:
            best, best_frames = score, list(frames)
    return best_frames


def test_viterbi_one_per_frame_matches_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(60):
        num_frames = int(rng.integers(1, 8))
        num_tokens = int(rng.integers(0, num_frames + 1))
        blank_lp = np.log(rng.uniform(0.05, 1, (num_frames, num_tokens + 1)))
        token_lp = np.log(rng.uniform(0.05, 1, (num_frames, num_tokens + 1)))
        got = _viterbi_frames_one_per_frame(blank_lp, token_lp)
        assert got == brute_force_one_per_frame(blank_lp, token_lp), trial


def test_viterbi_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(40):
        num_frames = int(rng.integers(1, 7))
        num_tokens = int(rng.integers(0, 5))
        blank_lp = np.log(rng.uniform(0.05, 1, (num_frames, num_tokens + 1)))
        token_lp = np.log(rng.uniform(0.05, 1, (num_frames, num_tokens + 1)))
        got = _viterbi_frames(blank_lp, token_lp)
        assert got == brute_force_frames(blank_lp, token_lp), trial


def test_align_tokens_on_a_model():
    """align_tokens on a small random decoder and joiner = the brute-force
    alignment over log-probabilities computed one (t, u) at a time."""
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.decoder = TinyDecoder()
    model.joiner = TinyJoiner()
    for num_frames, tokens in ((6, [3, 7, 7]), (40, [1, 2, 3, 4]), (3, [5, 6, 7, 8]),
                               (5, [2, 4, 6, 8, 9])):
        encoder_out = torch.randn(num_frames, 16)
        got = align_tokens(model, encoder_out, tokens)
        history = [0, 0] + tokens
        width = len(tokens) + 1
        blank_lp = np.zeros((num_frames, width))
        token_lp = np.zeros((num_frames, width))
        with torch.no_grad():
            for t in range(num_frames):
                for u in range(width):
                    context = torch.tensor([history[u : u + 2]])
                    logits = model.joiner(encoder_out[t], model.decoder(context, False)[0, 0])
                    log_probs = logits.log_softmax(-1)
                    blank_lp[t, u] = float(log_probs[0])
                    if u < len(tokens):
                        token_lp[t, u] = float(log_probs[tokens[u]])
        if len(tokens) > num_frames:  # the full lattice
            assert got == brute_force_frames(blank_lp, token_lp)
        elif num_frames <= 8:
            assert got == brute_force_one_per_frame(blank_lp, token_lp)
        else:
            assert got == _viterbi_frames_one_per_frame(blank_lp, token_lp)
        assert got == sorted(got) and all(0 <= f < num_frames for f in got)
    assert align_tokens(model, torch.randn(4, 16), []) == []
