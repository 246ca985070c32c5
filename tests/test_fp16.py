"""Float16 training, what `--use-fp16 true` does on a GPU, run on the CPU.

`torch.autocast("cpu", dtype=torch.float16)` with `torch.amp.GradScaler("cpu")`
meets float16's range (largest value 65504) as a CUDA run does; train.py's
`--amp-dtype float16` selects it on a CPU.  The batches are real speech:
sentences spoken by espeak-ng, with the recipe's fbank (shared/features.py).

Float16 on this CPU is slow (a float16 matmul costs ~6x a float32 one), so
the steps here are few and the icefall-size step uses a short batch.
"""

import math
import re
import shlex
import tempfile
from pathlib import Path

import pytest
import sentencepiece as spm
import soundfile as sf
import torch
from torch import Tensor

from pruned_transducer_stateless4 import model_config, training
from pruned_transducer_stateless4.conformer import make_pad_mask, subsampled_lengths
from pruned_transducer_stateless4.scaling import ActivationBalancerFunction, BasicNorm
from shared.features import LOG_EPS, make_fbank_extractor
from shared.nonfinite_guard import NonFiniteGuard
from shared.optim import Eden, Eve
from shared.utils import AttributeDict, RecipeError
from tests.helpers import DEMO_MODEL_DIR, PROJECT_DIR, import_script, synthesize, training_params

torch.set_num_threads(2)

CPU = torch.device("cpu")
BPE_MODEL = DEMO_MODEL_DIR / "bpe.model"  # 256 tokens, as run.sh's
# Eight sentences of about 4.5 s each: 36 s of speech in one batch.
SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the quiet river bank today",
    "she sells sea shells by the sea shore while the children play in the sand",
    "a journey of a thousand miles begins with a single step taken in the morning",
    "all that glitters is not gold and not all those who wander are lost forever",
    "the rain in spain stays mainly in the plain according to the old music teacher",
    "early to bed and early to rise makes a man healthy wealthy and very wise indeed",
    "every cloud has a silver lining if you look at it from the right side of the sky",
    "practice makes perfect so keep on trying even when the work seems hard and slow",
]


@pytest.fixture(scope="module")
def speech() -> list[tuple[str, Tensor]]:
    """(text, fbank (T, 80)) of each sentence, spoken by espeak-ng."""
    extractor = make_fbank_extractor()
    utterances = []
    with tempfile.TemporaryDirectory() as work_dir:
        for index, sentence in enumerate(SENTENCES):
            path = Path(work_dir) / f"{index}.wav"
            synthesize(sentence, path)
            samples, rate = sf.read(str(path), dtype="float32")
            utterances.append((sentence, torch.from_numpy(extractor.extract(samples, rate))))
    return utterances


def make_batch(utterances: list[tuple[str, Tensor]]) -> dict:
    """A batch as K2SpeechRecognitionDataset gives it: features (N, T, 80)
    padded with LOG_EPS, and the supervisions train.py reads."""
    num_frames = torch.tensor([features.size(0) for _, features in utterances])
    inputs = torch.full((len(utterances), int(num_frames.max()), 80), LOG_EPS)
    for i, (_, features) in enumerate(utterances):
        inputs[i, : features.size(0)] = features
    return {"inputs": inputs,
            "supervisions": {"num_frames": num_frames, "text": [t for t, _ in utterances]}}


def batch_seconds(batch: dict) -> float:
    return float(batch["supervisions"]["num_frames"].sum()) / 100


def run_sh_model_args() -> list[str]:
    """The model options run.sh trains with (its `model_args`)."""
    text = (PROJECT_DIR / "run.sh").read_text()
    match = re.search(r'^model_args="(.*?)"', text, re.MULTILINE | re.DOTALL)
    assert match, "run.sh defines no model_args"
    return shlex.split(match.group(1).replace("\\\n", " "))


