"""The reworked Conformer encoder of icefall's pruned_transducer_stateless2,
which pruned_transducer_stateless4 uses (Daniel Povey's version).

Written from icefall's definitions; module and parameter names are icefall's
(``encoder_embed``, ``encoder.layers.<i>.self_attn.in_proj`` ...), so an
icefall ``{"model": state_dict}`` loads into the recipe's Transducer with
``strict=True`` (tests/test_icefall_compat.py checks it against outputs of
icefall's own code).

Differences from the standard Conformer: no LayerNorm or BatchNorm (a
``BasicNorm`` at the end of each layer), scaled layers (learned log-scales on
weights and biases), ``DoubleSwish`` activations, ``ActivationBalancer``s that
shape gradients only, and a layer bypass: while ``warmup`` < 1 (the first
``model_warm_step`` batches of training) each layer's output is mixed with
its input, ``alpha * out + (1 - alpha) * in`` with alpha = min(0.1 + warmup,
1), and at any time a layer is bypassed to alpha = 0.1 with probability
``layer_dropout`` (0.075).

Shapes: N batch size, T input frames, T' = ((T - 1) // 2 - 1) // 2 frames
after subsampling, d = ``d_model``.  Tensors are batch-first inside this
file; the streaming states have icefall's layout.

Two ways to run a causal model on chunks:

* simulated streaming, :meth:`Conformer.streaming_forward` with
  ``simulate_streaming=True``: whole utterances, attention masked chunk-wise
  (chunk ``chunk_size``, ``left_context // chunk_size`` chunks of left
  context), as training with ``dynamic_chunk_training`` sees them;
* real streaming, ``simulate_streaming=False``: one chunk per call with the
  states of :meth:`Conformer.get_init_state` (icefall's layout:
  ``[attn_cache (num_layers, left_context, N, d), cnn_cache (num_layers,
  cnn_module_kernel - 1, N, d)]``, streams on dim 2 once stacked) and
  ``processed_lens`` (N,), the frames after subsampling already output per
  stream.

The real streaming chunk protocol (icefall's): feed ``chunk_size * 4 +
pad_length`` feature frames with ``pad_length = (2 + right_context) * 4 + 3``
and advance by ``chunk_size * 4``.  The subsampling then gives
``chunk_size + 2 + right_context`` frames; the first and the last are cut
off because they see the edges of the window (the zero padding of the first
convolution), and the ``right_context`` look-ahead frames are attended to but
not output.  Input window k (starting at feature frame 64k for chunk 16)
therefore yields what the whole-utterance subsampling calls frames
16k + 1 .. 16k + 16.  The last window of an utterance is padded with a
small log-energy (``LOG_EPS``); ``x_lens`` counts its real frames.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pruned_transducer_stateless4.scaling import (
    ActivationBalancer,
    BasicNorm,
    DoubleSwish,
    ScaledConv1d,
    ScaledConv2d,
    ScaledLinear,
)


def make_pad_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(N, max_len) bool mask, True at padding frames (index >= lengths)."""
    frame_index = torch.arange(max_len, device=lengths.device)
    return frame_index.unsqueeze(0) >= lengths.unsqueeze(1)


def make_chunk_mask(num_frames: int, chunk_size: int, num_left_chunks: int,
                    device: torch.device) -> Tensor:
    """Block-causal attention mask (icefall's ``~subsequent_chunk_mask``).

    Frame i lies in chunk ``i // chunk_size`` and may attend to its own chunk
    and the ``num_left_chunks`` chunks before it (all earlier frames if
    ``num_left_chunks < 0``).

    Returns:
      (T, T) bool tensor, True where query i must NOT attend to key j.
    """
    frame_index = torch.arange(num_frames, device=device)
    chunk_start = torch.div(frame_index, chunk_size, rounding_mode="floor") * chunk_size
    query_chunk_start = chunk_start.unsqueeze(1)
    key_index = frame_index.unsqueeze(0)
    masked = key_index >= query_chunk_start + chunk_size
    if num_left_chunks >= 0:
        masked = masked | (key_index < query_chunk_start - num_left_chunks * chunk_size)
    return masked


