"""Learning without Forgetting (Li & Hoiem, ECCV 2016) as a baseline trainer.

On the new task's data, the model's outputs are kept close to those the previous model (the
"teacher", frozen) gives on the same inputs, by distillation at temperature T:

    L = L_new + lambda_o * mean_k KL( softmax(z_old(x_k)/T) || softmax(z(x_k)/T) )

The KL differs from LwF's cross-entropy with softened targets by the teacher's entropy, a constant:
same gradient. No T^2 factor (LwF's Eq. 2 has none). Defaults: T = 2, lambda_o = 1 (the paper's),
`LwFConfig.lwf_temperature` / `lwf_weight`. For sequence outputs a sample's KL is the mean over its
non-padding positions. The whole output is distilled (a single-head model: every old logit; for
multi-head models, whatever `forward` returns as logits). LwF's warm-up phase (training the new
head alone first) is a choice of the caller (freeze the body for a first `train()`).

The distillation term's weight is exactly lambda_o whatever the gradient accumulation: when the
Trainer does not divide the loss by the accumulation steps (a loss normalised by
`num_items_in_batch`), the term is divided here instead. The MAS penalty of `MASTrainer` still
applies (reg_lambda > 0 with an Omega gives LwF + MAS; an empty Omega gives plain LwF). Works
under DeepSpeed like any compute_loss (the teacher must then be an unpartitioned copy that fits).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..batch import attention_mask, inputs_of, logits_of
from ..trainer import MASTrainer


@dataclass
class LwFConfig:
    """LwF's hyper-parameters (LwF has no Omega: these are not MASConfig fields)."""

    lwf_temperature: float = field(
        default=2.0, metadata={"help": "LwF distillation temperature T (Li & Hoiem 2016 use T = 2). > 0."}
    )
    lwf_weight: float = field(
        default=1.0,
        metadata={"help": "LwF weight lambda_o of the distillation loss (Li & Hoiem 2016: 1). >= 0."},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if isinstance(self.lwf_temperature, bool) or not self.lwf_temperature > 0:
            raise ValueError(f"LwFConfig.lwf_temperature must be > 0, got {self.lwf_temperature!r}")
        if isinstance(self.lwf_weight, bool) or not self.lwf_weight >= 0:
            raise ValueError(f"LwFConfig.lwf_weight must be >= 0, got {self.lwf_weight!r}")


def frozen_copy(model: nn.Module) -> nn.Module:
    """The teacher: a deep copy in eval mode with no trainable parameters."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """mean over samples of KL(softmax(teacher/T) || softmax(student/T)); sequences: mean over positions."""
    log_q = (student.float() / temperature).log_softmax(-1)
    log_p = (teacher.float() / temperature).log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, [T])
    if kl.dim() == 1:
        return kl.mean()
    m = mask.to(kl.dtype) if mask is not None and mask.shape == kl.shape else torch.ones_like(kl)
    per_sample = (kl * m).reshape(kl.shape[0], -1).sum(1) / m.reshape(kl.shape[0], -1).sum(1).clamp(min=1)
    return per_sample.mean()


class LwFTrainer(MASTrainer):
    """MASTrainer whose loss adds distillation to `teacher` (default: a frozen copy of the model at init)."""

    def __init__(
        self, *args: Any, teacher: nn.Module | None = None, lwf_config: LwFConfig | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lwf_config = lwf_config or LwFConfig()
        self.teacher = teacher if teacher is not None else frozen_copy(self.model)
        self.teacher.to(self.args.device)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        cfg = self.lwf_config
        if cfg.lwf_weight > 0:  # distillation is of the logits, whatever MASConfig.output says
            x = inputs_of(inputs)
            with torch.no_grad():
                old = logits_of(self.teacher(**x))
            new = logits_of(outputs)
            term = cfg.lwf_weight * distillation_loss(
                new, old, cfg.lwf_temperature, attention_mask(x, new.shape[:-1])
            )
            if self._loss_scaled_for_ga(num_items_in_batch):
                term = term / self.current_gradient_accumulation_steps  # the Trainer will not divide it
            loss = loss + term
        return (loss, outputs) if return_outputs else loss

    def _loss_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        """Mirror of Trainer.training_step: is the loss left undivided by the accumulation steps?"""
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool(
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
            or self.compute_loss_func is not None
        )