def train_params(*argv: str) -> AttributeDict:
    """train.py's params for these options.  --model-warm-step 1 trains the
    pruned loss (and so the joiner) from the first batch, with no layer
    bypass; --balancer-prob 1 makes every activation balancer act in every
    step (run.sh draws them with 0.25)."""
    params = training_params(
        ["--bpe-model", str(BPE_MODEL), "--model-warm-step", "1", "--balancer-prob", "1",
         "--valid-interval", "1000", *argv])
    sp = spm.SentencePieceProcessor(model_file=str(BPE_MODEL))
    params.vocab_size = sp.get_piece_size()
    params.blank_id = sp.piece_to_id("<blk>")
    return params


class ListLoader(list):
    """Batches for train_one_epoch, which reads the loader's sampler."""

    sampler = None


def per_frame_losses(params: AttributeDict, model: torch.nn.Module, batch: dict) -> dict:
    """Float32 eval-mode loss components per frame (fixed weights, unlike the
    training loss, whose pruned-loss weight follows the batch count)."""
    sp = spm.SentencePieceProcessor(model_file=str(BPE_MODEL))
    float32 = AttributeDict({**params, "use_fp16": False})
    model.eval()
    with torch.no_grad():
        _, stats = training.compute_loss(float32, model, sp, batch, CPU)
    model.train()
    return {key: stats[key] / stats["frames"] for key in ("simple_loss", "pruned_loss",
                                                         "ctc_loss")}


def train_steps(params: AttributeDict, batch: dict, num_steps: int) -> dict:
    """`num_steps` steps of train.py's real training loop (train_one_epoch)
    on `batch`, from a seeded model; returns the model, the grad scaler, the
    parameters before, the per-frame losses before and after."""
    sp = spm.SentencePieceProcessor(model_file=str(BPE_MODEL))
    torch.manual_seed(0)
    model = model_config.get_transducer_model(params)
    optimizer = Eve(model.parameters(), lr=params.initial_lr)
    scheduler = Eden(optimizer, params.lr_batches, params.lr_epochs)
    grad_scaler = training.make_grad_scaler(params, CPU)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss_before = per_frame_losses(params, model, batch)
    scale_before = grad_scaler.get_scale()
    training.train_one_epoch(params, model, None, optimizer, scheduler, grad_scaler, sp,
                          ListLoader([batch] * num_steps), [], [], CPU, None, 0, 1, 1.0, None)
    return dict(model=model, grad_scaler=grad_scaler, before=before, loss_before=loss_before,
                scale_before=scale_before, loss_after=per_frame_losses(params, model, batch))


def changed_parameters(run: dict) -> set[str]:
    return {name for name, p in run["model"].named_parameters()
            if not torch.equal(p, run["before"][name])}


def non_finite_gradients(run: dict) -> list[str]:
    """Parameters whose gradient of the last step holds inf or NaN."""
    return [name for name, p in run["model"].named_parameters()
            if p.grad is not None and not torch.isfinite(p.grad).all()]


# ------------------------------------------------------------ training ----
@pytest.mark.slow  # (trains: ~25 s of CPU)
def test_float16_trains_run_sh_model_on_a_36_s_batch(speech, caplog):
    """Before the balancer's statistics were float32, this batch overflowed
    their float16 counts: every step was skipped, no parameter changed and
    the grad scale halved at each step."""
    batch = make_batch(speech)
    assert batch_seconds(batch) >= 30.0
    float16 = train_params(*run_sh_model_args(), "--encoder-dropout", "0",
                           "--use-fp16", "true", "--amp-dtype", "float16")
    run = train_steps(float16, batch, num_steps=3)
    assert run["grad_scaler"].is_enabled()
    assert run["scale_before"] == training.GRAD_SCALE_INIT
    assert "step skipped" not in caplog.text
    assert non_finite_gradients(run) == []
    assert run["grad_scaler"].get_scale() == run["scale_before"], "a step overflowed"
    assert changed_parameters(run) == set(run["before"]), "parameters left unchanged"
    # Learning, not only moving: the same 3 steps in float32 as a reference.
    reference = train_steps(train_params(*run_sh_model_args(), "--encoder-dropout", "0"),
                            batch, num_steps=3)
    print(f"float16, {len(run['before'])} parameters, scale {run['scale_before']:g} -> "
          f"{run['grad_scaler'].get_scale():g}; per-frame losses {run['loss_before']} -> "
          f"{run['loss_after']} (float32: {reference['loss_after']})")
    for key, before in run["loss_before"].items():
        after, expected = run["loss_after"][key], reference["loss_after"][key]
        assert after < 0.5 * before, (key, before, after)
        assert after == pytest.approx(expected, rel=0.05), (key, after, expected)