def subsampled_lengths(x_lens: Tensor) -> Tensor:
    """T' = ((T - 1) // 2 - 1) // 2 for each T in x_lens."""
    return (((x_lens - 1) >> 1) - 1) >> 1


class Conv2dSubsampling(nn.Module):
    """Subsample by 4 in time and project to d_model.

    Three convolutions (kernel 3; 8 channels with padding 1, then 32 and 128
    channels with stride 2), each followed by an ActivationBalancer and a
    DoubleSwish, then ``out`` (ScaledLinear), ``out_norm`` (BasicNorm with a
    fixed eps) and ``out_balancer``.  Output frame j sees input frames
    4j - 1 .. 4j + 7 (frame -1 being the first convolution's zero padding).
    """

    def __init__(self, in_channels: int, out_channels: int, layer1_channels: int = 8,
                 layer2_channels: int = 32, layer3_channels: int = 128) -> None:
        """
        Args:
          in_channels: feature dimension F (>= 7).
          out_channels: d_model.
        """
        assert in_channels >= 7, in_channels
        super().__init__()
        self.conv = nn.Sequential(
            ScaledConv2d(1, layer1_channels, kernel_size=3, padding=1),
            ActivationBalancer(channel_dim=1),
            DoubleSwish(),
            ScaledConv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2),
            ActivationBalancer(channel_dim=1),
            DoubleSwish(),
            ScaledConv2d(layer2_channels, layer3_channels, kernel_size=3, stride=2),
            ActivationBalancer(channel_dim=1),
            DoubleSwish(),
        )
        self.out = ScaledLinear(layer3_channels * (((in_channels - 1) // 2 - 1) // 2),
                                out_channels)
        # `out` has a learned scale already, so the norm's eps is not learned.
        self.out_norm = BasicNorm(out_channels, learn_eps=False)
        # Keeps the median of each output channel near zero.
        self.out_balancer = ActivationBalancer(channel_dim=-1, min_positive=0.45,
                                               max_positive=0.55)

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, F) -> (N, T', d_model)."""
        x = self.conv(x.unsqueeze(1))  # (N, C, T', F')
        batch_size, channels, num_frames, num_freqs = x.size()
        x = self.out(x.transpose(1, 2).reshape(batch_size, num_frames, channels * num_freqs))
        return self.out_balancer(self.out_norm(x))


class RelPositionalEncoding(nn.Module):
    """Sinusoidal encodings of relative distances (Transformer-XL).

    The encoding of distance r (query position minus key position) is
    ``[sin(r w_0), cos(r w_0), sin(r w_1), ...]`` with
    ``w_k = 10000^(-2k / d)``.
    """

    def __init__(self, d_model: int, dropout_rate: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout_rate)
        inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                             * -(math.log(10000.0) / d_model))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, left_context: int = 0) -> tuple[Tensor, Tensor]:
        """
        Args:
          x: (N, Tq, d), the queries.
          left_context: cached frames in front of x that are keys too.
        Returns:
          (dropout(x), dropout(pos_emb)); pos_emb is (1, Tq + Tk - 1, d) with
          Tk = Tq + left_context, the encodings of the distances
          Tk - 1, Tk - 2, ..., -(Tq - 1) in that order.
        """
        num_queries = x.size(1)
        num_keys = num_queries + left_context
        # Positive distances are computed from |r| and negated through sin's
        # symmetry, as icefall's table does, so the values match bit for bit.
        distances = torch.arange(num_keys - 1, -num_queries, -1, device=x.device)
        angles = distances.abs().to(torch.float32).unsqueeze(1) * self.inv_freq.unsqueeze(0)
        sign = torch.where(distances < 0, -1.0, 1.0).to(angles.dtype).unsqueeze(1)
        pos_emb = torch.stack([angles.sin() * sign, angles.cos()], dim=-1)
        pos_emb = pos_emb.reshape(1, distances.size(0), self.d_model).to(x.dtype)
        return self.dropout(x), self.dropout(pos_emb)


