"""Building blocks of the reworked Conformer (icefall's `scaling.py`).

Written from the definitions in icefall's pruned_transducer_stateless2 (which
stateless4 uses); parameter names and shapes are icefall's, so icefall
checkpoints load into these modules with ``strict=True``.

* ``ScaledLinear``, ``ScaledConv1d``, ``ScaledConv2d``: the usual layers with
  a learned log-scale on the weight (``weight_scale``) and on the bias
  (``bias_scale``); the effective weight is ``weight * weight_scale.exp()``.
  The raw weights start with std 0.1 and the scale carries the
  1/sqrt(fan_in) factor, so Eve's relative updates change all layers at a
  similar rate.
* ``ScaledEmbedding``: an embedding times ``scale.exp()``.
* ``BasicNorm``: ``x * (mean(x^2 over channels) + exp(eps))^-0.5`` with a
  learned ``eps`` (stored as its log); no mean subtraction, no affine part.
* ``ActivationBalancer``: the identity in the forward pass; in the backward
  pass it nudges the gradient so that each channel's proportion of positive
  values stays in [min_positive, max_positive] and its mean absolute value in
  [min_abs, max_abs].
* ``DoubleSwish``: ``x * sigmoid(x - 1)``, with a derivative computed from
  the saved output (no need to keep x).

``fold_scales`` turns the scaled layers of a model into plain ones for export.
"""

import math
import random
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def _scaled_init(module: nn.Module, initial_scale: float, initial_speed: float) -> None:
    """Adds the log-scale parameters `weight_scale` and `bias_scale` (None
    without a bias) to a linear or convolution layer and initialises it as
    icefall does: weight ~ U(-a, a) with std 0.1 / initial_speed, bias 0, and
    the log-scales set so that the effective weight has std
    initial_scale / sqrt(fan_in)."""
    module.weight_scale = nn.Parameter(torch.zeros(()))
    if module.bias is not None:
        module.bias_scale = nn.Parameter(torch.zeros(()))
    else:
        module.register_parameter("bias_scale", None)
    std = 0.1 / initial_speed
    bound = math.sqrt(3.0) * std
    weight = module.weight
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if module.bias is not None:
            module.bias.zero_()
        fan_in = weight.shape[1] * weight[0][0].numel()
        module.weight_scale.fill_(math.log(initial_scale) + math.log(fan_in**-0.5 / std))
        if module.bias_scale is not None:
            module.bias_scale.fill_(math.log(initial_scale))