@pytest.mark.slow  # (trains: ~20 s of CPU)
def test_float16_step_at_icefall_size(speech, caplog):
    """One float16 step of icefall's default model (12 x 512, 78 M
    parameters) against the same step in float32.

    The batch is 1 s: a float16 step of this model costs ~8 s of CPU per
    second of audio here, so a batch long enough to have overflowed the old
    balancer statistics (> 8 s) would take minutes; that overflow lies in
    the subsampling, whose size does not depend on these options, and the
    test above covers it.  This one checks the larger layers (512-dim
    attention and norms, 2048-dim feed-forward, 12 layers deep)."""
    text, features = speech[0]
    batch = make_batch([(" ".join(text.split()[:3]), features[:100])])
    float16 = train_params("--use-fp16", "true", "--amp-dtype", "float16")
    run = train_steps(float16, batch, num_steps=1)
    reference = train_steps(train_params(), batch, num_steps=1)
    print(f"float16 at icefall's size: {len(changed_parameters(run))} of "
          f"{len(run['before'])} parameters changed (float32: "
          f"{len(changed_parameters(reference))}), scale {run['scale_before']:g} -> "
          f"{run['grad_scaler'].get_scale():g}; per-frame losses {run['loss_before']} -> "
          f"{run['loss_after']} (float32: {reference['loss_after']})")
    assert "step skipped" not in caplog.text
    assert non_finite_gradients(run) == []
    assert run["grad_scaler"].get_scale() == run["scale_before"]
    # Biases start at zero, so their log-scales get no gradient in the first
    # step, in float32 as well; every other parameter changes.
    expected = {name for name in run["before"] if not name.endswith("bias_scale")}
    assert changed_parameters(reference) == expected
    assert changed_parameters(run) == expected
    for key in ("simple_loss", "pruned_loss"):  # (no CTC head at icefall's defaults)
        after = run["loss_after"][key]
        assert after < run["loss_before"][key], key
        assert after == pytest.approx(reference["loss_after"][key], rel=0.05), key


# ---------------------------------------------------- module by module ----
def relative_error(value: Tensor, reference: Tensor) -> float:
    """max |value - reference| / max |reference|."""
    return float((value.float() - reference).abs().max() / reference.abs().max())


@pytest.fixture(scope="module")
def recipe_model(speech):
    params = train_params(*run_sh_model_args())
    torch.manual_seed(0)
    model = model_config.get_transducer_model(params).eval()
    # Random weights everywhere (zero biases and initial scales could hide
    # errors that show only on trained weights).
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    batch = make_batch(speech[:2])
    return model, batch["inputs"], batch["supervisions"]["num_frames"]


def compare(module_call, *inputs) -> float:
    """Relative error of module_call(*inputs) under float16 autocast."""
    with torch.no_grad():
        reference = module_call(*inputs)
        with torch.autocast("cpu", dtype=torch.float16):
            value = module_call(*inputs)
    assert torch.isfinite(value).all()
    return relative_error(value, reference)