class RelPositionMultiheadAttention(nn.Module):
    """Multi-head self-attention with relative positions (Transformer-XL).

    score(i, j) = (q_i / sqrt(D) + u) . k_j + (q_i / sqrt(D) + v) . p_{i-j}
    with learned per-head biases u = pos_bias_u * exp(pos_bias_u_scale),
    v likewise, and p the ``linear_pos`` projection of the encoding of the
    distance i - j.  ``in_proj`` packs the q, k, v projections (3d x d).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        assert embed_dim % num_heads == 0, (embed_dim, num_heads)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.head_dim = embed_dim // num_heads
        self.in_proj = ScaledLinear(embed_dim, 3 * embed_dim, bias=True)
        self.out_proj = ScaledLinear(embed_dim, embed_dim, bias=True, initial_scale=0.25)
        self.linear_pos = ScaledLinear(embed_dim, embed_dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.pos_bias_u_scale = nn.Parameter(torch.zeros(()))
        self.pos_bias_v_scale = nn.Parameter(torch.zeros(()))
        nn.init.normal_(self.pos_bias_u, std=0.01)
        nn.init.normal_(self.pos_bias_v, std=0.01)

    @staticmethod
    def rel_shift(pos_scores: Tensor, num_keys: int) -> Tensor:
        """Scores against distances -> scores against keys.

        Args:
          pos_scores: (N, H, Tq, P), P = Tq + Tk - 1; column m holds the score
            for distance Tk - 1 - m.
        Returns:
          (N, H, Tq, Tk), entry (i, j) = ``pos_scores[..., i, Tq - 1 - i + j]``,
          the distance (Tk - Tq + i) - j between query i (the last Tq of the
          keys) and key j.
        """
        batch_size, num_heads, num_queries, num_distances = pos_scores.size()
        # Pad one column: row i then starts at i * (P + 1) in the flat view,
        # and reading rows of length P from offset Tq - 1 shifts row i left
        # by i.
        pos_scores = F.pad(pos_scores, (0, 1))
        flat = pos_scores.reshape(batch_size, num_heads, num_queries * (num_distances + 1))
        flat = flat[:, :, num_queries - 1: num_queries - 1 + num_queries * num_distances]
        shifted = flat.reshape(batch_size, num_heads, num_queries, num_distances)
        return shifted[:, :, :, :num_keys]

    def forward(self, query: Tensor, key: Tensor, pos_emb: Tensor,
                key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None,
                self_attention: bool = True) -> Tensor:
        """
        Args:
          query: (N, Tq, d).
          key: (N, Tk, d), also the values; with ``self_attention`` it is the
            query itself (one projection), else the cache plus the query.
          pos_emb: (1, Tq + Tk - 1, d) from :class:`RelPositionalEncoding`.
          key_padding_mask: (N, Tk) bool, True = padding key.
          attn_mask: (Tq, Tk) bool, True = may not attend.
        Returns:
          (N, Tq, d).
        """
        batch_size, num_queries, embed_dim = query.size()
        heads, head_dim = self.num_heads, self.head_dim
        weight = self.in_proj.get_weight()
        bias = self.in_proj.get_bias()
        assert bias is not None
        if self_attention:
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            q = F.linear(query, weight[:embed_dim], bias[:embed_dim])
            k, v = F.linear(key, weight[embed_dim:], bias[embed_dim:]).chunk(2, dim=-1)
        num_keys = k.size(1)

        q = (q * head_dim**-0.5).reshape(batch_size, num_queries, heads, head_dim)
        k = k.reshape(batch_size, num_keys, heads, head_dim).permute(0, 2, 3, 1)
        v = v.reshape(batch_size, num_keys, heads, head_dim).transpose(1, 2)
        p = self.linear_pos(pos_emb).reshape(1, -1, heads, head_dim).permute(0, 2, 3, 1)

        bias_u = self.pos_bias_u * self.pos_bias_u_scale.exp()
        bias_v = self.pos_bias_v * self.pos_bias_v_scale.exp()
        content_scores = torch.matmul((q + bias_u).transpose(1, 2), k)  # (N, H, Tq, Tk)
        pos_scores = torch.matmul((q + bias_v).transpose(1, 2), p)
        # The sum and the softmax in float32 (no-ops for float32): under
        # float16 autocast the matmuls give float16 scores, whose sum could
        # overflow and whose softmax would sum thousands of float16 terms.
        score_dtype = torch.promote_types(content_scores.dtype, torch.float32)
        scores = (content_scores.to(score_dtype)
                  + self.rel_shift(pos_scores, num_keys).to(score_dtype))

        masked: Tensor | None = None
        if key_padding_mask is not None:
            masked = key_padding_mask[:, None, None, :]
        if attn_mask is not None:
            masked = attn_mask[None, None] if masked is None else masked | attn_mask[None, None]
        if masked is not None:
            scores = scores.masked_fill(masked, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if attn_mask is not None and masked is not None:
            # A query whose chunk window holds only padding has no key left
            # (NaN after softmax); icefall zeroes those weights.
            weights = weights.masked_fill(masked, 0.0)
        weights = F.dropout(weights, p=self.dropout, training=self.training).to(v.dtype)
        out = torch.matmul(weights, v)  # (N, H, Tq, D)
        out = out.transpose(1, 2).reshape(batch_size, num_queries, embed_dim)
        return self.out_proj(out)


class ConvolutionModule(nn.Module):
    """Conformer convolution module: pointwise_conv1 (d -> 2d), balancer, GLU,
    depthwise_conv (kernel ``kernel_size``, causal or symmetric), balancer,
    DoubleSwish, pointwise_conv2 (initial scale 0.25).  The pointwise
    convolutions are computed as linear maps of (N, T, d) tensors (the same
    weights as icefall's 1x1 ScaledConv1d)."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True,
                 causal: bool = False) -> None:
        super().__init__()
        assert (kernel_size - 1) % 2 == 0, kernel_size
        self.causal = causal
        self.lorder = kernel_size - 1
        self.pointwise_conv1 = ScaledConv1d(channels, 2 * channels, kernel_size=1, bias=bias)
        # Keeps the GLU input in a range where its sigmoid still learns.
        self.deriv_balancer1 = ActivationBalancer(channel_dim=1, max_abs=10.0,
                                                  min_positive=0.05, max_positive=1.0)
        self.depthwise_conv = ScaledConv1d(channels, channels, kernel_size,
                                           padding=0 if causal else (kernel_size - 1) // 2,
                                           groups=channels, bias=bias)
        self.deriv_balancer2 = ActivationBalancer(channel_dim=1, min_positive=0.05,
                                                  max_positive=1.0)
        self.activation = DoubleSwish()
        self.pointwise_conv2 = ScaledConv1d(channels, channels, kernel_size=1, bias=bias,
                                            initial_scale=0.25)

    def forward(self, x: Tensor, cache: Tensor | None = None, right_context: int = 0,
                src_key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """
        Args:
          x: (N, T, d).
          cache: real streaming only: (N, d, kernel_size - 1), the depthwise
            input of the previous frames.
          right_context: look-ahead frames at the end of x that the next
            chunk sees again (not cached).
          src_key_padding_mask: (N, T), True at padding frames (zeroed before
            the depthwise convolution).
        Returns:
          (N, T, d) and the new cache (empty without a cache).
        """
        x = F.linear(x, self.pointwise_conv1.get_weight().squeeze(-1),
                     self.pointwise_conv1.get_bias())  # (N, T, 2d)
        x = self.deriv_balancer1(x.transpose(1, 2))  # (N, 2d, T)
        x = F.glu(x, dim=1)
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.unsqueeze(1), 0.0)
        new_cache = torch.empty(0)
        if self.causal and self.lorder > 0:
            if cache is None:
                x = F.pad(x, (self.lorder, 0))
            else:
                x = torch.cat([cache, x], dim=2)
                end = x.size(2) - right_context
                new_cache = x[:, :, end - self.lorder: end]
        x = self.deriv_balancer2(self.depthwise_conv(x))
        x = self.activation(x).transpose(1, 2)  # (N, T, d)
        x = F.linear(x, self.pointwise_conv2.get_weight().squeeze(-1),
                     self.pointwise_conv2.get_bias())
        return x, new_cache


