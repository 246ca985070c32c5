"""Joint network of the transducer (icefall's): project, add, tanh, output."""

import torch
import torch.nn as nn

from pruned_transducer_stateless4.scaling import ScaledLinear


class Joiner(nn.Module):
    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = ScaledLinear(encoder_dim, joiner_dim)
        self.decoder_proj = ScaledLinear(decoder_dim, joiner_dim)
        self.output_linear = ScaledLinear(joiner_dim, vocab_size)

    def forward(
        self, encoder_out: torch.Tensor, decoder_out: torch.Tensor, project_input: bool = True
    ) -> torch.Tensor:
        """
        Args:
          encoder_out: (..., encoder_dim), or (..., joiner_dim) if already
            projected (project_input=False).
          decoder_out: same leading shape as encoder_out (broadcastable),
            (..., decoder_dim) or (..., joiner_dim) if already projected.
          project_input: False when the caller applied `encoder_proj` and
            `decoder_proj` itself, which the pruned loss and beam search do
            to project once and reuse the result across many (t, u) pairs.
        Returns:
          logits of shape (..., vocab_size).
        """
        if project_input:
            logit = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            logit = encoder_out + decoder_out
        return self.output_linear(torch.tanh(logit))
