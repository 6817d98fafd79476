"""Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017): importance from the training path.

While a task trains, each parameter's contribution to the drop in loss is integrated along the
optimisation trajectory, and at the end normalised by how far the parameter moved:

    w_k    = - sum_steps g_k(t) * delta theta_k(t)          (path integral of the gradient, Eq. 3)
    Omega_k = max(0, w_k) / ((theta_k(end) - theta_k(start))^2 + xi)                      (Eq. 5)

xi (`SIConfig.si_xi`) damps parameters that barely moved. Omegas of successive tasks are summed
(MASConfig `merge='sum'`), and the penalty is the shared c sum Omega (theta - theta*)^2 (Zenke's
form, no 1/2, so `reg_lambda` = c). Strength: c is tuned per benchmark in the paper (no universal
value); FACIL's defaults (src/approach/path_integral.py) are lamb = c = 0.1 and damping xi = 0.1.

Usage (the importance is left on the model and read back by the registered estimator 'si'):

    si = SynapticIntelligence(cfg)                     # cfg = SIConfig(reg_lambda=0.1, si_xi=0.1)
    MASTrainer(model, args, train_dataset=task, mas_config=cfg, omega=omega, callbacks=[si]).train()
    omega.merge(compute_importance(model, data, cfg))  # or omega.merge(si.omega(model))

Departures: g is the gradient the optimizer steps on (task loss + the penalty gradient MASTrainer
adds, after clipping; Zenke's code uses the same, van de Ven's too), and delta theta the actual
update; negative w (parameters whose moves raised the loss) are set to 0 so Omega stays >= 0.

Not under DeepSpeed ZeRO: the callback reads full `p.grad` and parameter values around each
optimizer step, which ZeRO-2/3 partition (and ZeRO steps inside backward). It raises there.
Memory: three extra copies of the trainable parameters (start, previous step, running w).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ..batch import Batch
from ..config import MASConfig
from ..importance.accumulate import count_only
from ..importance.context import ImportanceContext, ImportanceSums
from ..omega import Omega
from ..registry import register_estimator


@dataclass
class SIConfig(MASConfig):
    """MASConfig for SI: the path-integral importance and its damping xi."""

    method: str = field(default="si", metadata={"help": "'si': Omega from the training path."})
    si_xi: float = field(
        default=0.1,
        metadata={
            "help": "SI damping xi in Omega = sum_k w_k / ((Delta theta)^2 + xi) (Zenke et al. 2017, Eq. 5; "
            "FACIL's default 0.1). > 0."
        },
    )

    def validate(self) -> None:
        super().validate()
        if not self.si_xi > 0:
            raise ValueError(f"{type(self).__name__}.si_xi must be > 0, got {self.si_xi}")


# model -> its last task's SI Omega, for the 'si' estimator (compute_importance)
_RESULTS: weakref.WeakKeyDictionary[nn.Module, dict[str, torch.Tensor]] = weakref.WeakKeyDictionary()


def si_result(model: nn.Module) -> dict[str, torch.Tensor]:
    """The Omega the last `SynapticIntelligence` run on `model` produced (ValueError if none)."""
    if model not in _RESULTS:
        raise ValueError(
            "method='si' reads the path integral recorded while the task trained: pass "
            "masllm.SynapticIntelligence(config) in the task's MASTrainer callbacks first"
        )
    return _RESULTS[model]


class SynapticIntelligence(TrainerCallback):
    """Accumulates w_k = -sum g delta theta during `train()` and turns it into Omega at the end."""

    def __init__(self, config: MASConfig | None = None) -> None:
        if config is not None and not isinstance(config, SIConfig):  # a plain MASConfig: default xi
            config = SIConfig(**{**config.to_dict(), "method": "si"})
        self.config = config or SIConfig()
        self._params: dict[str, nn.Parameter] = {}
        self._start: dict[str, torch.Tensor] = {}
        self._before: dict[str, torch.Tensor] = {}
        self._grads: dict[str, torch.Tensor] = {}
        self.path: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any):
        if model is None:
            raise ValueError("SynapticIntelligence needs the Trainer's model")
        if getattr(args, "deepspeed", None) or any(hasattr(p, "ds_numel") for p in model.parameters()):
            raise ValueError("SynapticIntelligence does not support DeepSpeed ZeRO (it reads full gradients)")
        self._params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self._start = {n: p.detach().float().clone() for n, p in self._params.items()}
        self.path = {n: torch.zeros_like(t) for n, t in self._start.items()}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any):
        """g(t) and theta before the step (the gradient is final here: accumulated, penalised, clipped)."""
        self._grads = {
            n: p.grad.detach().float().clone() for n, p in self._params.items() if p.grad is not None
        }
        self._before = {n: self._params[n].detach().float().clone() for n in self._grads}

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any):
        for n, g in self._grads.items():
            delta = self._params[n].detach().float() - self._before[n]  # delta theta(t)
            self.path[n].sub_(g * delta)  # Eq. 3: w -= g delta theta
        self._grads, self._before = {}, {}

    def on_train_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any):
        xi = self.config.si_xi
        _RESULTS[model] = {
            n: w.clamp(min=0) / ((self._params[n].detach().float() - self._start[n]).square() + xi)  # Eq. 5
            for n, w in self.path.items()
        }

    def omega(self, model: nn.Module, task_name: str = "task") -> Omega:
        """The last task's Omega, anchored at the model's current weights (merge it into the running one)."""
        task = {"name": task_name, "num_samples": 0, "method": "si"}
        importance = {n: t.clone() for n, t in si_result(model).items()}
        return Omega(importance, config=self.config, tasks=[task]).set_anchors(model)


@register_estimator("si", config_class=SIConfig)
def si_importance(ctx: ImportanceContext, batches: Iterable[Batch]) -> ImportanceSums:
    """The 'si' estimator: hands `compute_importance` the Omega a `SynapticIntelligence` callback
    recorded on this model while its last task trained. The data is only counted (no forward pass),
    so the task record keeps its sample count and every method is chosen the same way
    (`MASConfig.method`, the recipe's `--method`). The sums normalise to the recorded Omega."""
    recorded = si_result(ctx.model)
    n_samples, n_batches = count_only(ctx, batches)
    denom = n_samples if ctx.config.normalize == "samples" else n_batches
    return ImportanceSums({n: recorded[n] * denom for n in ctx.params}, n_samples, n_batches)