class ConformerEncoderLayer(nn.Module):
    """Macaron feed-forward, self-attention, convolution, feed-forward (each a
    residual branch with dropout), then balancer and BasicNorm, then the
    warm-up/layer-dropout bypass."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, layer_dropout: float = 0.075,
                 cnn_module_kernel: int = 31, causal: bool = False) -> None:
        super().__init__()
        self.layer_dropout = layer_dropout
        self.d_model = d_model
        self.self_attn = RelPositionMultiheadAttention(d_model, nhead, dropout=0.0)
        self.feed_forward = self._feed_forward(d_model, dim_feedforward, dropout)
        self.feed_forward_macaron = self._feed_forward(d_model, dim_feedforward, dropout)
        self.conv_module = ConvolutionModule(d_model, cnn_module_kernel, causal=causal)
        self.norm_final = BasicNorm(d_model)
        # Keeps each output channel near zero median and below 6 on average.
        self.balancer = ActivationBalancer(channel_dim=-1, min_positive=0.45,
                                           max_positive=0.55, max_abs=6.0)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def _feed_forward(d_model: int, dim_feedforward: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            ScaledLinear(d_model, dim_feedforward),
            ActivationBalancer(channel_dim=-1),
            DoubleSwish(),
            nn.Dropout(dropout),
            ScaledLinear(dim_feedforward, d_model, initial_scale=0.25),
        )

    def forward(self, src: Tensor, pos_emb: Tensor, src_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None, warmup: float = 1.0) -> Tensor:
        """
        Args:
          src: (N, T, d).
          pos_emb: (1, 2T - 1, d).
          src_mask: (T, T) bool chunk mask or None.
          src_key_padding_mask: (N, T) bool.
          warmup: training progress in units of model_warm_step (>= 1: warm).
        Returns:
          (N, T, d).
        """
        src_orig = src
        alpha = 1.0
        if self.training:
            warmup_scale = min(0.1 + warmup, 1.0)
            keep = torch.rand(()).item() <= 1.0 - self.layer_dropout
            alpha = warmup_scale if keep else 0.1

        src = src + self.dropout(self.feed_forward_macaron(src))
        src = src + self.dropout(self.self_attn(src, src, pos_emb, src_key_padding_mask,
                                                src_mask))
        conv, _ = self.conv_module(src, src_key_padding_mask=src_key_padding_mask)
        src = src + self.dropout(conv)
        src = src + self.dropout(self.feed_forward(src))
        src = self.norm_final(self.balancer(src))
        if alpha != 1.0:
            src = alpha * src + (1.0 - alpha) * src_orig
        return src

    def chunk_forward(self, src: Tensor, pos_emb: Tensor, attn_cache: Tensor,
                      conv_cache: Tensor, src_key_padding_mask: Tensor,
                      left_context: int, right_context: int = 0
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """One chunk of real streaming (eval mode).

        Args:
          src: (N, C, d), the chunk (C = chunk_size + right_context).
          pos_emb: (1, 2C + left_context - 1, d).
          attn_cache: (N, left_context, d), the attention inputs of the
            previous frames, oldest first.
          conv_cache: (N, d, kernel_size - 1).
          src_key_padding_mask: (N, left_context + C).
        Returns:
          (output (N, C, d), new attn_cache, new conv_cache); the caches skip
          the right_context frames, which the next chunk processes again.
        """
        src = src + self.dropout(self.feed_forward_macaron(src))
        key = torch.cat([attn_cache, src], dim=1)
        end = key.size(1) - right_context
        new_attn_cache = key[:, end - left_context: end]
        src = src + self.dropout(self.self_attn(src, key, pos_emb, src_key_padding_mask,
                                                None, self_attention=False))
        conv, new_conv_cache = self.conv_module(src, conv_cache, right_context)
        src = src + self.dropout(conv)
        src = src + self.dropout(self.feed_forward(src))
        return self.norm_final(self.balancer(src)), new_attn_cache, new_conv_cache


class ConformerEncoder(nn.Module):
    """A stack of ConformerEncoderLayers (``layers``)."""

    def __init__(self, encoder_layer_args: dict, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [ConformerEncoderLayer(**encoder_layer_args) for _ in range(num_layers)])
        self.num_layers = num_layers

    def forward(self, src: Tensor, pos_emb: Tensor, mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None, warmup: float = 1.0) -> Tensor:
        """(N, T, d) -> (N, T, d); see ConformerEncoderLayer.forward."""
        for layer in self.layers:
            src = layer(src, pos_emb, mask, src_key_padding_mask, warmup)
        return src

    def chunk_forward(self, src: Tensor, pos_emb: Tensor, states: list[Tensor],
                      src_key_padding_mask: Tensor, left_context: int,
                      right_context: int = 0) -> tuple[Tensor, list[Tensor]]:
        """Real streaming through all layers.

        Args:
          states: [attn_cache (L, left_context, N, d),
                   conv_cache (L, kernel_size - 1, N, d)].
        Returns:
          (N, C, d) and the new states (same layout).
        """
        attn_cache, conv_cache = states[0], states[1]
        new_attn: list[Tensor] = []
        new_conv: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            src, layer_attn, layer_conv = layer.chunk_forward(
                src, pos_emb, attn_cache[i].transpose(0, 1), conv_cache[i].permute(1, 2, 0),
                src_key_padding_mask, left_context, right_context)
            new_attn.append(layer_attn.transpose(0, 1))
            new_conv.append(layer_conv.permute(2, 0, 1))
        return src, [torch.stack(new_attn), torch.stack(new_conv)]


class Conformer(nn.Module):
    """The reworked Conformer encoder (icefall's ``Conformer``).

    Args:
      num_features: input feature dimension.
      subsampling_factor: must be 4.
      d_model: encoder dimension (icefall's --encoder-dim).
      nhead: attention heads.
      dim_feedforward: hidden dimension of the feed-forward modules.
      num_encoder_layers: number of layers.
      dropout: dropout of the residual branches, feed-forward hidden layers and
        positional encodings.
      layer_dropout: probability of bypassing a layer in training.
      cnn_module_kernel: depthwise convolution kernel (odd).
      dynamic_chunk_training: draw a chunk size per training batch (streaming).
      short_chunk_threshold: a draw above this fraction of the batch length
        means full attention.
      short_chunk_size: other draws use chunks of 1 .. short_chunk_size frames.
      num_left_chunks: chunks of left context in dynamic chunk training
        (-1: unlimited).
      causal: causal depthwise convolution (required for streaming).
    """

    def __init__(self, num_features: int, subsampling_factor: int = 4, d_model: int = 256,
                 nhead: int = 4, dim_feedforward: int = 2048, num_encoder_layers: int = 12,
                 dropout: float = 0.1, layer_dropout: float = 0.075,
                 cnn_module_kernel: int = 31, dynamic_chunk_training: bool = False,
                 short_chunk_threshold: float = 0.75, short_chunk_size: int = 25,
                 num_left_chunks: int = -1, causal: bool = False) -> None:
        super().__init__()
        if subsampling_factor != 4:
            raise ValueError(f"only subsampling_factor=4 is supported, got {subsampling_factor}")
        if dynamic_chunk_training and not causal:
            raise ValueError("dynamic chunk training needs causal convolution")
        self.num_features = num_features
        self.subsampling_factor = subsampling_factor
        self.d_model = d_model
        self.nhead = nhead
        self.encoder_layers = num_encoder_layers
        self.cnn_module_kernel = cnn_module_kernel
        self.causal = causal
        self.dynamic_chunk_training = dynamic_chunk_training
        self.short_chunk_threshold = short_chunk_threshold
        self.short_chunk_size = short_chunk_size
        self.num_left_chunks = num_left_chunks
        # Feature frames a real-streaming window holds beyond chunk_size * 4
        # (right_context 0): see the module docstring.
        self.pad_length = self.streaming_pad_length(0)

        self.encoder_embed = Conv2dSubsampling(num_features, d_model)
        self.encoder_pos = RelPositionalEncoding(d_model, dropout)
        self.encoder = ConformerEncoder(
            dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward,
                 dropout=dropout, layer_dropout=layer_dropout,
                 cnn_module_kernel=cnn_module_kernel, causal=causal),
            num_encoder_layers)

    @staticmethod
    def streaming_pad_length(right_context: int = 0, subsampling_factor: int = 4) -> int:
        """Extra feature frames of a real-streaming window: one subsampled
        frame cut off on each side, ``right_context`` look-ahead frames, and
        the 3 frames the subsampling's receptive field needs beyond 4 per
        frame."""
        return (2 + right_context) * subsampling_factor + 3

    def draw_chunk_size(self, max_len: int) -> int:
        """icefall's dynamic chunk draw: c = randint(1, max_len); full attention
        (returns max_len) when c > short_chunk_threshold * max_len, else
        chunks of c % short_chunk_size + 1 frames."""
        if max_len <= 1:
            return max_len
        # A host-side draw from torch's CPU generator (as icefall's): only the
        # integer is used, so it is the same on every device.
        chunk_size = int(torch.randint(1, max_len, (1,), device="cpu").item())
        if chunk_size > max_len * self.short_chunk_threshold:
            return max_len
        return chunk_size % self.short_chunk_size + 1

    def forward(self, x: Tensor, x_lens: Tensor, warmup: float = 1.0) -> tuple[Tensor, Tensor]:
        """
        Args:
          x: (N, T, num_features), T >= 7.
          x_lens: (N,) valid frames.
          warmup: batch count / model_warm_step in training; 1.0 otherwise.
        Returns:
          (encoder_out (N, T', d), encoder_out_lens (N,)).
        """
        embed = self.encoder_embed(x)
        embed, pos_emb = self.encoder_pos(embed)
        lengths = subsampled_lengths(x_lens)
        num_frames = embed.size(1)
        src_key_padding_mask = make_pad_mask(lengths, num_frames)
        mask: Tensor | None = None
        if self.dynamic_chunk_training and self.training:
            chunk_size = self.draw_chunk_size(num_frames)
            if chunk_size < num_frames:
                mask = make_chunk_mask(num_frames, chunk_size, self.num_left_chunks, x.device)
        out = self.encoder(embed, pos_emb, mask, src_key_padding_mask, warmup)
        return out, lengths

    @torch.jit.export
    def get_init_state(self, left_context: int,
                       device: torch.device = torch.device("cpu")) -> list[Tensor]:
        """Initial state of ONE stream: [zeros(L, left_context, d),
        zeros(L, cnn_module_kernel - 1, d)]; :meth:`stack_states` batches
        streams on dim 2."""
        return [
            torch.zeros(self.encoder_layers, left_context, self.d_model, device=device),
            torch.zeros(self.encoder_layers, self.cnn_module_kernel - 1, self.d_model,
                        device=device),
        ]

    @torch.jit.export
    def streaming_forward(self, x: Tensor, x_lens: Tensor,
                          states: list[Tensor] | None = None,
                          processed_lens: Tensor | None = None,
                          left_context: int = 64, right_context: int = 0,
                          chunk_size: int = 16, simulate_streaming: bool = False,
                          warmup: float = 1.0) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Simulated or real streaming (see the module docstring).

        Args:
          x: (N, T, num_features).  Real streaming: one window of
            ``chunk_size * 4 + streaming_pad_length(right_context)`` frames.
          x_lens: (N,) real frames in x.
          states: real streaming: [attn_cache (L, left_context, N, d),
            conv_cache (L, cnn_module_kernel - 1, N, d)]; None when simulating.
          processed_lens: real streaming: (N,) frames after subsampling
            already output per stream.
          left_context: frames of left context (a multiple of chunk_size when
            simulating; < 0 means unlimited there).
          right_context: real streaming look-ahead frames.
          chunk_size: chunk of the simulated streaming mask (real streaming
            takes its chunk from x's size).
          simulate_streaming: whole utterances with a chunk mask.
        Returns:
          (encoder_out (N, T_out, d), encoder_out_lens (N,), new states); real
          streaming returns T_out = chunk_size frames per window.
        """
        if simulate_streaming:
            assert states is None, "simulated streaming takes no states"
            embed = self.encoder_embed(x)
            embed, pos_emb = self.encoder_pos(embed)
            lengths = subsampled_lengths(x_lens)
            num_frames = embed.size(1)
            num_left_chunks = -1
            if left_context >= 0:
                assert left_context % chunk_size == 0, (left_context, chunk_size)
                num_left_chunks = left_context // chunk_size
            mask = make_chunk_mask(num_frames, chunk_size, num_left_chunks, x.device)
            out = self.encoder(embed, pos_emb, mask, make_pad_mask(lengths, num_frames), warmup)
            return out, lengths, []

        assert not self.training, "real streaming runs in eval mode"
        assert self.causal, "real streaming needs causal=True"
        assert states is not None and processed_lens is not None
        batch_size = x.size(0)
        assert states[0].shape == (self.encoder_layers, left_context, batch_size, self.d_model), \
            states[0].shape
        assert states[1].shape == (self.encoder_layers, self.cnn_module_kernel - 1,
                                   batch_size, self.d_model), states[1].shape
        # Cut one frame off each side: they see the window's edges.
        embed = self.encoder_embed(x)[:, 1:-1]
        num_frames = embed.size(1)
        lengths = torch.clamp(subsampled_lengths(x_lens) - 2, min=0)
        # Cache slot s (oldest first) holds frame processed_lens - left + s,
        # real only when that index is >= 0.
        slot_from_end = torch.arange(left_context - 1, -1, -1, device=x.device)
        processed_mask = processed_lens.view(batch_size, 1) <= slot_from_end.unsqueeze(0)
        key_padding_mask = torch.cat([processed_mask, make_pad_mask(lengths, num_frames)], dim=1)
        embed, pos_emb = self.encoder_pos(embed, left_context)
        out, new_states = self.encoder.chunk_forward(embed, pos_emb, states, key_padding_mask,
                                                     left_context, right_context)
        if right_context > 0:
            out = out[:, : num_frames - right_context]
            lengths = torch.clamp(lengths - right_context, min=0)
        return out, lengths, new_states

    @staticmethod
    def stack_states(state_list: list[list[Tensor]]) -> list[Tensor]:
        """Batch per-stream states ([attn (L, left, d), conv (L, k-1, d)] from
        :meth:`get_init_state` / :meth:`unstack_states`) on dim 2."""
        return [torch.stack([states[0] for states in state_list], dim=2),
                torch.stack([states[1] for states in state_list], dim=2)]

    @staticmethod
    def unstack_states(states: list[Tensor]) -> list[list[Tensor]]:
        """Inverse of :meth:`stack_states`: one [attn, conv] per stream."""
        return [[attn, conv] for attn, conv in zip(states[0].unbind(2), states[1].unbind(2))]


def encode(encoder: Conformer, x: Tensor, x_lens: Tensor, chunk_size: int = -1,
           left_context: int = -1) -> tuple[Tensor, Tensor]:
    """Whole-utterance encoding as decoding uses it: full attention when
    ``chunk_size <= 0``, else simulated streaming with ``chunk_size`` and
    ``left_context`` (frames after subsampling; < 0 = unlimited)."""
    if chunk_size <= 0:
        return encoder(x, x_lens)
    out, lens, _ = encoder.streaming_forward(x, x_lens, chunk_size=chunk_size,
                                             left_context=left_context,
                                             simulate_streaming=True)
    return out, lens
