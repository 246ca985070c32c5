"""The model against icefall's own code, and the scaling modules against
slow references of their definitions.

tests/data/icefall_reference/ holds outputs of icefall's
pruned_transducer_stateless2 modules (see its README): a tiny causal
reworked-Conformer transducer with random weights, saved as icefall's
export.py saves `pretrained.pt`, and what icefall computed from it.
"""

import math
import random
from pathlib import Path

import pytest
import torch

from pruned_transducer_stateless4.conformer import Conformer, encode
from pruned_transducer_stateless4.model_config import get_transducer_model
from pruned_transducer_stateless4.scaling import (
    ActivationBalancer,
    BasicNorm,
    DoubleSwish,
    ScaledConv1d,
    ScaledConv2d,
    ScaledEmbedding,
    ScaledLinear,
    fold_scales,
    set_balancer_prob,
)
from tests.helpers import real_streaming

REFERENCE_DIR = Path(__file__).parent / "data" / "icefall_reference"
TOLERANCE = 1e-4


def reference_params() -> dict:
    cfg = torch.load(REFERENCE_DIR / "inputs.pt", map_location="cpu")["cfg"]
    return dict(
        feature_dim=80, subsampling_factor=4, encoder_dim=cfg["encoder_dim"],
        nhead=cfg["nhead"], dim_feedforward=cfg["dim_feedforward"],
        num_encoder_layers=cfg["num_encoder_layers"],
        cnn_module_kernel=cfg["cnn_module_kernel"], causal_convolution=True,
        vocab_size=cfg["vocab_size"], decoder_dim=cfg["decoder_dim"],
        joiner_dim=cfg["joiner_dim"], blank_id=cfg["blank_id"],
        context_size=cfg["context_size"],
    )


@pytest.fixture(scope="module")
def reference():
    state_dict = torch.load(REFERENCE_DIR / "icefall_pretrained.pt", map_location="cpu")
    assert set(state_dict) == {"model"}, "icefall's pretrained.pt holds only the model"
    model = get_transducer_model(reference_params())
    model.load_state_dict(state_dict["model"], strict=True)
    model.eval()
    inputs = torch.load(REFERENCE_DIR / "inputs.pt", map_location="cpu")
    outputs = torch.load(REFERENCE_DIR / "outputs.pt", map_location="cpu")
    return model, inputs, outputs


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def test_icefall_state_dict_loads_strictly_and_matches_names(reference):
    model, _, _ = reference
    icefall = torch.load(REFERENCE_DIR / "icefall_pretrained.pt", map_location="cpu")["model"]
    ours = model.state_dict()
    assert list(ours) == list(icefall)
    assert all(ours[name].shape == icefall[name].shape for name in icefall)
    # 240,124 parameters; the subsampling's fixed BasicNorm eps is a buffer.
    assert sum(p.numel() for p in model.parameters()) == 240_124


@torch.no_grad()
def test_folded_scales_compute_icefall_outputs_with_plain_weights(reference):
    """export.py folds the log-scales into the weights (so int8 can quantise
    every MatMul): the folded copy still gives icefall's encoder and joiner
    outputs, its scales are 0, and the original model is untouched."""
    import copy

    model, inputs, outputs = reference
    before = {name: p.clone() for name, p in model.state_dict().items()}
    folded = fold_scales(copy.deepcopy(model))
    encoder_out, _ = folded.encoder(inputs["x"], inputs["x_lens"])
    assert max_diff(encoder_out, outputs["enc_full"]) < TOLERANCE
    joint = folded.joiner(folded.joiner.encoder_proj(encoder_out[:, :4]).unsqueeze(2),
                          folded.joiner.decoder_proj(
                              folded.decoder(inputs["y"], need_pad=False)[:2].unsqueeze(0)
                              .expand(2, -1, -1, -1)[:, :, :1]).squeeze(2).unsqueeze(1),
                          project_input=False)
    assert max_diff(joint, outputs["joint"]) < TOLERANCE
    scales = [p for name, p in folded.named_parameters() if name.endswith(("weight_scale",
                                                                            "bias_scale"))]
    assert scales and all(float(p.abs().max()) == 0.0 for p in scales)
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())


@torch.no_grad()
def test_encoder_full_attention_matches_icefall(reference):
    model, inputs, outputs = reference
    encoder_out, lens = model.encoder(inputs["x"], inputs["x_lens"])
    assert lens.tolist() == outputs["lens"].tolist()
    assert max_diff(encoder_out, outputs["enc_full"]) < TOLERANCE


