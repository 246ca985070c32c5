# A streaming Conformer encoder for a pruned RNN-T recipe that trains on a
# small CPU.  It follows the design of icefall's streaming Conformer
# (chunk-wise attention masks, dynamic chunk training, cached attention and
# causal convolution for real streaming) but uses plain pre-LayerNorm blocks,
# which start training stably with AdamW and a short warm-up.
"""Streaming Conformer encoder.

Shapes use N for the batch size, T for the number of input feature frames,
T' = ((T - 1) // 2 - 1) // 2 for the number of frames after the x4
subsampling, and d for ``d_model``.

Two ways to run the same causal model:

* :meth:`Conformer.forward` on whole utterances; with ``chunk_size > 0`` the
  attention is masked chunk-wise ("simulated streaming"), which is what
  training with ``dynamic_chunk_training`` and offline evaluation use.
* :meth:`Conformer.streaming_forward` on one chunk at a time with cached
  states.  For the same ``chunk_size``/``left_context`` it gives the same
  outputs as the simulated streaming (up to float rounding).

Streaming state (the layout of sherpa-onnx's online Conformer transducer,
``online-conformer-transducer-model.cc``, which stacks streams on dim 2 of both
tensors):

* ``attn_cache``: (num_encoder_layers, left_context, N, d). For each layer the
  (layer-normalised) attention input of the last ``left_context`` frames,
  oldest first.
* ``cnn_cache``: (num_encoder_layers, cnn_module_kernel - 1, N, d). For each
  layer the depthwise-convolution input of the last ``cnn_module_kernel - 1``
  frames, oldest first.
* ``processed_lens``: (N,) int64, kept by the caller: the number of frames
  (after subsampling) already output for each stream.  Cache slots that do not
  hold a real frame yet are masked out of the attention.  (sherpa-onnx passes
  its count of FEATURE frames consumed, a multiple of ``chunk_size * 4``, so
  an ONNX wrapper for it divides by the subsampling factor.)

Feeding chunks: for ``chunk_size`` output frames, pass
``chunk_size * 4 + pad_length`` feature frames (``pad_length = 7``) and then
advance by ``chunk_size * 4`` feature frames, so consecutive inputs overlap by
``pad_length`` frames (the look-ahead of the subsampling convolutions:
subsampled frame j sees feature frames 4j .. 4j + 6, so 3 extra frames would
do; with 7 the subsampling yields one more frame, which belongs to the next
chunk and is dropped).
The last, partial chunk of an utterance is padded up to the same size with a
very small log-energy such as ``log(1e-10) = -23.03`` (lhotse's ``LOG_EPS``);
``x_lens`` gives the number of real frames, and only the first
``encoder_out_lens`` output frames are valid.  (sherpa-onnx runs full
windows only, so its clients append tail-padding audio before
``input_finished()`` to get the last frames out.)
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def make_pad_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Mask of padding frames.

    Args:
      lengths: (N,) number of valid frames of each sequence.
      max_len: number of frames T of the padded batch.
    Returns:
      (N, T) bool tensor, True at padding frames.
    """
    frame_index = torch.arange(max_len, device=lengths.device)
    return frame_index.unsqueeze(0) >= lengths.unsqueeze(1)


def make_chunk_mask(
    num_frames: int, chunk_size: int, left_context: int, device: torch.device
) -> Tensor:
    """Block-causal attention mask used to simulate streaming.

    Frame i lies in chunk ``i // chunk_size``; it may attend to every frame of
    its own chunk and to the ``left_context`` frames before the chunk starts
    (all earlier frames if ``left_context < 0``).  This is exactly what
    :meth:`Conformer.streaming_forward` sees with a cache of ``left_context``
    frames.

    Returns:
      (T, T) bool tensor, True where query i must NOT attend to key j.
    """
    frame_index = torch.arange(num_frames, device=device)
    chunk_start = torch.div(frame_index, chunk_size, rounding_mode="floor") * chunk_size
    query_chunk_start = chunk_start.unsqueeze(1)
    key_index = frame_index.unsqueeze(0)
    masked = key_index >= query_chunk_start + chunk_size
    if left_context >= 0:
        masked = masked | (key_index < query_chunk_start - left_context)
    return masked


