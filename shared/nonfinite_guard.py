"""Stops a training run whose steps no longer update the model.

A non-finite loss or gradient makes train.py skip the step (the weights stay
as they were), and a float16 GradScaler skips it and halves its scale.  One
such batch is harmless (a float16 run skips a few while its scale settles),
but when it happens batch after batch the run only looks alive: the loss
stays finite and the logs go on while nothing is learnt (a float16 overflow
in the model, a learning rate that blew the weights up, corrupt data).
`NonFiniteGuard` counts such batches and raises once too many come in a row.
"""

import logging

from shared.utils import RecipeError


class NonFiniteGuard:
    """Counts consecutive bad batches and raises `RecipeError` at the limit.

    A batch is bad when its loss or its gradients are non-finite (the step
    was skipped) or, with float16 grad scaling, when the scale after the step
    is below `min_grad_scale`: a scale under 1 means that even the unscaled
    gradients overflow float16, which only gets worse.  A good batch resets
    the count.

    Args:
      max_bad_batches: raise at this many consecutive bad batches; 0 never
        raises (the batches are still logged).
      min_grad_scale: smallest healthy GradScaler scale.
    """

    def __init__(self, max_bad_batches: int, min_grad_scale: float = 1.0) -> None:
        if max_bad_batches < 0:
            raise ValueError(f"max_bad_batches must be >= 0, not {max_bad_batches}")
        self.max_bad_batches = max_bad_batches
        self.min_grad_scale = min_grad_scale
        self.num_bad = 0
        self.first_bad_batch = 0
        self.reasons: dict[str, int] = {}

    def check(self, batch_idx: int, loss_finite: bool, grads_finite: bool = True,
              grad_scale: float | None = None) -> bool:
        """Records one training batch.

        Args:
          batch_idx: the batch's number (for the messages).
          loss_finite: whether the loss was finite (else the step was skipped
            before the backward pass).
          grads_finite: whether every gradient was finite (else the step was
            skipped); ignored when the loss was not finite.
          grad_scale: the GradScaler's scale after the step, None without
            one.
        Returns:
          True for a good batch, False for a bad one (logged).
        Raises:
          RecipeError: at `max_bad_batches` consecutive bad batches.
        """
        if not loss_finite:
            reason = "non-finite loss"
        elif not grads_finite:
            reason = "non-finite gradients"
        elif grad_scale is not None and grad_scale < self.min_grad_scale:
            reason = f"grad scale below {self.min_grad_scale:g}"
        else:
            self.num_bad = 0
            self.reasons = {}
            return True
        if self.num_bad == 0:
            self.first_bad_batch = batch_idx
        self.num_bad += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        scale = "" if grad_scale is None else f", grad scale {grad_scale:g}"
        skipped = "" if reason.startswith("grad scale") else ", step skipped"
        logging.warning(f"batch {batch_idx}: {reason}{skipped}{scale} "
                        f"({self.num_bad} bad batch(es) in a row)")
        if 0 < self.max_bad_batches <= self.num_bad:
            counts = ", ".join(f"{reason}: {count}" for reason, count in self.reasons.items())
            raise RecipeError(
                f"training stopped: {self.num_bad} consecutive batches "
                f"({self.first_bad_batch}-{batch_idx}) did not train ({counts}){scale}; "
                "try a lower --initial-lr, --use-fp16 false (or --amp-dtype bfloat16 on "
                "a GPU that has it), and check these batches' features and transcripts; "
                "--max-nonfinite-batches sets this limit"
            )
        return False