@torch.no_grad()
def test_encoder_simulated_streaming_matches_icefall(reference):
    model, inputs, outputs = reference
    encoder_out, lens, states = model.encoder.streaming_forward(
        inputs["x"], inputs["x_lens"], chunk_size=16, left_context=64, simulate_streaming=True)
    assert states == [] and lens.tolist() == outputs["lens"].tolist()
    assert max_diff(encoder_out, outputs["enc_sim"]) < TOLERANCE
    same, _ = encode(model.encoder, inputs["x"], inputs["x_lens"], chunk_size=16, left_context=64)
    assert torch.equal(same, encoder_out)


@torch.no_grad()
def test_decoder_and_joiner_match_icefall(reference):
    model, inputs, outputs = reference
    decoder_out = model.decoder(inputs["y"], need_pad=False)
    assert max_diff(decoder_out, outputs["dec_out"]) < TOLERANCE
    am = model.joiner.encoder_proj(outputs["enc_full"][:, :4])
    lm = model.joiner.decoder_proj(
        outputs["dec_out"][:2].unsqueeze(0).expand(2, -1, -1, -1)[:, :, :1])
    joint = model.joiner(am.unsqueeze(2), lm.squeeze(2).unsqueeze(1), project_input=False)
    assert max_diff(joint, outputs["joint"]) < TOLERANCE
    # project_input=True is the same computation.
    joint2 = model.joiner(outputs["enc_full"][:, :4].unsqueeze(2),
                          outputs["dec_out"][:2].unsqueeze(0)
                          .expand(2, -1, -1, -1)[:, :, :1].squeeze(2).unsqueeze(1))
    assert max_diff(joint2, outputs["joint"]) < TOLERANCE


@torch.no_grad()
def test_real_streaming_matches_simulated_streaming(reference):
    model, inputs, outputs = reference
    x, x_lens = inputs["x"].clone(), inputs["x_lens"]
    # The batch padding of the second utterance is not zero in the inputs;
    # a real stream ends where its audio ends.
    for i, length in enumerate(x_lens.tolist()):
        x[i, length:] = 0.0
    streamed = real_streaming(model.encoder, x, x_lens, chunk_size=16, left_context=64)
    for i, length in enumerate(outputs["lens"].tolist()):
        assert max_diff(streamed[i, :length], outputs["enc_sim"][i, :length]) < TOLERANCE


@torch.no_grad()
def test_real_streaming_with_right_context_keeps_chunk_outputs(reference):
    """right_context look-ahead frames are attended to but not output."""
    model, inputs, _ = reference
    encoder = model.encoder
    right = 2
    window = 16 * 4 + Conformer.streaming_pad_length(right)
    x = inputs["x"][:1, :window]
    states = Conformer.stack_states([encoder.get_init_state(32)])
    out, lens, new_states = encoder.streaming_forward(
        x, torch.tensor([window]), states, torch.zeros(1, dtype=torch.int64),
        left_context=32, right_context=right, chunk_size=16)
    assert out.shape == (1, 16, encoder.d_model) and lens.tolist() == [16]
    assert new_states[0].shape == states[0].shape and new_states[1].shape == states[1].shape


def test_own_checkpoint_round_trips(tmp_path):
    params = reference_params()
    torch.manual_seed(1)
    model = get_transducer_model(params).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "pretrained.pt")
    torch.manual_seed(2)
    other = get_transducer_model(params).eval()
    other.load_state_dict(torch.load(tmp_path / "pretrained.pt")["model"], strict=True)
    x = torch.randn(1, 100, 80)
    with torch.no_grad():
        assert torch.equal(model.encoder(x, torch.tensor([100]))[0],
                           other.encoder(x, torch.tensor([100]))[0])


def test_optional_ctc_head_is_the_only_extra_parameter():
    params = reference_params()
    plain = set(get_transducer_model(params).state_dict())
    with_ctc = set(get_transducer_model({**params, "use_ctc": True}).state_dict())
    assert with_ctc - plain == {"ctc_output.weight", "ctc_output.bias",
                                "ctc_output.weight_scale", "ctc_output.bias_scale"}


def test_icefall_default_size():
    """icefall's LibriSpeech configuration (the scripts' defaults)."""
    params = dict(feature_dim=80, subsampling_factor=4, encoder_dim=512, nhead=8,
                  dim_feedforward=2048, num_encoder_layers=12, cnn_module_kernel=31,
                  causal_convolution=False, vocab_size=500, decoder_dim=512, joiner_dim=512,
                  blank_id=0, context_size=2)
    num_params = sum(p.numel() for p in get_transducer_model(params).parameters())
    assert 70e6 < num_params < 80e6, num_params


