"""MASTrainer: a `transformers.Trainer` that trains a new task under the MAS penalty (Eq. 3).

    trainer = MASTrainer(model, args, train_dataset=task_2, mas_config=cfg, omega=omega)
    trainer.train()

The penalty's gradient 2 lambda Omega (theta - theta*) is added once per optimizer step, after the
task loss's backward of the last micro-batch and before clipping and the optimizer step, so the
update is exactly that of the loss of Eq. 3 whatever the gradient accumulation or loss
normalisation. `mas_penalty` (lambda sum Omega (theta - theta*)^2 at the weights of the logged step)
joins the training logs. Omega and theta* are saved with every checkpoint and restored by
`resume_from_checkpoint`.

Under DeepSpeed ZeRO-1/2/3 each rank holds only its slices of Omega and theta* (masllm.sharding):
the penalty is added to the rank's reduced gradient slice inside the ZeRO optimizer's step (before
its unscaling and clipping, still multiplied by the fp16 loss scale), checkpoints carry the
consolidated Omega, and `omega=` may be a saved directory, read slice by slice on every rank.

The trainer never estimates importance: after `train()`, call `masllm.compute_importance` on the
task's unlabeled data and `omega.merge(...)` (the recipe does exactly that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from . import sharding
from .checkpoint import CONFIG_NAME, load_meta
from .config import MASConfig
from .consolidate import load_omega_shards, save_omega_consolidated
from .hub import TAGS, update_model_card
from .omega import Omega
from .penalty import add_penalty_grad_, penalty_value


class MASTrainer(Trainer):
    """A Trainer whose optimizer steps follow the gradient of L_n + lambda sum Omega (theta - theta*)^2."""

    def __init__(
        self,
        *args: Any,
        mas_config: MASConfig | None = None,
        omega: Omega | str | Path | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._omega_dir: str | None = None  # under ZeRO: a saved Omega, read slice by slice when bound
        if isinstance(omega, (str, Path)):
            if self.is_deepspeed_enabled:  # never materialise the full Omega on a rank
                self._omega_dir = str(omega)
                omega = Omega(config=MASConfig.from_dict(load_meta(Path(omega))["config"]))
            else:
                omega = Omega.from_pretrained(omega, model=self.model)
        self._config_given = mas_config is not None  # an explicit config wins over a loaded Omega's
        self.mas_config = mas_config or (omega.config if omega is not None else MASConfig())
        self.omega = omega if omega is not None else Omega(config=self.mas_config)
        if not self.omega.is_empty:
            self.omega.validate(self.model)
        self._penalty_terms: tuple[list[torch.Tensor], ...] | None = None
        self._local: sharding.LocalShards | None = None  # DeepSpeed ZeRO: this rank's slices
        self._resume_dir: str | None = None

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
        add_penalty_grad_(
            theta, [p.grad for p in theta], omegas, anchors, self.mas_config.penalty_weight, grad_scale
        )

    # DeepSpeed ZeRO: the penalty on each rank's slices, inside the ZeRO optimizer's step.
    def _wrap_zero_step(self) -> None:
        """Run `apply_sharded_penalty` at the start of every ZeRO optimizer step.

        Accelerate runs the engine's backward and step in one call, and the Trainer's
        `on_pre_optimizer_step` fires after DeepSpeed has stepped; the ZeRO optimizer's own `step`
        is the one place that is after the reduction of the last micro-batch and before the
        overflow check, unscaling, clipping and update (DESIGN.md, "The hard parts" 1).
        """
        optimizer = self.model_wrapped.optimizer
        if getattr(optimizer, "_mas_wrapped", False):
            return
        step = optimizer.step

        def step_with_penalty(*args: Any, **kwargs: Any) -> Any:
            self.apply_sharded_penalty()
            return step(*args, **kwargs)

        optimizer.step = step_with_penalty
        optimizer._mas_wrapped = True

    def _bind_sharded_penalty(self) -> tuple[list[torch.Tensor], ...]:
        """This rank's (theta, Omega, theta*) slices; a full Omega, or one in a checkpoint being
        resumed, is cut down to them here (resharding for any world size)."""
        params = sharding.trainable_with_master(self.model_wrapped)
        missing = [n for n in self.omega.importance if n not in params]
        if missing:
            raise ValueError(f"Omega covers parameters that do not train here, e.g. {missing[:3]}")
        names = list(self.omega.importance) or list(params)
        self._local = local = sharding.LocalShards(self.model_wrapped, {n: params[n] for n in names})
        resumed = self._resume_dir and (Path(self._resume_dir) / CONFIG_NAME).is_file()
        source = self._resume_dir if resumed else self._omega_dir
        if source:
            loaded = load_omega_shards(source, local.shards, local.values())
            self._adopt(loaded)
        elif not self.omega.is_sharded:
            self.omega.reshard(local.shards)
        elif any(self.omega.shards[n] != s for n, s in local.shards.items() if n in self.omega.shards):
            raise ValueError("Omega's shards do not match this engine's partitioning (world size changed?)")
        values = local.values()
        names = list(self.omega.importance)
        return (
            [values[n] for n in names],
            [self.omega[n] for n in names],
            [self.omega.anchors[n] for n in names],
        )

    def apply_sharded_penalty(self) -> None:
        """grad_local += loss_scale * 2 lambda Omega_local (theta_local - theta*_local) (Eq. 3), no communication."""
        if self._penalty_terms is None and (self.penalty_active or self._resume_dir or self._omega_dir):
            self._penalty_terms = self._bind_sharded_penalty()
        if not self.penalty_active:
            return
        theta, omegas, anchors = self._penalty_terms
        grads = self._local.grads()
        names = list(self.omega.importance)
        omegas = [o if o.dtype == t.dtype else o.to(t.dtype) for o, t in zip(omegas, theta)]  # bf16 storage
        anchors = [a if a.dtype == t.dtype else a.to(t.dtype) for a, t in zip(anchors, theta)]
        add_penalty_grad_(
            theta,
            [grads[n] for n in names],
            omegas,
            anchors,
            self.mas_config.penalty_weight,
            self._local.loss_scale(),  # local gradients are still scaled by fp16's loss scale
        )
        self._local.commit_grads()

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if self.is_deepspeed_enabled and resume_from_checkpoint:
            if resume_from_checkpoint is True:
                from transformers.trainer_utils import get_last_checkpoint

                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            self._resume_dir = resume_from_checkpoint  # DeepSpeed resumes without _load_from_checkpoint
            self._penalty_terms = None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if self.is_deepspeed_enabled:
            self._wrap_zero_step()
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients and not self.is_deepspeed_enabled:
            self.apply_penalty()  # after the last micro-batch's backward, before clipping and step
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.penalty_active and self._penalty_terms is not None:
            logs["mas_penalty"] = round(self.penalty(), 8)
        super().log(logs, start_time)

    def penalty(self) -> float:
        """lambda sum Omega (theta - theta*)^2 at the current weights (logged as `mas_penalty`).

        Computed when logged, not at every step: the step itself only adds the gradient. Under
        ZeRO every rank must call it (its slices' parts are summed across ranks)."""
        theta, omegas, anchors = self._penalty_terms
        omegas = [o.to(t.dtype) for o, t in zip(omegas, theta)]  # bf16 storage
        anchors = [a.to(t.dtype) for a, t in zip(anchors, theta)]
        value = penalty_value(theta, omegas, anchors, self.mas_config.penalty_weight).cpu()
        return float(sharding.all_reduce_sum(value) if self.omega.is_sharded else value)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if not self.omega.is_empty and not self.omega.is_sharded and self.args.should_save:
            self.omega.save_pretrained(output_dir or self.args.output_dir, model=self.model)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.omega.is_sharded:  # every rank takes part; rank 0 writes one full tensor at a time
            save_omega_consolidated(self.omega, output_dir or self.args.output_dir)

    def create_model_card(self, *args: Any, tags: str | list[str] | None = None, **kwargs: Any) -> None:
        """The Trainer's card, tagged, with a section on the Omega saved beside the model."""
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        super().create_model_card(*args, tags=list(dict.fromkeys([*tags, *TAGS])), **kwargs)
        if self.is_world_process_zero() and not self.omega.is_empty:
            update_model_card(self.args.output_dir, self.omega)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        if (Path(resume_from_checkpoint) / CONFIG_NAME).is_file():
            self._adopt(Omega.from_pretrained(resume_from_checkpoint, model=self.model))
            self._penalty_terms = None

    def _adopt(self, loaded: Omega) -> None:
        """Take a checkpoint's Omega into `self.omega` (the same object: callers' references stay
        valid); its config applies only where the trainer was given none."""
        self.omega.__dict__.update(loaded.__dict__)
        if not self._config_given:
            self.mas_config = self.omega.config
