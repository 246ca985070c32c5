"""Word start times from the encoder frames of a transducer's tokens.

One encoder frame is 4 feature frames of 10 ms (the conv2d subsampling), so a
token emitted on encoder frame ``t`` has the time ``t * 0.04`` s, as sherpa-onnx's
``result.timestamps`` gives it.  A word starts with its first BPE piece (the
piece that carries sentencepiece's word-boundary mark "\u2581"), so its start
time is that piece's time.

Where the frames come from:

* real streaming (streaming_decode.py, the server): the frames on which the
  search emitted each token (``DecodeStream.token_frames``), as in sherpa-onnx;
* whole-utterance decoding (decode.py, pretrained.py): the frames of the best
  alignment of the hypothesis under the model (:func:`align_tokens`, a Viterbi
  pass over the transducer lattice), so every search method gets the same
  definition, whatever it keeps about frames itself.
"""

from __future__ import annotations

import numpy as np
import torch

from pruned_transducer_stateless4.model import Transducer

SUBSAMPLING_FACTOR = 4
FEATURE_SHIFT_SECONDS = 0.01
FRAME_SHIFT_SECONDS = SUBSAMPLING_FACTOR * FEATURE_SHIFT_SECONDS  # 0.04 s per encoder frame
WORD_BOUNDARY = "\u2581"


def token_times(frames: list[int], frame_shift: float = FRAME_SHIFT_SECONDS) -> list[float]:
    """Seconds of each token: frame * frame_shift (rounded to 0.1 ms)."""
    return [round(frame * frame_shift, 4) for frame in frames]


def word_start_times(pieces: list[str], frames: list[int],
                     frame_shift: float = FRAME_SHIFT_SECONDS) -> list[tuple[str, float]]:
    """(word, start seconds) for the words the pieces spell.

    Args:
      pieces: BPE pieces of a hypothesis, e.g. ["\u2581he", "llo", "\u2581world"].
      frames: the encoder frame of each piece (same length).
      frame_shift: seconds per encoder frame.
    Returns:
      [("hello", 0.12), ("world", 0.56)]: a word starts at the piece that holds
      the boundary mark (or at the first piece); a lone mark piece starts the
      word that the following pieces spell.
    """
    if len(pieces) != len(frames):
        raise ValueError(f"{len(pieces)} pieces but {len(frames)} frames")
    words: list[list] = []  # [text, start]
    for piece, frame in zip(pieces, frames):
        starts_word = piece.startswith(WORD_BOUNDARY) or not words
        text = piece.replace(WORD_BOUNDARY, "")
        if starts_word and (not words or words[-1][0]):
            words.append([text, frame * frame_shift])
        else:  # continues the word (or fills a word that a lone mark started)
            words[-1][0] += text
    return [(text, round(start, 4)) for text, start in words if text]


def format_word_times(word_times: list[tuple[str, float]]) -> str:
    """'hello@0.12 world@0.56' (what --print-timestamps prints)."""
    return " ".join(f"{word}@{start:.2f}" for word, start in word_times)


@torch.no_grad()
def align_tokens(model: Transducer, encoder_out: torch.Tensor, tokens: list[int]) -> list[int]:
    """The encoder frame of each token in the best alignment of `tokens`.

    The lattice is the one our searches walk by default (greedy_search with
    --max-sym-per-frame 1, modified_beam_search, fast_beam_search, sherpa-onnx):
    every frame emits blank or one token, so at state (t, u) (frame t, u
    tokens emitted) blank leads to (t + 1, u) and token u + 1 to (t + 1, u + 1).
    A hypothesis with more tokens than frames (beam_search, or more symbols
    per frame) is aligned on the transducer's full lattice instead, where a
    token does not consume the frame.  The alignment with the highest sum of
    log-probabilities (log_softmax of the joiner) is kept.

    Args:
      model: the transducer (its decoder context size and blank are used).
      encoder_out: (T, encoder_dim) encoder output of one utterance (no
        padding frames).
      tokens: the token ids (no blank).
    Returns:
      frames (len(tokens),), non-decreasing (increasing on the one-token-per-
      frame lattice), each in [0, T).
    """
    num_frames = encoder_out.size(0)
    if not tokens:
        return []
    if num_frames == 0:
        raise ValueError("cannot align tokens to zero frames")
    blank_id = model.decoder.blank_id
    context_size = model.decoder.context_size
    device = encoder_out.device
    history = [blank_id] * context_size + list(tokens)
    contexts = torch.tensor([history[u : u + context_size] for u in range(len(tokens) + 1)],
                            dtype=torch.int64, device=device)  # (U + 1, context_size)
    decoder_out = model.joiner.decoder_proj(model.decoder(contexts, need_pad=False))
    encoder_proj = model.joiner.encoder_proj(encoder_out)  # (T, joiner_dim)
    # (T, U + 1, vocab) would be large for long utterances: keep only the two
    # log-probabilities the lattice needs.
    num_tokens = len(tokens)
    token_ids = torch.tensor(list(tokens) + [blank_id], device=device)
    blank_lp = np.empty((num_frames, num_tokens + 1))
    token_lp = np.empty((num_frames, num_tokens + 1))
    decoder_out = decoder_out.transpose(0, 1)  # (1, U + 1, joiner_dim)
    for start in range(0, num_frames, 32):  # 32 frames at a time bounds the memory
        logits = model.joiner(encoder_proj[start : start + 32].unsqueeze(1), decoder_out,
                              project_input=False)  # (t, U + 1, vocab)
        log_probs = logits.float().log_softmax(dim=-1)
        end = start + log_probs.size(0)
        blank_lp[start:end] = log_probs[..., blank_id].cpu().numpy()
        index = token_ids.view(1, -1, 1).expand(log_probs.size(0), -1, 1)
        token_lp[start:end] = log_probs.gather(2, index)[..., 0].cpu().numpy()
    if num_tokens <= num_frames:
        return _viterbi_frames_one_per_frame(blank_lp, token_lp)
    return _viterbi_frames(blank_lp, token_lp)