# ------------------------------------------------ scaling modules ----
def test_scaled_layers_use_exp_of_their_scales():
    torch.manual_seed(0)
    linear = ScaledLinear(6, 4, initial_scale=0.25)
    with torch.no_grad():
        linear.weight_scale.fill_(0.3)
        linear.bias.normal_()
        linear.bias_scale.fill_(-0.2)
    x = torch.randn(3, 6)
    expected = x @ (linear.weight * math.exp(0.3)).T + linear.bias * math.exp(-0.2)
    assert torch.allclose(linear(x), expected, atol=1e-6)

    conv = ScaledConv1d(4, 4, 3, groups=4, padding=1)
    x = torch.randn(2, 4, 9)
    expected = torch.nn.functional.conv1d(x, conv.weight * conv.weight_scale.exp(),
                                          conv.bias * conv.bias_scale.exp(), padding=1,
                                          groups=4)
    assert torch.allclose(conv(x), expected, atol=1e-6)

    conv2 = ScaledConv2d(1, 3, 3, stride=2)
    x = torch.randn(2, 1, 9, 9)
    expected = torch.nn.functional.conv2d(x, conv2.weight * conv2.weight_scale.exp(),
                                          conv2.bias * conv2.bias_scale.exp(), stride=2)
    assert torch.allclose(conv2(x), expected, atol=1e-6)

    embedding = ScaledEmbedding(7, 5, padding_idx=0)
    ids = torch.tensor([[0, 3, 6]])
    assert torch.equal(embedding(ids)[0, 0], torch.zeros(5))
    assert torch.allclose(embedding(ids), embedding.weight[ids] * embedding.scale.exp())


def test_scaled_linear_initialisation_is_icefalls():
    """Raw weights with std 0.1, the 1/sqrt(fan_in) in weight_scale."""
    torch.manual_seed(0)
    linear = ScaledLinear(400, 300, initial_scale=0.25)
    assert abs(float(linear.weight.detach().std()) - 0.1) < 0.005
    assert math.isclose(float(linear.weight_scale.detach()), math.log(0.25 * 400**-0.5 / 0.1),
                        rel_tol=1e-5)
    assert math.isclose(float(linear.bias_scale.detach()), math.log(0.25), rel_tol=1e-5)
    assert float(linear.bias.detach().abs().max()) == 0.0


def test_basic_norm_matches_its_definition():
    torch.manual_seed(0)
    norm = BasicNorm(8, channel_dim=1)
    with torch.no_grad():
        norm.eps.fill_(math.log(0.7))
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    expected = torch.empty_like(x)
    for n in range(3):
        for t in range(5):
            column = x[n, :, t]
            expected[n, :, t] = column / math.sqrt(float((column**2).sum()) / 8 + 0.7)
    assert torch.allclose(norm.double()(x), expected, atol=1e-12)
    fixed = BasicNorm(8, learn_eps=False)
    assert "eps" in dict(fixed.named_buffers()) and not list(fixed.parameters())


def test_double_swish_value_and_gradient():
    x = torch.randn(40, 7, dtype=torch.float64) * 3
    x.requires_grad_(True)
    y = DoubleSwish()(x)
    assert torch.allclose(y, x * torch.sigmoid(x - 1.0))
    assert torch.autograd.gradcheck(DoubleSwish(), (x,))
    grad = torch.randn_like(x)
    (custom,) = torch.autograd.grad(y, x, grad)
    plain_x = x.detach().clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(plain_x * torch.sigmoid(plain_x - 1.0), plain_x, grad)
    assert torch.allclose(custom, plain, atol=1e-12)


def slow_balancer_gradient(x: torch.Tensor, grad: torch.Tensor, channel_dim: int,
                           min_positive: float, max_positive: float, max_factor: float,
                           min_abs: float, max_abs: float) -> torch.Tensor:
    """The balancer's gradient written per channel and per element."""
    xc = x.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)
    gc = grad.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)
    out = torch.empty_like(gc)
    for c in range(xc.size(0)):
        values = xc[c].tolist()
        p = sum(1 for v in values if v > 0) / len(values)
        mean_abs = sum(abs(v) for v in values) / len(values)
        factor = 0.0
        if min_positive != 0.0:
            factor += max(min_positive - p, 0.0) * max_factor / min_positive
        if max_positive != 1.0:
            factor += max(p - max_positive, 0.0) * max_factor / (max_positive - 1.0)
        direction = (1.0 if mean_abs < min_abs else 0.0) - (1.0 if mean_abs > max_abs else 0.0)
        for i, (v, g) in enumerate(zip(values, gc[c].tolist())):
            scale = direction * ((1.0 if v > 0 else 0.0) - 0.5) * 2 * max_factor
            out[c, i] = g - abs(g) * (factor + scale)
    shape = list(x.movedim(channel_dim, 0).shape)
    return out.reshape(shape).movedim(0, channel_dim)


