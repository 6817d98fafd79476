"""MASTrainer: a `transformers.Trainer` that trains a new task under the MAS penalty (Eq. 3).

    trainer = MASTrainer(model, args, train_dataset=task_2, mas_config=cfg, omega=omega)
    trainer.train()

The penalty's gradient 2 lambda Omega (theta - theta*) is added once per optimizer step, after the
task loss's backward of the last micro-batch and before clipping and the optimizer step, so the
update is exactly that of the loss of Eq. 3 whatever the gradient accumulation or loss
normalisation. `mas_penalty` (lambda sum Omega (theta - theta*)^2, mean over the steps since the last
log) joins the training logs. Omega and theta* are saved with every checkpoint and restored by
`resume_from_checkpoint`.

The trainer never estimates importance: after `train()`, call `masllm.compute_importance` on the
task's unlabeled data and `omega.merge(...)` (the recipe does exactly that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .checkpoint import CONFIG_NAME
from .config import MASConfig
from .omega import Omega
from .penalty import add_penalty_grad_


class MASTrainer(Trainer):
    """A Trainer whose optimizer steps follow the gradient of L_n + lambda sum Omega (theta - theta*)^2."""

    def __init__(
        self, *args: Any, mas_config: MASConfig | None = None, omega: Omega | None = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.mas_config = mas_config or (omega.config if omega is not None else MASConfig())
        self.omega = omega if omega is not None else Omega(config=self.mas_config)
        if not self.omega.is_empty:
            self.omega.validate(self.model)
        self._penalty_terms: tuple[list[torch.Tensor], ...] | None = None
        self._penalty_total = torch.zeros(())
        self._penalty_steps = 0

    @property
    def penalty_active(self) -> bool:
        return not self.omega.is_empty and self.mas_config.reg_lambda > 0

    def _bind_penalty(self) -> tuple[list[torch.Tensor], ...]:
        """Line up (theta, Omega, theta*) once, moving Omega and theta* to each parameter's device."""
        params = dict(self.model.named_parameters())
        theta, omegas, anchors = [], [], []
        for name, omega in self.omega.importance.items():
            p = params[name]
            self.omega.importance[name] = omega = omega.to(p.device, p.dtype)
            self.omega.anchors[name] = anchor = self.omega.anchors[name].to(p.device, p.dtype)
            theta.append(p)
            omegas.append(omega)
            anchors.append(anchor)
        return theta, omegas, anchors

    def apply_penalty(self) -> None:
        """Add 2 lambda Omega (theta - theta*) to the gradients (Eq. 3); called once per optimizer step."""
        if not self.penalty_active:
            return
        if self._penalty_terms is None:
            self._penalty_terms = self._bind_penalty()
        theta, omegas, anchors = self._penalty_terms
        for p in theta:
            if p.grad is None:  # a parameter the task loss did not reach is still pulled back
                p.grad = torch.zeros_like(p)
        scaler = getattr(self.accelerator, "scaler", None)
        grad_scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        value = add_penalty_grad_(
            theta, [p.grad for p in theta], omegas, anchors, self.mas_config.penalty_weight, grad_scale
        )
        self._penalty_total = self._penalty_total + value.detach().cpu()
        self._penalty_steps += 1

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients and not self.is_deepspeed_enabled:
            self.apply_penalty()  # after the last micro-batch's backward, before clipping and step
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._penalty_steps and "loss" in logs:
            logs["mas_penalty"] = round(float(self._penalty_total) / self._penalty_steps, 8)
            self._penalty_total, self._penalty_steps = torch.zeros(()), 0
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if not self.omega.is_empty and self.args.should_save:
            self.omega.save_pretrained(output_dir or self.args.output_dir, model=self.model)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        if (Path(resume_from_checkpoint) / CONFIG_NAME).is_file():
            loaded = Omega.from_pretrained(resume_from_checkpoint, model=self.model)
            self.omega.__dict__.update(loaded.__dict__)  # same object: callers' references stay valid
            self._penalty_terms = None