class Conv2dSubsampling(nn.Module):
    """Subsample features by 4 in time, project them to d_model, normalise.

    Two Conv2d layers with kernel 3 and stride 2 and no padding, so
    T' = ((T - 1) // 2 - 1) // 2.  Output frame j depends on input frames
    4j .. 4j + 6 only.  The LayerNorm at the end matters: the raw projection
    has a large scale (std ~20 for log-mel input), which made a prototype's
    encoder collapse early in training.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layer1_channels: int = 32,
        layer2_channels: int = 64,
    ) -> None:
        """
        Args:
          in_channels: feature dimension of the input, e.g. 80.
          out_channels: output dimension (d_model).
          layer1_channels, layer2_channels: channels of the two convolutions;
            kept small because on a CPU they cost more than they help.
        """
        super().__init__()
        assert in_channels >= 7, in_channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, stride=2),
            nn.SiLU(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2),
            nn.SiLU(),
        )
        subsampled_features = ((in_channels - 1) // 2 - 1) // 2
        self.out = nn.Linear(layer2_channels * subsampled_features, out_channels)
        self.out_norm = nn.LayerNorm(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
          x: (N, T, in_channels) features, T >= 7.
        Returns:
          (N, T', out_channels).
        """
        x = self.conv(x.unsqueeze(1))  # (N, C, T', F')
        batch_size, channels, num_frames, num_freqs = x.size()
        x = x.transpose(1, 2).reshape(batch_size, num_frames, channels * num_freqs)
        return self.out_norm(self.out(x))

    @staticmethod
    def output_lengths(x_lens: Tensor) -> Tensor:
        """Number of output frames for inputs of ``x_lens`` frames, (N,)."""
        return torch.clamp(((x_lens - 1) // 2 - 1) // 2, min=0)


class RelPositionalEncoding(nn.Module):
    """Sinusoidal encoding of relative distances (Transformer-XL style).

    The encoding is a function of the distance between a query and a key only
    (never of absolute positions), so attention over a cache plus a chunk sees
    the same encodings as attention over the whole utterance.
    """

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        assert d_model % 2 == 0, d_model
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)
        inv_freq = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
        )
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, left_context: int = 0) -> tuple[Tensor, Tensor]:
        """
        Args:
          x: (N, T, d) input frames (the queries).
          left_context: number of cached frames in front of ``x`` that are
            keys too.
        Returns:
          - x after dropout, (N, T, d);
          - pos_emb, (1, 2T + left_context - 1, d): the encodings of the
            distances T + left_context - 1, ..., 1, 0, -1, ..., -(T - 1)
            (query position minus key position), in that order.
        """
        num_queries = x.size(1)
        num_keys = num_queries + left_context
        distances = torch.arange(
            num_keys - 1, -num_queries, -1, device=x.device, dtype=torch.float32
        )
        angles = distances.unsqueeze(1) * self.inv_freq.unsqueeze(0)
        # Interleave: channel 2k is sin, channel 2k + 1 is cos.
        pos_emb = torch.stack([angles.sin(), angles.cos()], dim=-1)
        pos_emb = pos_emb.reshape(1, distances.size(0), self.d_model).to(x.dtype)
        return self.dropout(x), self.dropout(pos_emb)


