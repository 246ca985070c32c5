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