def test_float16_autocast_modules_match_float32(recipe_model):
    """Each part of run.sh's model under float16 autocast against float32
    (random weights, real features of 2 utterances).  float16 keeps 11 bits:
    each rounding is ~5e-4 relative, and the errors add up through the
    layers."""
    model, x, x_lens = recipe_model
    encoder = model.encoder
    errors = {}
    errors["subsampling"] = compare(encoder.encoder_embed, x)
    with torch.no_grad():
        embed = encoder.encoder_embed(x)
        embed, pos_emb = encoder.encoder_pos(embed)
    mask = make_pad_mask(subsampled_lengths(x_lens), embed.size(1))
    errors["conformer layer"] = compare(
        lambda e: encoder.encoder.layers[0](e, pos_emb, None, mask), embed)
    errors["encoder"] = compare(lambda f: encoder(f, x_lens)[0], x)
    errors["encoder, simulated streaming"] = compare(
        lambda f: encoder.streaming_forward(f, x_lens, chunk_size=16, left_context=64,
                                            simulate_streaming=True)[0], x)
    tokens = torch.randint(1, 256, (2, 30))
    errors["decoder"] = compare(model.decoder, tokens)
    with torch.no_grad():
        encoder_out = encoder(x, x_lens)[0]
        decoder_out = model.decoder(tokens)
    errors["joiner"] = compare(
        lambda e, d: model.joiner(e[:, :, None], d[:, None]), encoder_out, decoder_out)
    # About 4x the errors measured (1e-3, 2e-4, 2e-3, 2e-3, 8e-4, 7e-4).
    limits = {"subsampling": 5e-3, "conformer layer": 1e-3, "encoder": 1e-2,
              "encoder, simulated streaming": 1e-2, "decoder": 3e-3, "joiner": 3e-3}
    print("relative errors of float16 autocast:", errors)
    for name, error in errors.items():
        assert error < limits[name], (name, error)


def test_basic_norm_of_large_float16_inputs():
    """Squared in float16, inputs above 256 overflowed to inf and the frame
    came out as zeros (rsqrt(inf) = 0)."""
    torch.manual_seed(0)
    norm = BasicNorm(64)
    x = torch.randn(3, 10, 64) * torch.tensor([1.0, 300.0, 3000.0])[:, None, None]
    reference = norm(x)
    half = x.half()
    for value in (norm(half), _under_autocast(norm, half)):
        assert value.dtype == torch.float16
        assert torch.isfinite(value).all()
        assert (value.abs().amax(dim=-1) > 0.5).all(), "a frame was zeroed"
        assert relative_error(value, reference) < 2e-3


def _under_autocast(module, x: Tensor) -> Tensor:
    with torch.autocast("cpu", dtype=torch.float16):
        return module(x)


