"""Tests of the reworked Conformer encoder (pruned_transducer_stateless4/conformer.py)
beyond the icefall reference (tests/test_icefall_compat.py).

A tiny model keeps the whole file to a few seconds on 2 CPU cores.
"""

import math

import pytest
import torch
from torch import Tensor

from pruned_transducer_stateless4.conformer import Conformer, ConvolutionModule, encode
from tests.helpers import real_streaming

torch.set_num_threads(2)

NUM_FEATURES = 20


def make_tiny_model(causal: bool = True, **kwargs) -> Conformer:
    torch.manual_seed(0)
    config = dict(
        num_features=NUM_FEATURES,
        d_model=32,
        nhead=4,
        dim_feedforward=64,
        num_encoder_layers=2,
        dropout=0.0,
        cnn_module_kernel=7,
        causal=causal,
    )
    config.update(kwargs)
    model = Conformer(**config).eval()
    # Random weights everywhere (the initial log-scales and zero biases would
    # hide mistakes that only show with trained parameters).
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def make_batch(x_lens: list[int], seed: int = 1) -> tuple[Tensor, Tensor]:
    """Random features (N, max(x_lens), NUM_FEATURES); padding frames are 0."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(x_lens), max(x_lens), NUM_FEATURES, generator=generator)
    for i, length in enumerate(x_lens):
        x[i, length:] = 0.0
    return x, torch.tensor(x_lens, dtype=torch.int64)


@pytest.mark.parametrize("chunk_size, left_context", [(1, 2), (1, 4), (4, 8), (4, 16), (3, 6)])
def test_streaming_equals_simulated_streaming(chunk_size: int, left_context: int) -> None:
    model = make_tiny_model()
    # 97 feature frames -> 23 output frames: not a multiple of 4 or 3.
    x, x_lens = make_batch([97, 70])
    with torch.no_grad():
        expected, expected_lens = encode(model, x, x_lens, chunk_size, left_context)
        streamed = real_streaming(model, x, x_lens, chunk_size, left_context)
    assert expected_lens.tolist() == [23, 16]
    for i, length in enumerate(expected_lens.tolist()):
        max_diff = (streamed[i, :length] - expected[i, :length]).abs().max().item()
        assert max_diff < 1e-4, (chunk_size, left_context, i, max_diff)


def test_streaming_differs_from_full_attention() -> None:
    """Sanity check of the test above: the chunk mask does change outputs."""
    model = make_tiny_model()
    x, x_lens = make_batch([97])
    with torch.no_grad():
        full, _ = model(x, x_lens)
        chunked, _ = encode(model, x, x_lens, chunk_size=4, left_context=8)
    assert (full - chunked).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [True, False])
def test_convolution_module_causality(causal: bool) -> None:
    torch.manual_seed(0)
    kernel_size, num_frames, t = 7, 20, 10
    conv = ConvolutionModule(channels=16, kernel_size=kernel_size, causal=causal).eval()
    with torch.no_grad():
        for parameter in conv.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    x = torch.randn(1, num_frames, 16)
    pad_mask = torch.zeros(1, num_frames, dtype=torch.bool)
    perturbed = x.clone()
    perturbed[:, t] += 1.0
    with torch.no_grad():
        changed = (conv(x, src_key_padding_mask=pad_mask)[0]
                   - conv(perturbed, src_key_padding_mask=pad_mask)[0]).abs().amax(dim=2)[0]
    if causal:
        assert changed[:t].max() == 0.0
        assert changed[t : t + kernel_size].min() > 0.0
    else:
        half = (kernel_size - 1) // 2
        assert changed[t - half : t].min() > 0.0
        assert changed[: t - half].max() == 0.0


def test_chunk_mask_hides_the_future() -> None:
    model = make_tiny_model()
    chunk_size = 4
    x, x_lens = make_batch([120])
    perturbed_frame = 90
    perturbed = x.clone()
    perturbed[:, perturbed_frame] += 3.0
    with torch.no_grad():
        out, _ = encode(model, x, x_lens, chunk_size=chunk_size, left_context=-1)
        out_perturbed, _ = encode(model, perturbed, x_lens, chunk_size=chunk_size,
                                  left_context=-1)
    changed = (out - out_perturbed).abs().amax(dim=2)[0]
    # Subsampled frame j sees feature frames 4j - 1 .. 4j + 7.
    first_affected = math.ceil((perturbed_frame - 7) / 4)
    first_affected_chunk_start = first_affected // chunk_size * chunk_size
    assert changed[:first_affected_chunk_start].max() == 0.0
    assert changed[first_affected:].min() > 0.0
    with torch.no_grad():
        full, _ = model(x, x_lens)
        full_perturbed, _ = model(perturbed, x_lens)
    # With full attention the perturbation reaches every frame.
    assert (full - full_perturbed).abs().amax(dim=2)[0, :first_affected_chunk_start].min() > 0


def test_dynamic_chunk_training_draws() -> None:
    """icefall's draw: c = randint(1, T); full attention if c > 0.75 T, else
    chunks of c % short_chunk_size + 1."""
    model = make_tiny_model(dynamic_chunk_training=True, short_chunk_size=25, num_left_chunks=4)
    torch.manual_seed(123)
    draws = [model.draw_chunk_size(200) for _ in range(400)]
    chunked = [c for c in draws if c < 200]
    num_full = draws.count(200)
    assert 60 < num_full < 140  # about a quarter of the batches
    assert len(set(chunked)) > 10 and all(1 <= c <= 25 for c in chunked)
    torch.manual_seed(123)
    expected = []
    for _ in range(400):
        c = int(torch.randint(1, 200, (1,)).item())
        expected.append(200 if c > 150 else c % 25 + 1)
    assert draws == expected


def test_dynamic_chunk_training_forward_uses_drawn_chunks() -> None:
    """In train mode (dropout 0, warm, no layer drop) forward equals the
    simulated streaming with the drawn chunk and num_left_chunks chunks of
    left context."""
    model = make_tiny_model(dynamic_chunk_training=True, num_left_chunks=2, layer_dropout=0.0)
    x, x_lens = make_batch([97, 70])
    num_frames = 23
    seen_full = seen_chunked = False
    for seed in range(12):
        torch.manual_seed(seed)
        chunk_size = model.draw_chunk_size(num_frames)
        model.train()
        torch.manual_seed(seed)
        with torch.no_grad():
            trained, _ = model(x, x_lens)
        model.eval()
        with torch.no_grad():
            if chunk_size == num_frames:
                expected, _ = model(x, x_lens)
            else:
                expected, _ = encode(model, x, x_lens, chunk_size, 2 * chunk_size)
        torch.testing.assert_close(trained, expected, rtol=0, atol=1e-6)
        seen_full |= chunk_size == num_frames
        seen_chunked |= chunk_size < num_frames
    assert seen_full and seen_chunked


def test_warmup_bypasses_layers_in_training_only() -> None:
    """warmup < 0.9: each layer's output is mixed with its input
    (alpha = 0.1 + warmup); eval mode ignores warmup."""
    model = make_tiny_model(layer_dropout=0.0)
    x, x_lens = make_batch([60])
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x, x_lens, warmup=0.0)[0], model(x, x_lens)[0])
        model.train()
        warm, _ = model(x, x_lens, warmup=1.0)
        cold, _ = model(x, x_lens, warmup=0.2)
        # By hand: the same layers with alpha = 0.3.
        embed, pos_emb = model.encoder_pos(model.encoder_embed(x))
        mask = torch.zeros(1, embed.size(1), dtype=torch.bool)
        expected = embed
        for layer in model.encoder.layers:
            out = layer(expected, pos_emb, None, mask, warmup=1.0)
            expected = 0.3 * out + 0.7 * expected
    torch.testing.assert_close(warm, model.eval()(x, x_lens)[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(cold, expected, rtol=0, atol=1e-6)


def test_stack_unstack_states_round_trip() -> None:
    model = make_tiny_model()
    left_context = 5
    per_stream = [[torch.randn_like(s) for s in model.get_init_state(left_context)]
                  for _ in range(3)]
    assert per_stream[0][0].shape == (2, left_context, 32)
    assert per_stream[0][1].shape == (2, 6, 32)
    stacked = Conformer.stack_states(per_stream)
    assert stacked[0].shape == (2, left_context, 3, 32)
    assert stacked[1].shape == (2, 6, 3, 32)
    unstacked = Conformer.unstack_states(stacked)
    assert len(unstacked) == 3
    for original, restored in zip(per_stream, unstacked):
        for a, b in zip(original, restored):
            assert torch.equal(a, b)


def test_batched_streams_match_single_streams() -> None:
    """Stacking streams in different positions gives each the same outputs."""
    model = make_tiny_model()
    chunk_size, left_context = 2, 4
    window = chunk_size * 4 + model.pad_length
    generator = torch.Generator().manual_seed(5)
    chunks = torch.randn(2, window, NUM_FEATURES, generator=generator)
    full_lens = torch.full((1,), window, dtype=torch.int64)
    with torch.no_grad():
        singles, single_states = [], []
        for i in range(2):
            # Give the streams different histories first.
            states = Conformer.stack_states([model.get_init_state(left_context)])
            processed = torch.zeros(1, dtype=torch.int64)
            for _ in range(i + 1):
                _, _, states = model.streaming_forward(
                    chunks[i: i + 1], full_lens, states, processed, left_context)
                processed = processed + chunk_size
            singles.append((states, processed))
        batched_states = Conformer.stack_states(
            [Conformer.unstack_states(states)[0] for states, _ in singles])
        batched_processed = torch.cat([processed for _, processed in singles])
        next_chunk = chunks.flip(0)
        batched_out, _, new_states = model.streaming_forward(
            next_chunk, full_lens.repeat(2), batched_states, batched_processed, left_context)
        for i, (states, processed) in enumerate(singles):
            out, _, single_state = model.streaming_forward(
                next_chunk[i: i + 1], full_lens, states, processed, left_context)
            single_states.append(single_state)
            torch.testing.assert_close(batched_out[i: i + 1], out, rtol=0, atol=1e-5)
        for a, b in zip(Conformer.unstack_states(new_states), single_states):
            torch.testing.assert_close(a[0], b[0][:, :, 0], rtol=0, atol=1e-5)
            torch.testing.assert_close(a[1], b[1][:, :, 0], rtol=0, atol=1e-5)


def test_torchscript_matches_eager() -> None:
    model = make_tiny_model()
    scripted = torch.jit.script(model)
    x, x_lens = make_batch([97, 70])
    chunk_size, left_context = 4, 8
    with torch.no_grad():
        eager_out, eager_lens = model(x, x_lens)
        script_out, script_lens = scripted(x, x_lens)
        torch.testing.assert_close(script_out, eager_out, rtol=0, atol=1e-5)
        assert torch.equal(script_lens, eager_lens)
        eager_out = encode(model, x, x_lens, chunk_size, left_context)[0]
        script_out = scripted.streaming_forward(x, x_lens, None, None, left_context, 0,
                                                chunk_size, True)[0]
        torch.testing.assert_close(script_out, eager_out, rtol=0, atol=1e-5)

        window = chunk_size * 4 + model.pad_length
        chunk = x[:, :window]
        chunk_lens = torch.full((2,), window, dtype=torch.int64)
        processed_lens = torch.tensor([0, 3], dtype=torch.int64)
        states = Conformer.stack_states(
            [[torch.randn_like(s) for s in model.get_init_state(left_context)]] * 2)
        eager = model.streaming_forward(chunk, chunk_lens, states, processed_lens, left_context)
        script_states = scripted.get_init_state(left_context, torch.device("cpu"))
        assert [s.shape for s in script_states] == [s.shape[:2] + s.shape[3:] for s in states]
        script = scripted.streaming_forward(chunk, chunk_lens, states, processed_lens, left_context)
        torch.testing.assert_close(script[0], eager[0], rtol=0, atol=1e-5)
        assert torch.equal(script[1], eager[1])
        for a, b in zip(script[2], eager[2]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


class _StreamingEncoderWrapper(torch.nn.Module):
    """What an ONNX exporter wraps: fixed chunk, states as separate tensors."""

    def __init__(self, encoder: Conformer, chunk_size: int, left_context: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.left_context = left_context
        self.window = chunk_size * 4 + encoder.pad_length

    def forward(
        self, x: Tensor, attn_cache: Tensor, cnn_cache: Tensor, processed_lens: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        x_lens = torch.full((x.size(0),), self.window, dtype=torch.int64)
        encoder_out, _, states = self.encoder.streaming_forward(
            x, x_lens, [attn_cache, cnn_cache], processed_lens, self.left_context
        )
        return encoder_out, states[0], states[1]


def test_onnx_export_of_streaming_forward(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = make_tiny_model()
    chunk_size, left_context = 4, 8
    wrapper = _StreamingEncoderWrapper(model, chunk_size, left_context).eval()
    attn_cache, cnn_cache = Conformer.stack_states([model.get_init_state(left_context)] * 2)
    inputs = (
        torch.randn(2, wrapper.window, NUM_FEATURES),
        torch.randn_like(attn_cache),
        torch.randn_like(cnn_cache),
        torch.tensor([0, 5], dtype=torch.int64),
    )
    filename = str(tmp_path / "encoder.onnx")
    input_names = ["x", "cached_attn", "cached_conv", "processed_lens"]
    output_names = ["encoder_out", "new_cached_attn", "new_cached_conv"]
    torch.onnx.export(
        wrapper,
        inputs,
        filename,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes={
            "x": {0: "N"},
            "cached_attn": {2: "N"},
            "cached_conv": {2: "N"},
            "processed_lens": {0: "N"},
            "encoder_out": {0: "N"},
            "new_cached_attn": {2: "N"},
            "new_cached_conv": {2: "N"},
        },
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(filename, providers=["CPUExecutionProvider"])
    # A different batch size checks the dynamic batch axis.
    inputs = tuple(t[:1] if i != 1 and i != 2 else t[:, :, :1] for i, t in enumerate(inputs))
    onnx_outputs = session.run(None, dict(zip(input_names, (t.numpy() for t in inputs))))
    with torch.no_grad():
        torch_outputs = wrapper(*inputs)
    for onnx_out, torch_out in zip(onnx_outputs, torch_outputs):
        torch.testing.assert_close(torch.from_numpy(onnx_out), torch_out, rtol=0, atol=1e-4)


class _ChunkedEncoderWrapper(torch.nn.Module):
    """Whole-utterance encoder with a fixed simulated-streaming chunk size."""

    def __init__(self, encoder: Conformer, chunk_size: int, left_context: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.chunk_size = chunk_size
        self.left_context = left_context

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        return encode(self.encoder, x, x_lens, self.chunk_size, self.left_context)


def test_onnx_export_of_forward_has_dynamic_length(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = make_tiny_model()
    # eval() on the wrapper: the exporter restores the wrapper's mode
    # recursively afterwards, which would leave the encoder in train mode.
    wrapper = _ChunkedEncoderWrapper(model, chunk_size=4, left_context=8).eval()
    x, x_lens = make_batch([60, 45])
    filename = str(tmp_path / "encoder.onnx")
    torch.onnx.export(
        wrapper,
        (x, x_lens),
        filename,
        input_names=["x", "x_lens"],
        output_names=["encoder_out", "encoder_out_lens"],
        dynamic_axes={
            "x": {0: "N", 1: "T"},
            "x_lens": {0: "N"},
            "encoder_out": {0: "N", 1: "T"},
            "encoder_out_lens": {0: "N"},
        },
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(filename, providers=["CPUExecutionProvider"])
    x, x_lens = make_batch([97, 80, 33], seed=2)
    encoder_out, encoder_out_lens = session.run(None, {"x": x.numpy(), "x_lens": x_lens.numpy()})
    with torch.no_grad():
        expected, expected_lens = wrapper(x, x_lens)
    assert encoder_out_lens.tolist() == expected_lens.tolist()
    torch.testing.assert_close(torch.from_numpy(encoder_out), expected, rtol=0, atol=1e-4)


def _synthetic_utterance(seed: int, num_frames: int, num_features: int) -> Tensor:
    """Log-mel-like features of one 'utterance': a sequence of random
    'phones' (spectral shapes held for 5-15 frames) with a per-utterance
    spectral envelope, plus noise.  Zero mean: real fbank also shares a large
    common spectrum between utterances, which dominates a cosine similarity
    of utterance means (about 0.999 on real speech, before any encoder)."""
    generator = torch.Generator().manual_seed(seed)
    envelope = torch.randn(num_features, generator=generator).cumsum(0) * 0.5
    frames = []
    while len(frames) < num_frames:
        shape = torch.randn(num_features, generator=generator).cumsum(0) * 0.3
        duration = int(torch.randint(5, 16, (1,), generator=generator))
        frames.extend([shape + envelope] * duration)
    x = torch.stack(frames[:num_frames])
    x = x + 0.3 * torch.randn(x.shape, generator=generator)
    return x - x.mean()


def _max_cosine_similarity_of_means(x: Tensor) -> float:
    """Largest cosine similarity between the time averages of two sequences
    of a batch (N, T, C)."""
    means = torch.nn.functional.normalize(x.mean(dim=1), dim=-1)
    similarity = means @ means.t()
    return similarity[~torch.eye(x.size(0), dtype=torch.bool)].max().item()


def test_encoder_outputs_differ_between_utterances() -> None:
    """Guard against a collapsed encoder at init (run.sh's size)."""
    torch.manual_seed(0)
    model = Conformer(
        num_features=80,
        d_model=144,
        nhead=4,
        dim_feedforward=576,
        num_encoder_layers=4,
        cnn_module_kernel=31,
        causal=True,
    ).eval()
    x = torch.stack([_synthetic_utterance(seed, 300, 80) for seed in range(4)])
    x_lens = torch.full((4,), 300, dtype=torch.int64)
    for offset in [-5.0, 0.0]:
        with torch.no_grad():
            encoder_out, _ = encode(model, x + offset, x_lens, chunk_size=16, left_context=64)
        # (icefall's initialisation does pull utterance means closer, 0.68 ->
        # 0.85 here, which the earlier pre-LayerNorm encoder was tuned
        # against; what matters is that they stay clearly apart.)
        output_similarity = _max_cosine_similarity_of_means(encoder_out)
        if offset == 0.0:
            # Utterances that differ give clearly different outputs.
            assert output_similarity < 0.95, output_similarity
    # Frames within one utterance differ too (no constant output).
    assert offset == 0.0
    frames = torch.nn.functional.normalize(encoder_out[0], dim=-1)
    assert (frames @ frames.t()).mean() < 0.9
