"""icefall's Eve optimizer and Eden learning-rate schedule (from
pruned_transducer_stateless2/optim.py, which stateless4 uses).

Eve is Adam (betas 0.9, 0.98) whose weight decay applies only to parameters
with more than one element whose RMS exceeds `target_rms` (0.1): the scaled
layers keep their raw weights near RMS 0.1 and learn their magnitude through
the scalar log-scales, which are never decayed.

Eden: the learning-rate schedule, optionally with a linear warm-up and a
final decay tied to a time budget (both off by default; icefall has neither).

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


class Eve(torch.optim.Optimizer):
    """Adam with icefall's "weight decay only above a target RMS".

    Per parameter p with gradient g, step n (from 1):
      m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
      if p.numel() > 1 and rms(p) > target_rms: p *= 1 - weight_decay
      p -= lr / (1 - beta1^n) * m / (sqrt(v / (1 - beta2^n)) + eps)

    Args:
      params: parameters or parameter groups.
      lr: learning rate (Eden scales it).
      betas: Adam's coefficients.
      eps: added to the denominator.
      weight_decay: relative decay per step of a parameter above target_rms.
      target_rms: RMS below which a parameter is not decayed.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.98),
                 eps: float = 1e-8, weight_decay: float = 1e-3, target_rms: float = 0.1):
        if not 0.0 <= lr:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"invalid epsilon {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if not 0.0 <= weight_decay <= 0.1:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        if not 0.0 < target_rms <= 10.0:
            raise ValueError(f"invalid target_rms {target_rms}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      target_rms=target_rms))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Eve does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                step = state["step"]
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() * (bias_correction2**-0.5)).add_(group["eps"])
                step_size = group["lr"] / bias_correction1
                if p.numel() > 1:
                    # Scalars (the log-scales) are never decayed.
                    above_target = p.norm() > group["target_rms"] * (p.numel() ** 0.5)
                    p.mul_(1 - group["weight_decay"] * above_target)
                p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss


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