def test_balancer_statistics_do_not_overflow_float16():
    """The balancer's per-channel count of positive values and sum of |x|
    run over every frame of the batch: in float16 they overflowed above
    65504 elements per channel (conv1 of the subsampling reaches that with
    8.2 s of audio), making the gradient inf/NaN.  Here 90,000 elements per
    channel, with channels outside the balancer's ranges so that it acts."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 300, 75)  # (N, C, T, F), statistics per C
    x[:, 1] = x[:, 1].abs() + 0.1  # all positive: above max_positive
    x[:, 2] = x[:, 2] * 0.01  # mean |x| below min_abs
    grad = torch.randn_like(x)
    grads = {}
    for dtype in (torch.float32, torch.float16):
        leaf = x.to(dtype, copy=True).requires_grad_()
        out = ActivationBalancerFunction.apply(leaf, 1, 0.05, 0.95, 0.01, 0.2, 100.0)
        out.backward(grad.to(dtype))
        grads[dtype] = leaf.grad
    assert torch.isfinite(grads[torch.float16]).all()
    # The balancer changed the gradient, in float16 as in float32.
    assert not torch.allclose(grads[torch.float32], grad)
    torch.testing.assert_close(grads[torch.float16].float(), grads[torch.float32],
                               rtol=2e-3, atol=1e-3)


# --------------------------------------------------------- the guard ----
def test_guard_counts_consecutive_bad_batches_and_names_what_to_try(caplog):
    guard = NonFiniteGuard(3)
    assert guard.check(1, loss_finite=True, grads_finite=True, grad_scale=4096.0)
    assert not guard.check(2, loss_finite=False)
    assert not guard.check(3, loss_finite=True, grads_finite=False, grad_scale=2048.0)
    assert guard.check(4, loss_finite=True)  # a good batch resets the count
    assert "batch 2: non-finite loss, step skipped" in caplog.text
    assert "batch 3: non-finite gradients, step skipped, grad scale 2048" in caplog.text
    assert not guard.check(5, loss_finite=False)
    assert not guard.check(6, loss_finite=True, grads_finite=False, grad_scale=0.5)
    with pytest.raises(RecipeError) as error:
        guard.check(7, loss_finite=True, grads_finite=True, grad_scale=0.5)
    message = str(error.value)
    assert "3 consecutive batches (5-7) did not train" in message
    assert "non-finite loss: 1, non-finite gradients: 1, grad scale below 1: 1" in message
    for advice in ("--initial-lr", "--use-fp16 false", "features and transcripts",
                   "--max-nonfinite-batches"):
        assert advice in message
    never = NonFiniteGuard(0)
    assert not any(never.check(b, loss_finite=False) for b in range(100))


def test_non_finite_loss_stops_training_with_its_message(speech, caplog):
    """train_one_epoch's real step path: batches whose features hold a NaN
    give non-finite losses; --max-nonfinite-batches 3 stops at the third,
    with the weights untouched."""
    params = train_params(*run_sh_model_args(), "--max-nonfinite-batches", "3")
    batch = make_batch(speech[:1])
    batch["inputs"][0, 5, 3] = math.nan
    with pytest.raises(RecipeError, match=r"3 consecutive batches \(1-3\) did not train "
                       r"\(non-finite loss: 3\); try a lower --initial-lr"):
        train_steps(params, batch, num_steps=5)
    assert caplog.text.count("non-finite loss") == 3


def test_non_finite_gradients_skip_the_step_and_stop_training(speech, caplog, monkeypatch):
    """Without a grad scaler (float32) a non-finite gradient used to reach
    the optimizer and turn the weights into NaN: now the step is skipped,
    and --max-nonfinite-batches 2 stops the run at the second such batch.
    The NaN is injected by a gradient hook on one parameter."""
    params = train_params(*run_sh_model_args(), "--max-nonfinite-batches", "2")
    real_get_model = model_config.get_transducer_model

    def poisoned_model(model_params):
        model = real_get_model(model_params)
        model.joiner.output_linear.weight.register_hook(lambda g: g * math.nan)
        return model

    monkeypatch.setattr(model_config, "get_transducer_model", poisoned_model)
    batch = make_batch(speech[:1])
    with pytest.raises(RecipeError, match=r"\(non-finite gradients: 2\)") as error:
        train_steps(params, batch, num_steps=5)
    assert "batch 1: non-finite gradients, step skipped" in caplog.text
    assert "grad scale" not in str(error.value)  # float32: no scaler


def test_options_of_mixed_precision(monkeypatch, capsys):
    """--amp-dtype and the guard's option: defaults, and one-line errors."""
    params = train_params()
    assert training.amp_dtype(params, CPU) is None
    assert not training.make_grad_scaler(params, CPU).is_enabled()
    params = train_params("--use-fp16", "true")
    assert training.amp_dtype(params, CPU) == torch.bfloat16
    assert training.amp_dtype(params, torch.device("cuda")) == torch.float16
    assert not training.make_grad_scaler(params, CPU).is_enabled()
    params = train_params("--use-fp16", "true", "--amp-dtype", "float16")
    assert training.amp_dtype(params, CPU) == torch.float16
    assert training.make_grad_scaler(params, CPU).is_enabled()
    assert params.max_nonfinite_batches == 20
    for argv, expected in ((["--amp-dtype", "float16"], "--amp-dtype float16 needs --use-fp16 "
                            "true"),
                           (["--max-nonfinite-batches", "-1"], "must be >= 0")):
        monkeypatch.setattr("sys.argv", ["train.py", *argv])
        with pytest.raises(SystemExit) as exit_info:
            import_script(PROJECT_DIR / "pruned_transducer_stateless4/train.py").main()
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err