class RelPositionMultiheadAttention(nn.Module):
    """Multi-head attention with relative positions (Transformer-XL).

    score(i, j) = (q_i + u) . k_j + (q_i + v) . p_{i-j}, with learnable biases
    u, v per head and p the projected encoding of the distance i - j.
    The queries are the LAST ``Tq`` of the ``Tk`` key frames (Tq == Tk for a
    whole utterance, Tk = left_context + Tq when streaming with a cache).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        assert embed_dim % num_heads == 0, (embed_dim, num_heads)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5

        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.kv_proj = nn.Linear(embed_dim, 2 * embed_dim)
        self.pos_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def rel_shift(pos_scores: Tensor, num_keys: int) -> Tensor:
        """Turn scores against distances into scores against keys.

        Args:
          pos_scores: (N, H, Tq, P) with P = Tk + Tq - 1; column m holds the
            score for distance Tk - 1 - m.
          num_keys: Tk.
        Returns:
          (N, H, Tq, Tk) whose entry (i, j) is ``pos_scores[..., i, Tq-1-i+j]``.
        """
        batch_size, num_heads, num_queries, num_distances = pos_scores.size()
        # After padding one column, row i starts at i * (P + 1) in the flat
        # view; reading rows of length P from offset Tq - 1 shifts row i left
        # by i, which is the wanted diagonal gather without an index tensor.
        pos_scores = F.pad(pos_scores, (0, 1))
        flat = pos_scores.reshape(batch_size, num_heads, num_queries * (num_distances + 1))
        flat = flat[:, :, num_queries - 1 : num_queries - 1 + num_queries * num_distances]
        shifted = flat.reshape(batch_size, num_heads, num_queries, num_distances)
        return shifted[:, :, :, :num_keys]

    def forward(self, query: Tensor, key_value: Tensor, pos_emb: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
          query: (N, Tq, d).
          key_value: (N, Tk, d); its last Tq frames are the query frames.
          pos_emb: (1, Tk + Tq - 1, d) from :class:`RelPositionalEncoding`.
          mask: bool, broadcastable to (N, Tq, Tk); True = do not attend.
        Returns:
          (N, Tq, d).
        """
        batch_size, num_queries, _ = query.size()
        num_keys = key_value.size(1)
        heads, head_dim = self.num_heads, self.head_dim

        q = self.q_proj(query).reshape(batch_size, num_queries, heads, head_dim)
        kv = self.kv_proj(key_value).reshape(batch_size, num_keys, 2, heads, head_dim)
        k = kv[:, :, 0].permute(0, 2, 3, 1)  # (N, H, D, Tk)
        v = kv[:, :, 1].transpose(1, 2)  # (N, H, Tk, D)
        p = self.pos_proj(pos_emb).reshape(1, -1, heads, head_dim).permute(0, 2, 3, 1)

        content_scores = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k)
        pos_scores = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p)
        pos_scores = self.rel_shift(pos_scores, num_keys)
        scores = (content_scores + pos_scores) * self.scale  # (N, H, Tq, Tk)

        # A finite fill value (not -inf) keeps fully masked rows (queries at
        # padding frames) free of NaN, which would leak into real frames via
        # 0 * NaN; exp(-1e4) underflows to exactly 0 in every real row.
        scores = scores.masked_fill(mask.unsqueeze(1), -1.0e4)
        attn_weights = self.dropout(torch.softmax(scores, dim=-1))
        attn_out = torch.matmul(attn_weights, v)  # (N, H, Tq, D)
        attn_out = attn_out.transpose(1, 2).reshape(batch_size, num_queries, self.embed_dim)
        return self.out_proj(attn_out)


class FeedForwardModule(nn.Module):
    """Linear -> Swish -> dropout -> Linear."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.in_proj = nn.Linear(d_model, dim_feedforward)
        self.activation = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(dim_feedforward, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, d) -> (N, T, d)."""
        return self.out_proj(self.dropout(self.activation(self.in_proj(x))))


