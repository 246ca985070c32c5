"""Decoding methods for the stateless transducer, shared by decode.py,
streaming_decode.py, pretrained.py and train.py's validation.

Conventions: `model` is a `Transducer` (model.py) whose decoder is stateless
with `context_size` tokens of context; `encoder_out` is (N, T, encoder_dim) and
`encoder_out_lens` (N,) gives the valid frames; results are lists of token ids
without blanks, in the order of the batch.
"""

import torch

from pruned_transducer_stateless4.model import Transducer


@torch.no_grad()
def greedy_search_batch(
    model: Transducer,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    max_sym_per_frame: int = 1,
) -> list[list[int]]:
    """Batched greedy search: at each frame, emit the arg-max token until it
    is blank or `max_sym_per_frame` tokens were emitted, then move on.

    Args:
      model: the transducer.
      encoder_out: (N, T, encoder_dim).
      encoder_out_lens: (N,) valid frames per utterance.
      max_sym_per_frame: at most this many non-blank tokens per frame (>= 1).
    Returns:
      N lists of token ids.
    """
    assert encoder_out.ndim == 3 and max_sym_per_frame >= 1
    device = encoder_out.device
    batch_size, num_frames, _ = encoder_out.shape
    blank_id = model.decoder.blank_id
    context_size = model.decoder.context_size

    hyps: list[list[int]] = [[] for _ in range(batch_size)]
    contexts = torch.full((batch_size, context_size), blank_id, dtype=torch.int64, device=device)
    decoder_out = model.joiner.decoder_proj(model.decoder(contexts, need_pad=False))
    encoder_proj = model.joiner.encoder_proj(encoder_out)  # (N, T, joiner_dim)
    encoder_out_lens = encoder_out_lens.to(device)

    for t in range(num_frames):
        active = encoder_out_lens > t  # (N,)
        if not bool(active.any()):
            break
        for _ in range(max_sym_per_frame):
            logits = model.joiner(encoder_proj[:, t : t + 1], decoder_out, project_input=False)
            tokens = logits.squeeze(1).argmax(dim=-1)  # (N,)
            emitted = (tokens != blank_id) & active
            if not bool(emitted.any()):
                break
            for i in emitted.nonzero().flatten().tolist():
                hyps[i].append(int(tokens[i]))
            contexts = torch.where(
                emitted.unsqueeze(1), torch.cat([contexts[:, 1:], tokens.unsqueeze(1)], dim=1),
                contexts,
            )
            new_decoder_out = model.joiner.decoder_proj(model.decoder(contexts, need_pad=False))
            decoder_out = torch.where(emitted.view(-1, 1, 1), new_decoder_out, decoder_out)
    return hyps
