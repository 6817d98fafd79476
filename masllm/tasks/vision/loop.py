"""A lean tensor loop for the benchmarks: whole-tensor batches, the same penalty as `MASTrainer`.

`train_task` trains one task under lambda sum Omega (theta - theta*)^2 (Eq. 3) with
`masllm.penalty.BoundPenalty` (the object MASTrainer binds); `accuracy` evaluates one head, or some
of its outputs only (`classes`: a task of a shared head answering on its own classes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ...omega import Omega
from ...penalty import BoundPenalty
from .data import batches


@torch.no_grad()
def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    head: int,
    batch_size: int = 4096,
    classes: Sequence[int] | None = None,
) -> float:
    """Top-1 accuracy (%) of `head` on (x, y), in eval mode; with `classes`, the argmax is taken over
    those outputs only (the task's classes masked in, the others out), labels being output indices."""
    was_training = model.training
    model.eval()
    keep = torch.tensor(list(classes)) if classes is not None else None
    correct = 0
    for b in batches(x, y, head, batch_size):
        logits = model(b["pixel_values"], task_ids=head).logits  # (B, C)
        pred = logits.argmax(-1) if keep is None else keep[logits[:, keep].argmax(-1)]
        correct += int((pred == b["labels"]).sum())
    model.train(was_training)
    return 100.0 * correct / len(x)


LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
StepHook = Callable[[], None]


def train_task(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    head: int | torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    omega: Omega | None = None,
    reg_lambda: float = 0.0,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    before_step: StepHook | None = None,
    after_step: StepHook | None = None,
) -> None:
    """Plain minibatch training of one task under the MAS penalty: L_n + lambda sum Omega (theta-theta*)^2.

    The penalty gradient is added with `masllm.penalty.BoundPenalty`, exactly as `MASTrainer` does. `loss_fn(model, batch)` replaces the cross-entropy (e.g. LwF's distillation term);
    `before_step` (the final gradient, penalty included) / `after_step` let online estimators
    (SI) see the gradient each update follows and the update itself.
    """
    active = omega is not None and not omega.is_empty and reg_lambda > 0
    penalty = BoundPenalty.for_model(model, omega.importance, omega.anchors) if active else None
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=generator)
        for batch in batches(x, y, head, batch_size, perm):
            optimizer.zero_grad()
            loss = model(**batch).loss if loss_fn is None else loss_fn(model, batch)
            loss.backward()
            if penalty is not None:
                penalty.add_grad_(reg_lambda)  # Eq. 3
            if before_step is not None:
                before_step()
            optimizer.step()
            if after_step is not None:
                after_step()