@pytest.mark.parametrize("channel_dim", [1, -1])
def test_activation_balancer_keeps_forward_and_alters_only_gradients(channel_dim):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 10, dtype=torch.float64)
    # Channels out of range in every way: mostly negative, mostly positive,
    # tiny, huge; the rest in range.
    x.movedim(channel_dim, 0)[0] -= 3.0
    x.movedim(channel_dim, 0)[1] += 3.0
    x.movedim(channel_dim, 0)[2] *= 0.01
    x.movedim(channel_dim, 0)[3] *= 500.0
    options = dict(min_positive=0.05, max_positive=0.95, max_factor=0.04, min_abs=0.2,
                   max_abs=100.0)
    balancer = ActivationBalancer(channel_dim, **options)
    x.requires_grad_(True)
    y = balancer(x)
    assert torch.equal(y, x)
    grad = torch.randn_like(x)
    (x_grad,) = torch.autograd.grad(y, x, grad)
    expected = slow_balancer_gradient(x.detach(), grad, channel_dim, **options)
    assert torch.allclose(x_grad, expected, atol=1e-12)
    assert not torch.allclose(x_grad, grad)

    # Only the sign statistics out of range (the magnitudes in range).
    v = torch.randn(3, 6, 10, dtype=torch.float64)
    v.movedim(channel_dim, 0)[1] += 3.0
    v.requires_grad_(True)
    (v_grad,) = torch.autograd.grad(balancer(v), v, grad)
    expected = slow_balancer_gradient(v.detach(), grad, channel_dim, **options)
    assert torch.allclose(v_grad, expected, atol=1e-12) and not torch.allclose(v_grad, grad)

    # All channels in range: the gradient passes unchanged.
    z = (torch.randn(3, 6, 10, dtype=torch.float64)).requires_grad_(True)
    (z_grad,) = torch.autograd.grad(balancer(z), z, grad)
    assert torch.equal(z_grad, grad)
    assert torch.allclose(slow_balancer_gradient(z.detach(), grad, channel_dim, **options),
                          grad, atol=1e-12)

    # No graph, no work: eval-mode tensors come back as they are.
    w = torch.randn(2, 6, 10)
    assert balancer(w) is w


def test_balancer_probability_keeps_the_expected_gradient():
    """With set_balancer_prob(p), a balancer acts in about p of the training
    passes, each time with max_factor / p, and passes the gradient unchanged
    otherwise; p = 1 is the plain balancer."""
    torch.manual_seed(0)
    x = torch.randn(3, 6, 10, dtype=torch.float64)
    x[:, 0] -= 3.0  # channel 0 mostly negative
    x[:, 2] *= 0.01  # channel 2 tiny
    grad = torch.randn_like(x)
    options = dict(min_positive=0.05, max_positive=0.95, max_factor=0.04, min_abs=0.2,
                   max_abs=100.0)
    model = torch.nn.Sequential(ActivationBalancer(1, **options))
    with pytest.raises(ValueError, match="probability"):
        set_balancer_prob(model, 0.0)
    set_balancer_prob(model, 0.25)
    balanced = slow_balancer_gradient(x, grad, 1, **{**options, "max_factor": 0.16})
    random.seed(1)
    applied = 0
    for _ in range(400):
        x_in = x.clone().requires_grad_(True)
        (x_grad,) = torch.autograd.grad(model(x_in), x_in, grad)
        if torch.equal(x_grad, grad):
            continue
        assert torch.allclose(x_grad, balanced, atol=1e-12)
        applied += 1
    assert 70 <= applied <= 130  # 400 * 0.25 = 100; binomial sd 8.7

    set_balancer_prob(model, 1.0)
    x_in = x.clone().requires_grad_(True)
    (x_grad,) = torch.autograd.grad(model(x_in), x_in, grad)
    assert torch.allclose(x_grad, slow_balancer_gradient(x, grad, 1, **options), atol=1e-12)