class ScaledLinear(nn.Linear):
    """nn.Linear whose weight and bias are used as
    ``weight * weight_scale.exp()`` and ``bias * bias_scale.exp()``.

    Args (besides nn.Linear's):
      initial_scale: multiplies the initial effective weight and bias
        (e.g. 0.25 for the output layer of a residual branch).
      initial_speed: > 1 makes the layer learn faster at the start (the raw
        weights start smaller relative to Eve's step size), < 1 slower.
    """

    def __init__(self, *args, initial_scale: float = 1.0, initial_speed: float = 1.0,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _scaled_init(self, initial_scale, initial_speed)

    def get_weight(self) -> Tensor:
        return self.weight * self.weight_scale.exp()

    def get_bias(self) -> Tensor | None:
        if self.bias is None or self.bias_scale is None:
            return None
        return self.bias * self.bias_scale.exp()

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        return F.linear(x, self.get_weight(), self.get_bias())


class ScaledConv1d(nn.Conv1d):
    """nn.Conv1d with learned log-scales, as :class:`ScaledLinear`."""

    def __init__(self, *args, initial_scale: float = 1.0, initial_speed: float = 1.0,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert self.padding_mode == "zeros", self.padding_mode
        _scaled_init(self, initial_scale, initial_speed)

    def get_weight(self) -> Tensor:
        return self.weight * self.weight_scale.exp()

    def get_bias(self) -> Tensor | None:
        bias = self.bias
        bias_scale = self.bias_scale
        if bias is None or bias_scale is None:
            return None
        return bias * bias_scale.exp()

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, T) -> (N, out_channels, T')."""
        return F.conv1d(x, self.get_weight(), self.get_bias(), self.stride, self.padding,
                        self.dilation, self.groups)


class ScaledConv2d(nn.Conv2d):
    """nn.Conv2d with learned log-scales, as :class:`ScaledLinear`."""

    def __init__(self, *args, initial_scale: float = 1.0, initial_speed: float = 1.0,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert self.padding_mode == "zeros", self.padding_mode
        _scaled_init(self, initial_scale, initial_speed)

    def get_weight(self) -> Tensor:
        return self.weight * self.weight_scale.exp()

    def get_bias(self) -> Tensor | None:
        bias = self.bias
        bias_scale = self.bias_scale
        if bias is None or bias_scale is None:
            return None
        return bias * bias_scale.exp()

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W')."""
        return F.conv2d(x, self.get_weight(), self.get_bias(), self.stride, self.padding,
                        self.dilation, self.groups)


class ScaledEmbedding(nn.Module):
    """Embedding table whose output is multiplied by ``scale.exp()``.

    The table starts as N(0, std^2) with std = 0.1 / initial_speed and
    ``scale = log(1 / std)``, so the effective embeddings start with unit std;
    the row ``padding_idx`` starts at zero and gets no gradient.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 padding_idx: int | None = None, initial_speed: float = 1.0) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        assert padding_idx is None or 0 <= padding_idx < num_embeddings, padding_idx
        self.padding_idx = padding_idx
        self.scale = nn.Parameter(torch.zeros(()))
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        std = 0.1 / initial_speed
        with torch.no_grad():
            self.weight.normal_(0.0, std)
            self.scale.fill_(math.log(1.0 / std))
            if padding_idx is not None:
                self.weight[padding_idx].zero_()

    def forward(self, x: Tensor) -> Tensor:
        """(...) int64 ids -> (..., embedding_dim)."""
        return F.embedding(x, self.weight, self.padding_idx) * self.scale.exp()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"


class BasicNorm(nn.Module):
    """``x * (mean(x^2, channel_dim) + exp(eps))^-0.5``.

    A cheaper replacement for LayerNorm: no mean subtraction and no affine
    parameters.  The large, learned ``eps`` (stored as its log, initial 0.25)
    plays the role of the constant channel a pre-norm network would otherwise
    create to control its output scale.  With ``learn_eps=False`` eps is a
    buffer (still in the state dict, as in icefall).
    """

    def __init__(self, num_channels: int, channel_dim: int = -1, eps: float = 0.25,
                 learn_eps: bool = True) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        log_eps = torch.tensor(math.log(eps))
        if learn_eps:
            self.eps = nn.Parameter(log_eps)
        else:
            self.register_buffer("eps", log_eps)

    def forward(self, x: Tensor) -> Tensor:
        """Any shape with ``num_channels`` on ``channel_dim``; same shape out."""
        assert x.shape[self.channel_dim] == self.num_channels
        # Squared in float32 (a no-op for float32 x): a float16 square
        # overflows above 256, and rsqrt(inf) = 0 would zero the frame.
        x_float = x.to(torch.promote_types(x.dtype, torch.float32))
        mean_square = torch.mean(x_float * x_float, dim=self.channel_dim, keepdim=True)
        return x * torch.rsqrt(mean_square + self.eps.exp()).to(x.dtype)


class ActivationBalancerFunction(torch.autograd.Function):
    """Identity forward; backward ``g - |g| * (factor + scale_factor)`` per
    element, where per channel c (statistics over all other dims):

    * ``factor_c = max_factor * (relu(min_positive - p_c) / min_positive
      - relu(p_c - max_positive) / (1 - max_positive))``, p_c the proportion
      of x > 0 (a term is dropped when min_positive == 0 or
      max_positive == 1);
    * ``scale_factor = 2 * max_factor * ([m_c < min_abs] - [m_c > max_abs])
      * ([x > 0] - 0.5)``, m_c the mean of |x|.

    Subtracting ``|g| * factor`` acts like a gradient that raises (factor > 0)
    or lowers the values of the channel, whatever the sign of g.
    """

    @staticmethod
    def forward(ctx, x: Tensor, channel_dim: int, min_positive: float, max_positive: float,
                max_factor: float, min_abs: float, max_abs: float) -> Tensor:
        ctx.active = False
        if not x.requires_grad:
            return x
        if channel_dim < 0:
            channel_dim += x.ndim
        sum_dims = [d for d in range(x.ndim) if d != channel_dim]
        count = x.numel() // x.shape[channel_dim]
        x_positive = x > 0
        # Summing the bool tensor with a float dtype and taking the 1-norm
        # avoid materialising float copies of x.  Both sums run over every
        # frame of the batch: in float16 they overflow (65504) on ~8 s of
        # audio in the subsampling, so they are at least float32.
        stat_dtype = torch.promote_types(x.dtype, torch.float32)
        proportion_positive = torch.sum(x_positive, dim=sum_dims, keepdim=True,
                                        dtype=stat_dtype) / count
        factor = torch.zeros_like(proportion_positive)
        if min_positive != 0.0:
            factor = factor + (min_positive - proportion_positive).relu() * (
                max_factor / min_positive)
        if max_positive != 1.0:
            factor = factor + (proportion_positive - max_positive).relu() * (
                max_factor / (max_positive - 1.0))
        mean_abs = torch.linalg.vector_norm(x, ord=1, dim=sum_dims, keepdim=True,
                                            dtype=stat_dtype) / count
        below_threshold = mean_abs < min_abs
        above_threshold = mean_abs > max_abs
        # Which parts of the backward pass can change the gradient; parts
        # that cannot are skipped (no channel out of range is the common
        # case).  The tests cost a device sync, so on GPUs everything runs
        # instead (same gradients either way).
        if x.is_cuda:
            ctx.factor_active = ctx.abs_active = True
        else:
            ctx.factor_active = bool((factor != 0).any())
            ctx.abs_active = bool((below_threshold | above_threshold).any())
        ctx.active = ctx.factor_active or ctx.abs_active
        if ctx.active:
            # scale_factor = 2 * max_factor * (below - above) * ([x > 0] - 0.5)
            #              = where(x > 0, d, -d), d = max_factor * (below - above)
            direction = (below_threshold.to(stat_dtype) - above_threshold.to(stat_dtype)) \
                * max_factor
            ctx.save_for_backward(factor, x_positive if ctx.abs_active else None, direction)
        return x

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        if not ctx.active:
            return x_grad, None, None, None, None, None, None
        factor, x_positive, direction = ctx.saved_tensors
        total = factor.to(x_grad.dtype)
        if ctx.abs_active:
            direction = direction.to(x_grad.dtype)
            total = total + torch.where(x_positive, direction, -direction)
        return x_grad - x_grad.abs() * total, None, None, None, None, None, None


class ActivationBalancer(nn.Module):
    """Keeps per-channel statistics of an activation in range through its
    gradient only (see :class:`ActivationBalancerFunction`); the forward value
    is the input itself.

    Args:
      channel_dim: the channel axis (negative counts from the end).
      min_positive, max_positive: allowed range of the proportion of x > 0.
      max_factor: largest relative change made to the gradient.
      min_abs, max_abs: allowed range of the mean of |x|.

    ``prob`` (1.0, set by :func:`set_balancer_prob`) is the chance that a
    training forward pass is balanced at all; a balanced pass uses
    ``max_factor / prob``, so the expected change to the gradient is the same.
    1.0 is icefall's stateless2/4 behaviour; icefall's later recipes draw
    (their ``prob``) to save the statistics' cost, which is a large share of
    a training step of a small model on a CPU.
    """

    def __init__(self, channel_dim: int, min_positive: float = 0.05,
                 max_positive: float = 0.95, max_factor: float = 0.01,
                 min_abs: float = 0.2, max_abs: float = 100.0) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.min_positive = min_positive
        self.max_positive = max_positive
        self.max_factor = max_factor
        self.min_abs = min_abs
        self.max_abs = max_abs
        self.prob = 1.0

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return x
        return self._balance(x)

    @torch.jit.unused
    def _balance(self, x: Tensor) -> Tensor:
        if not x.requires_grad:
            return x
        # A host-side draw: no device sync, and seeded by the training seed.
        if self.prob < 1.0 and random.random() >= self.prob:
            return x
        return ActivationBalancerFunction.apply(x, self.channel_dim, self.min_positive,
                                                self.max_positive, self.max_factor / self.prob,
                                                self.min_abs, self.max_abs)


def set_balancer_prob(model: nn.Module, prob: float) -> None:
    """Sets the probability that each ActivationBalancer of `model` is applied
    in a training forward pass (see :class:`ActivationBalancer`)."""
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"the balancer probability must be in (0, 1], not {prob}")
    for module in model.modules():
        if isinstance(module, ActivationBalancer):
            module.prob = prob


class DoubleSwishFunction(torch.autograd.Function):
    """y = x * s with s = sigmoid(x - 1); dy/dx = y * (1 - s) + s, so only s
    and y are kept for the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        s = torch.sigmoid(x.detach() - 1.0)
        y = x.detach() * s
        ctx.save_for_backward(s, y)
        return y

    @staticmethod
    def backward(ctx, y_grad: Tensor) -> Tensor:
        s, y = ctx.saved_tensors
        return (y * (1.0 - s) + s) * y_grad


class DoubleSwish(nn.Module):
    """``x * sigmoid(x - 1)``, close to swish(swish(x))."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return x * torch.sigmoid(x - 1.0)
        return self._double_swish(x)

    @torch.jit.unused
    def _double_swish(self, x: Tensor) -> Tensor:
        if not x.requires_grad:
            return x * torch.sigmoid(x - 1.0)
        return DoubleSwishFunction.apply(x)


def _plain_weight(module: nn.Module) -> Tensor:
    return module.weight


def _plain_bias(module: nn.Module) -> Tensor | None:
    return module.bias


@torch.no_grad()
def fold_scales(model: nn.Module) -> nn.Module:
    """Folds every ScaledLinear/ScaledConv1d/ScaledConv2d's log-scales into its
    weight and bias, in place, and returns `model`.

    The layers then compute the same values with plain parameters, so an
    exported graph holds the effective weights as constants (dynamic int8
    quantisation only quantises a MatMul whose weight is a constant; with the
    scales, the weight is computed at run time as weight * exp(weight_scale)).
    Afterwards the scale parameters are 0 and unused: for export copies only,
    not for training.
    """
    for module in model.modules():
        if isinstance(module, ScaledLinear | ScaledConv1d | ScaledConv2d):
            weight, bias = module.get_weight(), module.get_bias()
            module.weight.copy_(weight)
            module.weight_scale.zero_()
            if bias is not None:
                module.bias.copy_(bias)
                module.bias_scale.zero_()
            module.get_weight = types.MethodType(_plain_weight, module)
            module.get_bias = types.MethodType(_plain_bias, module)
    return model
