"""The running average of the weights (shared/checkpoint.update_averaged_model)
against a float64 reference, fed weights whose dtype or device differs from
the averaged model's."""

import copy

import pytest
import torch
from torch import nn

from shared.checkpoint import update_averaged_model


def _models(num: int, dtype: torch.dtype, device: str = "cpu") -> list[nn.Module]:
    """`num` small models with random weights (and an integer buffer, which
    the average must leave alone)."""
    generator = torch.Generator().manual_seed(0)
    models = []
    for _ in range(num):
        model = nn.Sequential(nn.Linear(7, 5), nn.LayerNorm(5), nn.Linear(5, 3))
        model.register_buffer("steps", torch.tensor(3, dtype=torch.int64))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 100 + 1e4)
        models.append(model.to(device=device, dtype=dtype))
    return models


def _running_average(models: list[nn.Module], model_avg: nn.Module, period: int) -> None:
    for k, model in enumerate(models, start=1):
        update_averaged_model(model, model_avg, period, k * period)


def _float64_mean(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    states = [{name: t.detach().cpu().double() for name, t in m.state_dict().items()
               if t.is_floating_point()} for m in models]
    return {name: sum(state[name] for state in states) / len(states) for name in states[0]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_float64_average_of_weights_of_another_dtype_matches_the_reference(dtype):
    models = _models(12, dtype)
    model_avg = copy.deepcopy(models[0]).to(torch.float64)
    _running_average(models, model_avg, period=100)
    reference = _float64_mean(models)
    averaged = model_avg.state_dict()
    for name, expected in reference.items():
        assert averaged[name].dtype == torch.float64
        torch.testing.assert_close(averaged[name], expected, rtol=1e-13, atol=1e-9)
    assert int(averaged["steps"]) == 3


def test_a_float32_average_would_not_be_exact():
    """Why the average is kept in float64: around 1e4 float32 keeps ~1e-3,
    which the reference comparison above would see."""
    models = _models(12, torch.float32)
    model_avg = copy.deepcopy(models[0])
    _running_average(models, model_avg, period=100)
    reference = _float64_mean(models)
    error = max(float((model_avg.state_dict()[name].double() - value).abs().max())
                for name, value in reference.items())
    assert error > 1e-6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("avg_device, model_device", [("cuda", "cpu"), ("cpu", "cuda"),
                                                      ("cuda", "cuda")])
def test_average_across_devices_matches_the_reference(avg_device, model_device):
    models = _models(6, torch.float32, model_device)
    model_avg = copy.deepcopy(models[0]).to(device=avg_device, dtype=torch.float64)
    _running_average(models, model_avg, period=10)
    reference = _float64_mean(models)
    for name, tensor in model_avg.state_dict().items():
        assert tensor.device.type == avg_device
        if name in reference:
            torch.testing.assert_close(tensor.cpu(), reference[name], rtol=1e-13, atol=1e-9)
