"""Importance from deployment data (MAS, Fig. 1 and Sec. 4.4): protect what the model is used for.

MAS needs no labels, so Omega can be learned from the inputs a deployed model actually serves, or
is evaluated on, "in an online fashion whenever a new data point is fed to the network" (Sec. 4.1).
Data seen often weighs more; the next task then keeps what is used and may overwrite what is not.

`DeploymentImportance` attaches to a model with a forward pre-hook that records the inputs of
every forward pass run without gradients (serving, `trainer.evaluate()` / `predict()`, generation
steps; training forward passes are ignored). Every `buffer_size` samples it computes Omega on them
(`compute_importance` with the given MASConfig, any estimator) and folds it into a running mean
weighted by sample counts, which equals Eq. 2 over all samples seen:

    Omega <- (N Omega + n Omega_batch) / (N + n),   N <- N + n

    tracker = DeploymentImportance(model, MASConfig()).attach()
    trainer.evaluate(deploy_set)            # or model(**batch) / generate() while serving
    omega.merge(tracker.omega("deployment"))

`observe(batch)` feeds batches explicitly (the recipe's "deployment" importance set, or a
serving loop that keeps its own inputs). Memory: the buffer holds up to `buffer_size` inputs on CPU.
Not under DeepSpeed ZeRO: importance is computed with the plain single-process path (serving
models are usually not partitioned); for a ZeRO model, call compute_importance on the collected
inputs on every rank instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..batch import Batch, batch_size, inputs_of
from ..config import MASConfig
from ..importance import compute_importance
from ..omega import Omega


def _to_cpu(x: Batch) -> Batch:
    if isinstance(x, Mapping):
        return {k: v.detach().cpu() for k, v in x.items()}
    return x.detach().cpu()


class DeploymentImportance:
    """Running Eq. 2 over the unlabeled inputs a model serves."""

    def __init__(self, model: nn.Module, config: MASConfig | None = None, buffer_size: int = 64) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.model, self.config, self.buffer_size = model, config or MASConfig(), buffer_size
        self.importance: dict[str, torch.Tensor] = {}
        self.num_samples = 0
        self._buffer: list[Batch] = []
        self._buffered = 0
        self._handle: Any = None
        self._computing = False

    def attach(self) -> DeploymentImportance:
        """Record the inputs of every no-grad forward pass of the model from now on."""
        if self._handle is None:
            self._handle = self.model.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._computing or torch.is_grad_enabled():
            return
        if args and isinstance(args[0], torch.Tensor):
            self.observe(args[0])
        else:
            tensors = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
            if "input_ids" in tensors or "pixel_values" in tensors or "inputs_embeds" in tensors:
                self.observe(tensors)

    def observe(self, batch: Batch) -> None:
        """Add a batch of served inputs (labels, if any, are dropped); may trigger an update."""
        x = inputs_of(batch)
        self._buffer.append(_to_cpu(x))
        self._buffered += batch_size(x)
        if self._buffered >= self.buffer_size:
            self.flush()

    def flush(self) -> None:
        """Fold the buffered inputs into Omega: the sample-weighted running mean of Eq. 2."""
        if not self._buffer:
            return
        batches = self._buffer
        self._buffer, self._buffered = [], 0
        self._computing = True
        try:
            with torch.enable_grad():
                new = compute_importance(self.model, batches, self.config, show_progress=False)
        finally:
            self._computing = False
        n = new.tasks[0]["num_samples"]  # samples of Eq. 2: sequences, also of packed rows
        total = self.num_samples + n
        for name, t in new.importance.items():
            old = self.importance.get(name, torch.zeros_like(t))
            self.importance[name] = old * (self.num_samples / total) + t * (n / total)
        self.num_samples = total

    def omega(self, task_name: str = "deployment") -> Omega:
        """Omega over every input seen so far, anchored at the model's current weights."""
        self.flush()
        if not self.num_samples:
            raise ValueError("DeploymentImportance has seen no inputs yet")
        task = {"name": task_name, "num_samples": self.num_samples, "method": self.config.method}
        importance = {n: t.clone() for n, t in self.importance.items()}
        return Omega(importance, config=self.config, tasks=[task]).set_anchors(self.model)
