"""Stateless prediction network (Ghodsi et al. 2020), icefall's.

The decoder sees only the last `context_size` tokens: a ScaledEmbedding
followed by a depthwise ScaledConv1d over those tokens (no bias), then ReLU.
Having no recurrence makes beam search cheap (hypotheses with equal last
tokens share decoder outputs) and lets the decoder be exported as a plain
feed-forward graph.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruned_transducer_stateless4.scaling import ScaledConv1d, ScaledEmbedding


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int, context_size: int):
        """
        Args:
          vocab_size: number of tokens, blank included.
          decoder_dim: embedding and output dimension.
          blank_id: the blank token; its embedding row starts at zero and
            gets no gradient; it stands for "no token yet".
          context_size: number of previous tokens the decoder looks at; 1 means
            a bigram-like decoder (no convolution).
        """
        super().__init__()
        assert context_size >= 1, context_size
        self.vocab_size = vocab_size
        self.decoder_dim = decoder_dim
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = ScaledEmbedding(vocab_size, decoder_dim, padding_idx=blank_id)
        if context_size > 1:
            self.conv = ScaledConv1d(decoder_dim, decoder_dim, kernel_size=context_size,
                                     padding=0, groups=decoder_dim, bias=False)
        else:
            # No parameters (the state dict stays icefall's); TorchScript needs
            # the attribute even where forward does not use it.
            self.conv = nn.Identity()

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """
        Args:
          y: (N, U) int64 token ids.
          need_pad: True in training: y is a whole label sequence (starting
            with blank) and is left-padded with context_size-1 zeros so that
            every position sees a full context.  False in decoding: y holds
            exactly context_size tokens per hypothesis (U == context_size).
        Returns:
          (N, U, decoder_dim) in training, (N, 1, decoder_dim) in decoding.
        """
        embedding_out = self.embedding(y.to(torch.int64))
        if self.context_size > 1:
            embedding_out = embedding_out.permute(0, 2, 1)  # (N, decoder_dim, U)
            if need_pad:
                embedding_out = F.pad(embedding_out, pad=(self.context_size - 1, 0))
            else:
                assert embedding_out.size(-1) == self.context_size
            embedding_out = self.conv(embedding_out).permute(0, 2, 1)
        return F.relu(embedding_out)