def batch_word_times(model: Transducer, sp, encoder_out: torch.Tensor,
                     encoder_out_lens: torch.Tensor, tokens: list[list[int]]) -> list[list[float]]:
    """Start second of every word of every hypothesis of a batch.

    Args:
      model: the transducer.
      sp: the sentencepiece model (token ids -> pieces).
      encoder_out: (N, T, encoder_dim); encoder_out_lens: (N,).
      tokens: the token ids of each hypothesis.
    """
    times = []
    for n, ids in enumerate(tokens):
        frames = align_tokens(model, encoder_out[n, : int(encoder_out_lens[n])], ids)
        pieces = [sp.id_to_piece(i) for i in ids]
        times.append([start for _, start in word_start_times(pieces, frames)])
    return times


def _viterbi_frames_one_per_frame(blank_lp: np.ndarray, token_lp: np.ndarray) -> list[int]:
    """Best path of the one-token-per-frame lattice (see align_tokens).

    Args:
      blank_lp, token_lp: (T, U + 1) as for _viterbi_frames; U <= T.
    Returns:
      the (increasing) frame of each of the U tokens.
    """
    num_frames, width = blank_lp.shape
    num_tokens = width - 1
    assert num_tokens <= num_frames, (num_tokens, num_frames)
    score = np.full(width, -np.inf)
    score[0] = 0.0
    came_by_token = np.zeros((num_frames, width), dtype=bool)
    for t in range(num_frames):
        stay = score + blank_lp[t]
        move = np.full(width, -np.inf)
        move[1:] = score[:-1] + token_lp[t, :-1]
        came_by_token[t] = move > stay
        score = np.maximum(stay, move)
    frames = [0] * num_tokens
    u = num_tokens
    for t in range(num_frames - 1, -1, -1):
        if u > 0 and came_by_token[t, u]:
            frames[u - 1] = t
            u -= 1
    return frames


def _viterbi_frames(blank_lp: np.ndarray, token_lp: np.ndarray) -> list[int]:
    """Best path of the transducer lattice (see align_tokens).

    Args:
      blank_lp: (T, U + 1) log-prob of blank at (t, u).
      token_lp: (T, U + 1) log-prob of token u + 1 at (t, u) (column U unused).
    Returns:
      the frame of each of the U tokens.
    """
    num_frames, width = blank_lp.shape
    num_tokens = width - 1
    score = np.full((num_frames, width), -np.inf)
    came_by_token = np.zeros((num_frames, width), dtype=bool)
    for t in range(num_frames):
        for u in range(width):
            best = 0.0 if (t == 0 and u == 0) else -np.inf
            by_token = False
            if t > 0 and score[t - 1, u] + blank_lp[t - 1, u] > best:
                best = score[t - 1, u] + blank_lp[t - 1, u]
            if u > 0 and score[t, u - 1] + token_lp[t, u - 1] > best:
                best = score[t, u - 1] + token_lp[t, u - 1]
                by_token = True
            score[t, u] = best
            came_by_token[t, u] = by_token
    frames = [0] * num_tokens
    t, u = num_frames - 1, num_tokens
    while u > 0:
        if came_by_token[t, u]:
            frames[u - 1] = t
            u -= 1
        else:
            t -= 1
    return frames
