"""Transducer with the pruned RNN-T loss (Kuang et al. 2022, arXiv 2206.13236).

Training computes two losses on the same (encoder, decoder) outputs:

* the *simple* loss: a trivial joiner (logits = am + lm, from `simple_am_proj`
  and `simple_lm_proj`), cheap on the whole (T, S+1) grid; its gradients tell
  which symbol positions s matter at each frame t;
* the *pruned* loss: the real joiner evaluated only on `prune_range` symbol
  positions per frame chosen from those gradients.

Both go through `shared.rnnt_loss` (its recursion by fast_rnnt, Triton or
plain PyTorch: train.py's --rnnt-backend) and run in float32 even under
autocast, because the recursions sum many log-probabilities.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruned_transducer_stateless4.conformer import Conformer
from pruned_transducer_stateless4.decoder import Decoder
from pruned_transducer_stateless4.joiner import Joiner
from pruned_transducer_stateless4.scaling import ScaledLinear
from shared import rnnt_loss


class Transducer(nn.Module):
    def __init__(
        self,
        encoder: Conformer,
        decoder: Decoder,
        joiner: Joiner,
        encoder_dim: int,
        decoder_dim: int,
        joiner_dim: int,
        vocab_size: int,
        use_ctc: bool = False,
    ):
        """
        Args:
          encoder: maps features (N, T, F) to encoder_out (N, T', encoder_dim).
          decoder: stateless prediction network, output (N, U, decoder_dim).
          joiner: joint network, logits (..., vocab_size).
          joiner_dim: the joiner's hidden dimension (icefall's signature; the
            joiner itself holds the projections).
          use_ctc: add a CTC head `ctc_output` on the encoder (NOT icefall's;
            off by default, and without it the state dict is icefall's).
        """
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.joiner = joiner
        self.simple_am_proj = ScaledLinear(encoder_dim, vocab_size, initial_speed=0.5)
        self.simple_lm_proj = ScaledLinear(decoder_dim, vocab_size)
        self.ctc_output = ScaledLinear(encoder_dim, vocab_size) if use_ctc else None

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: list[list[int]],
        prune_range: int = 5,
        am_scale: float = 0.0,
        lm_scale: float = 0.0,
        warmup: float = 1.0,
    ) -> tuple[torch.Tensor, ...]:
        """
        Args:
          x: (N, T, F) features.
          x_lens: (N,) number of valid frames in x.
          y: N token-id sequences (no blank).
          prune_range: symbol positions kept per frame for the pruned loss.
          am_scale, lm_scale: weights of the acoustic-only and LM-only terms
            of the smoothed simple loss (icefall's --am-scale, --lm-scale).
          warmup: batch count / model_warm_step (the encoder's layer bypass).
        Returns:
          (simple_loss, pruned_loss) as icefall's, summed over the batch;
          with the optional CTC head also ctc_loss (summed) as a third element.
        """
        assert x.ndim == 3 and x_lens.ndim == 1 and x.size(0) == x_lens.size(0) == len(y)
        encoder_out, encoder_out_lens = self.encoder(x, x_lens, warmup=warmup)

        blank_id = self.decoder.blank_id
        device = x.device
        batch_size = len(y)
        y_lens = torch.tensor([len(tokens) for tokens in y], dtype=torch.int64, device=device)
        max_len = int(y_lens.max()) if batch_size > 0 else 0
        y_padded = torch.full((batch_size, max_len), blank_id, dtype=torch.int64, device=device)
        for i, tokens in enumerate(y):
            y_padded[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64, device=device)
        # The decoder's first input is blank, standing for "start of sentence".
        sos_y_padded = F.pad(y_padded, (1, 0), value=blank_id)
        decoder_out = self.decoder(sos_y_padded)  # (N, S+1, decoder_dim)

        # boundary[i] = (begin_symbol, begin_frame, end_symbol, end_frame)
        boundary = torch.zeros((batch_size, 4), dtype=torch.int64, device=device)
        boundary[:, 2] = y_lens
        boundary[:, 3] = encoder_out_lens

        lm = self.simple_lm_proj(decoder_out)
        am = self.simple_am_proj(encoder_out)
        with torch.autocast(device_type=device.type, enabled=False):
            simple_loss, (px_grad, py_grad) = rnnt_loss.rnnt_loss_smoothed(
                lm=lm.float(),
                am=am.float(),
                symbols=y_padded,
                termination_symbol=blank_id,
                lm_only_scale=lm_scale,
                am_only_scale=am_scale,
                boundary=boundary,
                reduction="sum",
                return_grad=True,
            )

        ranges = rnnt_loss.get_rnnt_prune_ranges(
            px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=prune_range
        )
        # Project before pruning: the projections then run on (N, T) and
        # (N, S+1) instead of on the (N, T, prune_range) grid.
        am_pruned, lm_pruned = rnnt_loss.do_rnnt_pruning(
            am=self.joiner.encoder_proj(encoder_out),
            lm=self.joiner.decoder_proj(decoder_out),
            ranges=ranges,
        )
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)
        with torch.autocast(device_type=device.type, enabled=False):
            pruned_loss = rnnt_loss.rnnt_loss_pruned(
                logits=logits.float(),
                symbols=y_padded,
                ranges=ranges,
                termination_symbol=blank_id,
                boundary=boundary,
                reduction="sum",
            )

        if self.ctc_output is None:
            return simple_loss, pruned_loss
        else:
            ctc_log_probs = self.ctc_output(encoder_out).float().log_softmax(dim=-1)
            ctc_loss = F.ctc_loss(
                log_probs=ctc_log_probs.transpose(0, 1),  # (T, N, V)
                targets=y_padded,
                input_lengths=encoder_out_lens,
                target_lengths=y_lens,
                blank=blank_id,
                reduction="sum",
                zero_infinity=True,
            )
            return simple_loss, pruned_loss, ctc_loss