class ConvolutionModule(nn.Module):
    """Conformer convolution module.

    pointwise conv -> GLU -> depthwise conv -> LayerNorm -> Swish -> pointwise
    conv.  The depthwise convolution is causal when ``causal`` is True (it
    only sees the current and the ``kernel_size - 1`` previous frames).
    LayerNorm over channels replaces the paper's BatchNorm: batch statistics
    would make streaming, small batches and multi-process training disagree.
    The pointwise convolutions are Linear layers on (N, T, d).
    """

    def __init__(self, channels: int, kernel_size: int, causal: bool = True) -> None:
        super().__init__()
        assert causal or (kernel_size - 1) % 2 == 0, "non-causal kernel must be odd"
        self.channels = channels
        self.kernel_size = kernel_size
        self.causal = causal
        self.pointwise_conv1 = nn.Linear(channels, 2 * channels)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, padding=0, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.activation = nn.SiLU()
        self.pointwise_conv2 = nn.Linear(channels, channels)

    def _glu(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        """(N, T, d) -> (N, d, T): pointwise conv and GLU, padding zeroed.

        Zeroing padding frames keeps them out of the real frames' outputs in
        the non-causal case, and matches the zero padding at the edges.
        """
        x = F.glu(self.pointwise_conv1(x), dim=-1)
        x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        return x.transpose(1, 2)

    def _finish(self, x: Tensor) -> Tensor:
        """(N, d, T) depthwise output -> (N, T, d) module output."""
        x = self.norm(x.transpose(1, 2))
        return self.pointwise_conv2(self.activation(x))

    def forward(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        """
        Args:
          x: (N, T, d).
          pad_mask: (N, T) bool, True at padding frames.
        Returns:
          (N, T, d).
        """
        x = self._glu(x, pad_mask)
        if self.causal:
            x = F.pad(x, (self.kernel_size - 1, 0))
        else:
            half = (self.kernel_size - 1) // 2
            x = F.pad(x, (half, half))
        return self._finish(self.depthwise_conv(x))

    def streaming_forward(
        self, x: Tensor, cache: Tensor, pad_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Causal convolution of one chunk, continuing from a cache.

        Args:
          x: (N, T, d) the chunk.
          cache: (N, d, kernel_size - 1) depthwise-conv inputs of the frames
            before the chunk (zeros at the start of an utterance, which is the
            same as the zero padding of :meth:`forward`).
          pad_mask: (N, T) bool, True at padding frames.
        Returns:
          - (N, T, d) output;
          - (N, d, kernel_size - 1) new cache.
        """
        assert self.causal, "streaming needs a causal convolution"
        x = torch.cat([cache, self._glu(x, pad_mask)], dim=2)
        new_cache = x[:, :, x.size(2) - (self.kernel_size - 1) :]
        return self._finish(self.depthwise_conv(x)), new_cache


class ConformerEncoderLayer(nn.Module):
    """Pre-LayerNorm macaron Conformer block.

        x = x + 0.5 * FF(LN(x))
        x = x + MHSA(LN(x))
        x = x + Conv(LN(x))
        x = x + 0.5 * FF(LN(x))

    There is no LayerNorm on the residual path (the "post-LN" block of the
    Conformer paper collapsed in a CPU prototype); :class:`Conformer` puts one
    LayerNorm after the subsampling and one after the last layer.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        cnn_module_kernel: int,
        causal: bool,
    ) -> None:
        super().__init__()
        self.norm_ff_macaron = nn.LayerNorm(d_model)
        self.feed_forward_macaron = FeedForwardModule(d_model, dim_feedforward, dropout)
        self.norm_mha = nn.LayerNorm(d_model)
        self.self_attn = RelPositionMultiheadAttention(d_model, nhead, dropout)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv_module = ConvolutionModule(d_model, cnn_module_kernel, causal)
        self.norm_ff = nn.LayerNorm(d_model)
        self.feed_forward = FeedForwardModule(d_model, dim_feedforward, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos_emb: Tensor, attn_mask: Tensor, pad_mask: Tensor) -> Tensor:
        """
        Args:
          x: (N, T, d).
          pos_emb: (1, 2T - 1, d).
          attn_mask: bool, broadcastable to (N, T, T); True = do not attend.
          pad_mask: (N, T) bool, True at padding frames.
        Returns:
          (N, T, d).
        """
        x = x + 0.5 * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        attn_in = self.norm_mha(x)
        x = x + self.dropout(self.self_attn(attn_in, attn_in, pos_emb, attn_mask))
        x = x + self.dropout(self.conv_module(self.norm_conv(x), pad_mask))
        x = x + 0.5 * self.dropout(self.feed_forward(self.norm_ff(x)))
        return x

    def streaming_forward(
        self,
        x: Tensor,
        pos_emb: Tensor,
        attn_mask: Tensor,
        pad_mask: Tensor,
        attn_cache: Tensor,
        conv_cache: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One chunk with cached left context.

        Args:
          x: (N, T, d) the chunk.
          pos_emb: (1, 2T + L - 1, d) with L = left context.
          attn_mask: bool, broadcastable to (N, T, L + T); True = do not attend.
          pad_mask: (N, T) bool, True at padding frames of the chunk.
          attn_cache: (N, L, d) attention inputs of the L previous frames.
          conv_cache: (N, d, kernel - 1) conv inputs of the previous frames.
        Returns:
          (N, T, d) output, new attn_cache (N, L, d), new conv_cache.
        """
        left_context = attn_cache.size(1)
        x = x + 0.5 * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        attn_in = self.norm_mha(x)
        key_value = torch.cat([attn_cache, attn_in], dim=1)
        new_attn_cache = key_value[:, key_value.size(1) - left_context :]
        x = x + self.dropout(self.self_attn(attn_in, key_value, pos_emb, attn_mask))
        conv_out, new_conv_cache = self.conv_module.streaming_forward(
            self.norm_conv(x), conv_cache, pad_mask
        )
        x = x + self.dropout(conv_out)
        x = x + 0.5 * self.dropout(self.feed_forward(self.norm_ff(x)))
        return x, new_attn_cache, new_conv_cache


class Conformer(nn.Module):
    """Streaming (causal) Conformer encoder.

    Conv2dSubsampling (x4) -> relative positional encoding -> pre-LN
    Conformer layers -> LayerNorm.
    """

    def __init__(
        self,
        num_features: int = 80,
        subsampling_factor: int = 4,
        d_model: int = 256,
        nhead: int = 4,
        dim_feedforward: int = 1024,
        num_encoder_layers: int = 12,
        dropout: float = 0.1,
        cnn_module_kernel: int = 31,
        causal: bool = True,
        dynamic_chunk_training: bool = False,
        short_chunk_size: int = 25,
        num_left_chunks: int = 4,
    ) -> None:
        """
        Args:
          num_features: input feature dimension.
          subsampling_factor: must be 4.
          d_model: attention/encoder dimension (the encoder output dimension).
          nhead: number of attention heads.
          dim_feedforward: hidden dimension of the feed-forward modules.
          num_encoder_layers: number of Conformer layers.
          dropout: dropout rate.
          cnn_module_kernel: kernel size of the depthwise convolutions.
          causal: causal depthwise convolutions (needed for streaming).
          dynamic_chunk_training: in training, draw a random chunk size per
            batch (see :meth:`draw_chunk_config`) and ignore the chunk
            arguments of :meth:`forward`.
          short_chunk_size: short chunks are drawn from 1 .. short_chunk_size
            frames (after subsampling).
          num_left_chunks: left context in chunks for dynamic chunk training;
            -1 means unlimited.
        """
        super().__init__()
        if subsampling_factor != 4:
            raise ValueError(f"only subsampling_factor=4 is supported, got {subsampling_factor}")
        self.num_features = num_features
        self.subsampling_factor = subsampling_factor
        self.d_model = d_model
        self.nhead = nhead
        self.num_encoder_layers = num_encoder_layers
        # Same name as icefall's Conformer, which export scripts read.
        self.encoder_layers = num_encoder_layers
        self.cnn_module_kernel = cnn_module_kernel
        self.causal = causal
        self.dynamic_chunk_training = dynamic_chunk_training
        self.short_chunk_size = short_chunk_size
        self.num_left_chunks = num_left_chunks
        # Feature frames fed to streaming_forward on top of chunk_size * 4
        # (they overlap the next chunk); see the module docstring.
        self.pad_length = 7

        # Global mean/variance normalisation of the input features (set by
        # train.py from training data, stored with the weights).  Raw log-mel
        # values sit around -10 with std ~9: fed as they are, most SiLU units
        # of the subsampling start in their flat negative region, the encoder
        # passes little information and training falls into the "constant
        # encoder output" collapse.  A per-dimension affine map keeps
        # streaming exact (it is frame-local).
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_inv_std", torch.ones(num_features))
        self.encoder_embed = Conv2dSubsampling(num_features, d_model)
        self.encoder_pos = RelPositionalEncoding(d_model, dropout)
        self.layers = nn.ModuleList(
            [
                ConformerEncoderLayer(
                    d_model, nhead, dim_feedforward, dropout, cnn_module_kernel, causal
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.final_norm = nn.LayerNorm(d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Zero the biases of the residual branches' output projections.

        The weights keep PyTorch's default initialisation.  An earlier
        version also scaled them by 0.1 so that each layer started near the
        identity; on the 5 h generated corpus that run collapsed (encoder
        output constant across utterances by batch 400).  The default
        initialisation alone does not prevent it either: what grows is a
        constant (DC) component of the residual stream, norm ~400-800 after
        6 layers at batch 400 against ~4 for the time-varying part, which the
        LayerNorms then turn into constant inputs and output.  See the
        closing note of the training issue; a fix (e.g. a penalty on that
        component, as icefall's ActivationBalancer does) is open work.
        """
        for layer in self.layers:
            assert isinstance(layer, ConformerEncoderLayer)
            for linear in (
                layer.feed_forward_macaron.out_proj,
                layer.feed_forward.out_proj,
                layer.self_attn.out_proj,
                layer.conv_module.pointwise_conv2,
            ):
                with torch.no_grad():
                    linear.bias.zero_()

    def normalize_features(self, x: Tensor) -> Tensor:
        """(x - feature_mean) * feature_inv_std, per feature dimension."""
        return (x - self.feature_mean) * self.feature_inv_std

    @torch.jit.ignore
    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        """Sets the global normalisation from per-dimension statistics (F,)."""
        self.feature_mean.copy_(mean)
        self.feature_inv_std.copy_(1.0 / std.clamp(min=1e-3))

    def draw_chunk_config(self, max_len: int) -> tuple[int, int]:
        """Draw (chunk_size, left_context) for one training batch.

        As icefall: c = randint(1, max_len); if c > max_len / 2 the batch uses
        full attention, otherwise chunks of c % short_chunk_size + 1 frames
        with num_left_chunks chunks of left context.

        Args:
          max_len: number of frames after subsampling, T'.
        Returns:
          (chunk_size, left_context) in frames after subsampling;
          chunk_size = -1 means full attention, left_context = -1 unlimited.
        """
        if max_len <= 1:
            return -1, -1
        chunk_size = int(torch.randint(1, max_len, (1,)).item())
        if 2 * chunk_size > max_len:
            return -1, -1
        chunk_size = chunk_size % self.short_chunk_size + 1
        if self.num_left_chunks < 0:
            return chunk_size, -1
        return chunk_size, self.num_left_chunks * chunk_size

    def forward(
        self, x: Tensor, x_lens: Tensor, chunk_size: int = -1, left_context: int = -1
    ) -> tuple[Tensor, Tensor]:
        """Encode whole utterances, optionally with chunk-wise masked attention.

        Args:
          x: (N, T, num_features) features, T >= 7.
          x_lens: (N,) number of valid frames of each utterance.
          chunk_size: > 0 simulates streaming with chunks of this many frames
            (after subsampling); <= 0 means full attention.  Ignored in
            training mode when dynamic_chunk_training is on.
          left_context: frames (after subsampling) of left context before each
            chunk; -1 means unlimited.  Used only with chunk_size > 0.
        Returns:
          - encoder_out, (N, T', d_model);
          - encoder_out_lens, (N,) valid frames of each utterance.
        """
        encoder_out, encoder_out_lens, _ = self.encode_with_dc_penalty(
            x, x_lens, chunk_size, left_context, False
        )
        return encoder_out, encoder_out_lens

    def encode_with_dc_penalty(
        self,
        x: Tensor,
        x_lens: Tensor,
        chunk_size: int = -1,
        left_context: int = -1,
        compute_dc_penalty: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward`, plus the DC penalty of the residual stream.

        The penalty, summed over layers, is ||mean_t(x)||^2 / sum_d var_t(x)
        of each layer's output x over the valid frames of the batch: the
        energy of the component that is constant over time relative to the
        energy that varies.  Training adds it to the loss (train.py
        --dc-penalty-scale) because that constant component is what grew
        without bound in the runs whose encoder collapsed; icefall's
        ActivationBalancer constrains the same statistic through gradients.
        Returns (encoder_out, encoder_out_lens, penalty); penalty is 0 when
        compute_dc_penalty is False.
        """
        embed = self.encoder_embed(self.normalize_features(x))
        encoder_out_lens = Conv2dSubsampling.output_lengths(x_lens)
        num_frames = embed.size(1)

        if self.training and self.dynamic_chunk_training:
            chunk_size, left_context = self.draw_chunk_config(num_frames)

        embed, pos_emb = self.encoder_pos(embed)
        pad_mask = make_pad_mask(encoder_out_lens, num_frames)
        attn_mask = pad_mask.unsqueeze(1)  # (N, 1, T')
        if chunk_size > 0:
            chunk_mask = make_chunk_mask(num_frames, chunk_size, left_context, x.device)
            attn_mask = attn_mask | chunk_mask.unsqueeze(0)  # (N, T', T')

        dc_penalty = torch.zeros((), device=x.device)
        valid = (~pad_mask).unsqueeze(-1).to(embed.dtype)  # (N, T', 1)
        num_valid = valid.sum().clamp(min=1.0)
        for layer in self.layers:
            embed = layer(embed, pos_emb, attn_mask, pad_mask)
            if compute_dc_penalty:
                mean = (embed * valid).sum(dim=(0, 1)) / num_valid  # (d,)
                variance = (((embed - mean) * valid) ** 2).sum(dim=(0, 1)) / num_valid
                dc_penalty = dc_penalty + (mean**2).sum() / (variance.sum() + 1e-4)
        return self.final_norm(embed), encoder_out_lens, dc_penalty

    @torch.jit.export
    def get_init_state(
        self, left_context: int, batch_size: int = 1, device: torch.device = torch.device("cpu")
    ) -> list[Tensor]:
        """Initial streaming state: zeros.

        Returns:
          [attn_cache (num_encoder_layers, left_context, batch_size, d_model),
           cnn_cache (num_encoder_layers, cnn_module_kernel - 1, batch_size,
           d_model)].  The caller keeps processed_lens = zeros(batch_size)
           (int64) next to them.
        """
        attn_cache = torch.zeros(
            self.num_encoder_layers, left_context, batch_size, self.d_model, device=device
        )
        cnn_cache = torch.zeros(
            self.num_encoder_layers,
            self.cnn_module_kernel - 1,
            batch_size,
            self.d_model,
            device=device,
        )
        return [attn_cache, cnn_cache]

    @torch.jit.export
    def streaming_forward(
        self,
        x: Tensor,
        x_lens: Tensor,
        states: list[Tensor],
        processed_lens: Tensor,
        left_context: int,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Encode the next chunk of each stream.

        Args:
          x: (N, chunk_size * 4 + pad_length, num_features) the next feature
            frames; the last pad_length frames are fed again with the next
            chunk (see the module docstring, also for the last chunk).
          x_lens: (N,) number of real frames in ``x`` (the full size except
            for the last chunk of an utterance).
          states: [attn_cache, cnn_cache] from :meth:`get_init_state` or the
            previous call.
          processed_lens: (N,) int64, frames (after subsampling) output so far
            per stream; after this call the caller adds chunk_size.
          left_context: frames of cached left context; must equal
            ``states[0].size(1)``.
        Returns:
          - encoder_out, (N, chunk_size, d_model);
          - encoder_out_lens, (N,) valid frames of encoder_out;
          - new states [attn_cache, cnn_cache], same shapes as ``states``.
        """
        assert self.causal, "streaming_forward needs causal=True"
        assert len(states) == 2, len(states)
        attn_cache, cnn_cache = states[0], states[1]
        assert attn_cache.size(1) == left_context, (attn_cache.size(1), left_context)
        chunk_size = (x.size(1) - self.pad_length) // self.subsampling_factor
        assert chunk_size > 0, x.size(1)
        assert chunk_size * self.subsampling_factor + self.pad_length == x.size(1), x.size(1)

        # The subsampling gives chunk_size + 1 frames; the last one is the
        # first frame of the next chunk and is computed again there.
        embed = self.encoder_embed(self.normalize_features(x))[:, :chunk_size]
        encoder_out_lens = torch.clamp(Conv2dSubsampling.output_lengths(x_lens), max=chunk_size)
        embed, pos_emb = self.encoder_pos(embed, left_context)

        # Cache slot s (oldest first) holds frame processed_lens - L + s,
        # which is real only if that index is >= 0.
        slots_from_end = left_context - torch.arange(left_context, device=x.device)
        cache_mask = slots_from_end.unsqueeze(0) > processed_lens.unsqueeze(1)  # (N, L)
        pad_mask = make_pad_mask(encoder_out_lens, chunk_size)  # (N, chunk)
        attn_mask = torch.cat([cache_mask, pad_mask], dim=1).unsqueeze(1)  # (N, 1, L + chunk)

        new_attn_caches: list[Tensor] = []
        new_cnn_caches: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            embed, layer_attn_cache, layer_cnn_cache = layer.streaming_forward(
                embed,
                pos_emb,
                attn_mask,
                pad_mask,
                attn_cache[i].transpose(0, 1),  # (N, L, d)
                cnn_cache[i].permute(1, 2, 0),  # (N, d, kernel - 1)
            )
            new_attn_caches.append(layer_attn_cache.transpose(0, 1))
            new_cnn_caches.append(layer_cnn_cache.permute(2, 0, 1))

        new_states = [torch.stack(new_attn_caches), torch.stack(new_cnn_caches)]
        return self.final_norm(embed), encoder_out_lens, new_states

    @staticmethod
    def stack_states(state_list: list[list[Tensor]]) -> list[Tensor]:
        """Batch the states of independent streams.

        Args:
          state_list: one [attn_cache, cnn_cache] per stream (each may itself
            hold several streams).
        Returns:
          [attn_cache, cnn_cache] with the streams concatenated on dim 2 (the
          batch dim of both tensors), in order.
        """
        attn_cache = torch.cat([states[0] for states in state_list], dim=2)
        cnn_cache = torch.cat([states[1] for states in state_list], dim=2)
        return [attn_cache, cnn_cache]

    @staticmethod
    def unstack_states(states: list[Tensor]) -> list[list[Tensor]]:
        """Inverse of :meth:`stack_states`: one [attn_cache, cnn_cache] per
        stream, each with batch size 1."""
        attn_caches = states[0].split(1, dim=2)
        cnn_caches = states[1].split(1, dim=2)
        return [[attn, cnn] for attn, cnn in zip(attn_caches, cnn_caches)]
