"""MASMixin: the MAS penalty (Eq. 3) for any `transformers.Trainer` subclass.

    class MyTrainer(MASMixin, SomeTrainer): ...          # MASTrainer = MASMixin + Trainer
    trainer = MyTrainer(model, args, train_dataset=task_2, mas_config=cfg, omega=omega)
    trainer.train()

The penalty's gradient 2 lambda Omega (theta - theta*) is added once per optimizer step, after the
task loss's backward of the last micro-batch and before clipping and the optimizer step, so the
update is exactly that of the loss of Eq. 3 whatever the gradient accumulation or loss
normalisation. `mas_penalty` (lambda sum Omega (theta - theta*)^2 at the weights of the logged step)
joins the training logs. Omega and theta* are saved with every checkpoint and restored by
`resume_from_checkpoint`; the model card gets a section on the tasks they protect.

Under DeepSpeed ZeRO-1/2/3 each rank holds only its slices of Omega and theta*
(`masllm.trainer.zero`): the penalty is added inside the ZeRO optimizer's step, checkpoints carry
the consolidated Omega, and `omega=` may be a saved directory, read slice by slice on every rank.
Under FSDP2 (`fsdp_version: 2`) Omega and theta* are DTensors sharded like the parameters
(`masllm.trainer.fsdp`): the penalty is added to the local gradient shards where it is for one
process; checkpoints, `omega=<dir>` and resume work as under ZeRO. FSDP1 is refused.

Divergence stops training with `DivergenceError` before a checkpoint of the diverged step is written
(a non-finite loss, gradient norm or penalty), and plain SGD whose step on the penalty would be
unstable gets a warning with the numbers (`masllm.trainer.guards`).

The trainer never estimates importance: after `train()`, call `masllm.compute_importance` on the
task's unlabeled data and `omega.merge(...)` (the recipe does exactly that).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import MASConfig
from ..distributed import comm, fsdp
from ..omega import Omega
from ..omega.checkpoint import config_from_meta
from ..omega.hub import TAGS, update_model_card
from ..omega.io import CONFIG_NAME, load_meta
from ..omega.sharded import save_omega_consolidated
from ..penalty import BoundPenalty
from .fsdp import FSDPPenalty
from .guards import DivergenceError, divergence_message, is_finite, warn_if_unstable
from .zero import ShardedPenalty, wrap_optimizer_step


class MASMixin:
    """Makes a Trainer's optimizer steps follow the gradient of L_n + lambda sum Omega (theta - theta*)^2.

    Put it first in the bases (`class T(MASMixin, SFTTrainer)`): it takes `mas_config` and `omega`
    and hands every other argument to the Trainer.
    """

    def __init__(
        self,
        *args: Any,
        mas_config: MASConfig | None = None,
        omega: Omega | str | Path | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._omega_dir: str | None = None  # ZeRO, FSDP2: a saved Omega, read slice by slice when bound
        if isinstance(omega, (str, Path)):
            if self.is_sharded_backend:  # never materialise the full Omega on a rank
                self._omega_dir = str(omega)
                omega = Omega(config=config_from_meta(load_meta(Path(omega))))
            else:
                omega = Omega.from_pretrained(omega, model=self.model)
        self._config_given = mas_config is not None  # an explicit config wins over a loaded Omega's
        self.mas_config = mas_config or (omega.config if omega is not None else MASConfig())
        self.omega = omega if omega is not None else Omega(config=self.mas_config)
        if not self.omega.is_empty:
            self.omega.validate(self.model)
        self._penalty: BoundPenalty | ShardedPenalty | None = None
        self._resume_dir: str | None = None
        self._nonfinite_loss: float | None = None  # a micro-batch loss of the current step that was NaN/Inf

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if fsdp.enable_fsdp2_on_cpu(self.accelerator, self.args.fsdp_plugin_args):
            self.is_fsdp_enabled = True  # accelerate 1.16 runs DDP for FSDP on CPU ranks
        if self.is_fsdp_enabled and self.accelerator.state.fsdp_plugin.fsdp_version != 2:
            raise ValueError("masllm runs under FSDP2 (fsdp_version: 2), not FSDP1 (flat parameters)")

    @property
    def is_sharded_backend(self) -> bool:
        """DeepSpeed ZeRO or FSDP2: each rank holds its shards of the parameters, Omega and theta*."""
        return self.is_deepspeed_enabled or self.is_fsdp_enabled

    @property
    def penalty_active(self) -> bool:
        return not self.omega.is_empty and self.mas_config.reg_lambda > 0

    # One process or DDP: full tensors, after the last micro-batch's backward.
    def apply_penalty(self) -> None:
        """Add 2 lambda Omega (theta - theta*) to the gradients (Eq. 3); called once per optimizer step."""
        if not self.penalty_active:
            return
        if self._penalty is None:
            self._penalty = BoundPenalty.for_model(self.model, self.omega.importance, self.omega.anchors)
            names = list(self.omega.importance)  # keep one copy: Omega now lives beside the parameters
            self.omega.importance.update(zip(names, self._penalty.omegas))
            self.omega.anchors.update(zip(names, self._penalty.anchors))
            self._check_stability()
        self._penalty.add_grad_(self.mas_config.penalty_weight, grad_scale=self._grad_scale())

    def _grad_scale(self) -> float:
        scaler = getattr(self.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    # DeepSpeed ZeRO: this rank's slices, inside the ZeRO optimizer's step; FSDP2: its DTensor shards,
    # after the last micro-batch's backward.
    def apply_sharded_penalty(self) -> None:
        """grad_local += loss_scale * 2 lambda Omega_local (theta_local - theta*_local), no communication."""
        # bound whenever there is an Omega (also at lambda = 0): it then holds this rank's shards
        if self._penalty is None and (not self.omega.is_empty or self._resume_dir or self._omega_dir):
            resumed = self._resume_dir and (Path(self._resume_dir) / CONFIG_NAME).is_file()
            source = self._resume_dir if resumed else self._omega_dir
            if self.is_fsdp_enabled:
                self._penalty = FSDPPenalty(self.model, self.omega, source, self._adopt, self._grad_scale)
            else:
                self._penalty = ShardedPenalty(self.model_wrapped, self.omega, source, adopt=self._adopt)
            self._check_stability()  # every rank binds here, at the same step: the max is a collective
        if self.penalty_active:
            self._penalty.add_grad_(self.mas_config.penalty_weight)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if self.is_sharded_backend and resume_from_checkpoint:
            if resume_from_checkpoint is True:
                from transformers.trainer_utils import get_last_checkpoint

                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            self._resume_dir = resume_from_checkpoint  # read slice by slice when the penalty is bound
            self._penalty = None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if self.is_deepspeed_enabled:
            wrap_optimizer_step(self.model_wrapped, self.apply_sharded_penalty)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients and not self.is_deepspeed_enabled:
            # after the last micro-batch's backward (FSDP2: its reduce-scatter), before clipping and step
            if self.is_fsdp_enabled:
                self.apply_sharded_penalty()
            else:
                self.apply_penalty()
        if not torch.isfinite(loss).all():  # one sync, as the Trainer's own NaN filter does
            self._nonfinite_loss = float(loss.detach().float().max())
        return loss

    def _maybe_log_save_evaluate(self, tr_loss: Any, grad_norm: Any, *args: Any, **kwargs: Any) -> None:
        """Before the Trainer logs and saves this step: stop if it diverged (`masllm.trainer.guards`)."""
        bad = self._nonfinite_loss is not None or not is_finite(grad_norm)
        if bad and self.args.fp16 and self.accelerator.optimizer_step_was_skipped:
            bad = False  # fp16 overflow: the loss scaler skipped this step and lowers its scale
        if comm.world()[1] > 1:
            bad = bool(comm.all_reduce_max(int(bad)))  # every rank stops, not only the one that saw it
        loss, self._nonfinite_loss = self._nonfinite_loss, None
        if bad:
            raise DivergenceError(divergence_message(self.state.global_step, loss, grad_norm))
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _check_stability(self) -> None:
        """Warn once when plain SGD's step on the penalty alone would be unstable (guards)."""
        if not self.penalty_active:
            return
        local = max((float(t.max()) for t in self.omega.importance.values() if t.numel()), default=0.0)
        max_omega = comm.all_reduce_max(local) if self.omega.is_sharded else local
        warn_if_unstable(self.optimizer, self.mas_config.penalty_weight, max_omega)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.penalty_active and self._penalty is not None:
            value = self.penalty()
            if not math.isfinite(value):
                raise DivergenceError(
                    divergence_message(self.state.global_step, None, logs.get("grad_norm"), value)
                )
            logs["mas_penalty"] = round(value, 8)
        super().log(logs, start_time)

    def penalty(self) -> float:
        """lambda sum Omega (theta - theta*)^2 at the current weights (logged as `mas_penalty`).

        Computed when logged, not at every step: the step itself only adds the gradient. Under
        ZeRO and FSDP2 every rank must call it (its shards' parts are summed across ranks)."""
        if isinstance(self._penalty, ShardedPenalty):
            return self._penalty.value(self.mas_config.penalty_weight)
        return float(self._penalty.value(self.mas_config.penalty_weight))

    # Checkpoints, resume and the model card.
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
        if not self.is_fsdp_enabled and (Path(resume_from_checkpoint) / CONFIG_NAME).is_file():
            self._adopt(Omega.from_pretrained(resume_from_checkpoint, model=self.model))
            self._penalty = None

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """A tied weight (GPT-2's lm_head = wte) is not saved and not missing: do not warn about it."""
        params, every = (
            dict(self.model.named_parameters()),
            dict(self.model.named_parameters(remove_duplicate=False)),
        )
        tied = set(every) - set(params)
        missing = [k for k in load_result.missing_keys if k not in tied]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def _adopt(self, loaded: Omega) -> None:
        """Take a checkpoint's Omega into `self.omega` (the same object: callers' references stay
        valid); its config applies only where the trainer was given none."""
        self.omega.__dict__.update(loaded.__dict__)
        if not self._config_given:
            self.mas_config = self.omega.config
