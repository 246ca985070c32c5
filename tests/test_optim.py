"""shared.optim.Eden: the time-tied final decay and its checkpoint state."""

import pytest
import torch

from shared.optim import Eden


def make_scheduler(**kwargs) -> tuple[Eden, torch.optim.Optimizer]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=2e-3)
    return Eden(optimizer, lr_batches=100, lr_epochs=2, **kwargs), optimizer


def eden_lr(batch: int, epoch: float) -> float:
    """Eden without warm-up or final decay, written out."""
    return (2e-3 * ((batch**2 + 100**2) / 100**2) ** -0.25
            * ((epoch**2 + 2**2) / 2**2) ** -0.25)


def test_final_decay_is_linear_over_the_last_fraction_of_the_budget():
    scheduler, optimizer = make_scheduler(decay_fraction=0.25, final_factor=0.1)
    scheduler.step_batch(400)
    scheduler.step_epoch(1.5)
    for progress, decay in [(0.0, 1.0), (0.5, 1.0), (0.75, 1.0), (0.875, 0.55), (1.0, 0.1),
                            (1.2, 0.1)]:
        scheduler.step_progress(progress)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(eden_lr(400, 1.5) * decay)


def test_without_decay_fraction_progress_changes_nothing():
    scheduler, optimizer = make_scheduler()
    scheduler.step_batch(50)
    for progress in (0.0, 0.9, 1.0):
        scheduler.step_progress(progress)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(eden_lr(50, 0.0))


def test_state_dict_restores_the_decayed_rate():
    scheduler, optimizer = make_scheduler(decay_fraction=0.5)
    scheduler.step_batch(200)
    scheduler.step_progress(0.8)
    restored, restored_optimizer = make_scheduler(decay_fraction=0.5)
    restored.load_state_dict(scheduler.state_dict())
    assert restored_optimizer.param_groups[0]["lr"] == pytest.approx(
        optimizer.param_groups[0]["lr"])


def test_bad_decay_fraction_is_refused():
    with pytest.raises(ValueError, match="decay_fraction"):
        make_scheduler(decay_fraction=1.5)


def test_eve_is_adam_with_decay_only_above_the_target_rms():
    """Eve against its definition, written out for three parameters: a scalar
    (never decayed), a matrix below RMS 0.1 and one above it."""
    from shared.optim import Eve

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.tensor(0.5)),
              torch.nn.Parameter(0.05 * torch.randn(4, 3)),
              torch.nn.Parameter(0.5 * torch.randn(4, 3))]
    reference = [p.detach().clone().double() for p in params]
    moments = [(torch.zeros_like(r), torch.zeros_like(r)) for r in reference]
    optimizer = Eve(params, lr=0.01, weight_decay=0.05)
    lr, beta1, beta2, eps = 0.01, 0.9, 0.98, 1e-8
    for step in range(1, 6):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        for i, g in enumerate(grads):
            m, v = moments[i]
            m = beta1 * m + (1 - beta1) * g.double()
            v = beta2 * v + (1 - beta2) * g.double() ** 2
            moments[i] = (m, v)
            r = reference[i]
            if r.numel() > 1 and float(r.pow(2).mean().sqrt()) > 0.1:
                r = r * (1 - 0.05)
            r = r - lr / (1 - beta1**step) * m / ((v / (1 - beta2**step)).sqrt() + eps)
            reference[i] = r
    for p, r in zip(params, reference):
        assert torch.allclose(p.detach().double(), r, atol=1e-6)
    # The reference did decay the large matrix on every step and never the
    # small one (its RMS stays below 0.1).
    assert float(params[1].detach().pow(2).mean().sqrt()) < 0.1
    assert float(params[2].detach().pow(2).mean().sqrt()) > 0.1
