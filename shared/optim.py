"""Learning-rate schedule: icefall's Eden, with a linear warm-up and an
optional final decay tied to a time budget.

    lr = base_lr * warmup(b) * ((b^2 + B^2) / B^2)^-0.25 * ((e^2 + E^2) / E^2)^-0.25
                 * final_decay(p)

b is the batch count, e the (fractional) epoch, B = lr_batches, E = lr_epochs;
warmup(b) rises linearly from 0.1 to 1 over `warmup_batches`.  The schedule
stays flat for b << B and then decays like b^-0.5, which suits both short CPU
runs (B small) and long GPU runs (B ~ 5000).

p is the fraction of the training budget used so far (train.py: minutes of
training over --max-train-minutes).  final_decay(p) is 1 until p reaches
1 - decay_fraction and then falls linearly to `final_factor` at p = 1.  Eden
alone ends a budgeted run wherever the budget happens to stop it (still at
~45% of base_lr in a 28-minute CPU run); this lets the last updates anneal.
"""

from typing import Any

import torch


class Eden:
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_batches: float,
        lr_epochs: float,
        warmup_batches: float = 0.0,
        decay_fraction: float = 0.0,
        final_factor: float = 0.05,
    ):
        if not 0.0 <= decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], not {decay_fraction}")
        self.optimizer = optimizer
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        self.warmup_batches = warmup_batches
        self.decay_fraction = decay_fraction
        self.final_factor = final_factor
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.batch = 0
        self.epoch = 0.0
        self.progress = 0.0
        self._apply()

    def factor(self) -> float:
        batch_factor = ((self.batch**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25
        epoch_factor = ((self.epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        warmup = 1.0
        if self.warmup_batches > 0 and self.batch < self.warmup_batches:
            warmup = 0.1 + 0.9 * self.batch / self.warmup_batches
        final_decay = 1.0
        decay_start = 1.0 - self.decay_fraction
        if self.decay_fraction > 0 and self.progress > decay_start:
            remaining = max(0.0, 1.0 - self.progress) / self.decay_fraction
            final_decay = self.final_factor + (1.0 - self.final_factor) * remaining
        return batch_factor * epoch_factor * warmup * final_decay

    def step_batch(self, batch: int) -> None:
        self.batch = batch
        self._apply()

    def step_epoch(self, epoch: float) -> None:
        self.epoch = epoch
        self._apply()

    def step_progress(self, progress: float) -> None:
        """progress: the fraction of the training budget used so far (0 to 1)."""
        self.progress = progress
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def _apply(self) -> None:
        factor = self.factor()
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor

    def state_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "epoch": self.epoch, "progress": self.progress,
                "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch = state["batch"]
        self.epoch = state["epoch"]
        self.progress = state.get("progress", 0.0)  # absent in older checkpoints
        self.base_lrs = state["base_lrs"]
        self._apply()
