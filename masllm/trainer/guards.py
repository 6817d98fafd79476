"""Guards on divergence: training stops with a clear error before a diverged checkpoint is written.

- A non-finite loss (any micro-batch of the step), gradient norm (after the penalty, before
  clipping) or `mas_penalty` raises `DivergenceError`. The check runs once per optimizer step in
  the Trainer's `_maybe_log_save_evaluate`, the call that logs and then saves a checkpoint, so a
  checkpoint is never written after a diverged step (the Trainer would otherwise log the loss as
  the running mean, its NaN filter, clip an infinite norm to a zero update every step, and save
  NaN weights). Under fp16 a step the loss scaler skipped (an overflow) is not divergence.
- Plain SGD on the penalty alone: each weight sees a quadratic of curvature h = 2 w Omega (w =
  lambda, or lambda / 2 with `half_penalty`), and gradient descent on it is stable only when
  lr * h < 2 (heavy-ball momentum beta: lr * h < 2 (1 + beta)); above that theta oscillates away
  from theta* with growing amplitude. A warning, once, gives the numbers (Adam-style optimizers
  normalise the step and are not concerned).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss, gradient norm or penalty."""


def is_finite(value: Any) -> bool:
    return value is None or bool(torch.isfinite(torch.as_tensor(value, dtype=torch.float64)).all())


def divergence_message(step: int, loss: float | None, grad_norm: Any, penalty: float | None = None) -> str:
    parts = [f"loss {loss}" if loss is not None else None]
    parts += [f"gradient norm {float(grad_norm)}" if grad_norm is not None else None]
    parts += [f"mas_penalty {penalty}" if penalty is not None else None]
    seen = ", ".join(p for p in parts if p is not None)
    return (
        f"Training diverged at optimizer step {step} ({seen}); stopped before any checkpoint of this "
        "step was written. Lower the learning rate or reg_lambda, or clip gradients (max_grad_norm > 0)."
    )


def base_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's and DeepSpeed's wrappers."""
    for _ in range(4):
        if isinstance(optimizer, torch.optim.Optimizer) and not hasattr(optimizer, "optimizer"):
            break
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            break
        optimizer = inner
    return optimizer


def sgd_instability(optimizer: Any, weight: float, max_omega: float) -> str | None:
    """A warning when plain SGD's step on the penalty would grow instead of shrink (see the module)."""
    optimizer = base_optimizer(optimizer)
    if type(optimizer) is not torch.optim.SGD or weight <= 0:
        return None
    group = max(optimizer.param_groups, key=lambda g: g.get("initial_lr", g["lr"]))
    lr, beta = float(group.get("initial_lr", group["lr"])), float(group.get("momentum", 0.0))
    if group.get("nesterov", False):
        return None
    product, bound = lr * 2 * weight * max_omega, 2 * (1 + beta)
    if not math.isfinite(product) or product >= bound:
        return (
            f"Plain SGD with lr={lr:g}, penalty weight {weight:g} (lambda) and max Omega {max_omega:.4g}: "
            f"lr * 2 * lambda * max(Omega) = {product:.4g} >= {bound:g}{' (momentum)' if beta else ''}, so "
            "the penalty's own step is unstable for the most important weights (they oscillate away from "
            "theta* ever more). Lower lr or reg_lambda, or use an adaptive optimizer (adamw)."
        )
    return None


def warn_if_unstable(optimizer: Any, weight: float, max_omega: float) -> None:
    message = sgd_instability(optimizer, weight, max_omega)
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
