"""Exact sum_k |g_k| in one backward pass: the |.| of Eq. 2 taken per sample, batched.

For a batch of B samples whose scalar outputs are summed, autograd gives sum_k g_k; Eq. 2 needs
sum_k |g_k|. Each layer's per-sample gradient is a product of quantities that backward already has:
for a Linear layer y = W x + b over positions t, g_k(W) = sum_t dy_kt x_kt^T and g_k(b) = sum_t dy_kt.
`PerSampleAbsGrad` makes autograd accumulate sum_k |g_k| into `p.grad` instead of sum_k g_k, so
gradient accumulation over micro-batches -- and, under DeepSpeed, the reduce-scatter of gradients --
work unchanged on the right quantity. Two routes:

- Linear, Conv1D and Embedding layers (and a weight tied between an embedding and an output layer)
  go through `fused.FusedLayers`: their backward computes sum_k |g_k| *instead of* autograd's weight
  gradient, so exact importance costs about a plain backward;
- every other module that owns parameters is hooked: its input is captured on forward, its output
  gradient on backward, the per-sample gradients of its own parameters are formed (`layers.py`) and
  a tensor hook on the parameter replaces autograd's batch gradient with their transformed sum.

Hook-path fast paths: nn.LayerNorm (and the fused kinds when not fused). Any other
module that owns parameters uses `torch.func` (vmap of a vjp through that module alone). A parameter
used several times (tied embeddings) sums its per-sample contributions before |.|. Where a gradient
cannot be attributed to samples (a parameter used outside its module's forward, a tuple output,
batch not in dim 0), `PerSampleMismatch` is raised and the caller falls back to one sample per
backward pass. With `check=True` the hook path's per-sample gradients are verified to add up to
autograd's batch gradient, which catches layers whose forward the fast paths misread (the fused
route computes its layers' forward itself, from the same functional op, so it needs no such check).

A sample is a row of the batch or, in a packed (padding-free) batch, one of the sequences that share
a row: `start_batch` takes the batch's `Segments`, and every per-layer product reduces over them.
The exactness check's tolerance follows the dtype the layer computed in (bf16 under autocast or for
a bf16 model: its rounding, not a misread forward, separates the two sums there).

Per-sample exactness assumes samples do not interact in the forward pass (true in eval mode; not
for BatchNorm in train mode; packed sequences must be kept apart by the attention, see `segments`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from .fused import FusedLayers
from .layers import PerSampleMismatch, Transform, fast_path, generic_per_sample, reduce_samples
from .segments import Segments

__all__ = ["PerSampleAbsGrad", "PerSampleMismatch", "Transform"]


class PerSampleAbsGrad:
    """While active, backward accumulates sum_k |g_k| into `p.grad` for every parameter given.

    `transform` replaces |.| by another elementwise map with fn(0) = 0: `torch.square` gives
    sum_k g_k^2, the diagonal Fisher of EWC / SPP from per-sample log-likelihood gradients.
    """

    def __init__(
        self,
        model: nn.Module,
        params: dict[str, nn.Parameter],
        check: bool = True,
        transform: Transform = torch.abs,
    ) -> None:
        self.check = check
        self.transform = transform
        self.segments = Segments(0)
        self._replaying = False
        # Linear / Conv1D / Embedding layers: sum_k fn(g_k) in place of autograd's gradient
        self.fused = FusedLayers(model, params, transform, replaying=lambda: self._replaying, check=check)
        params = {n: p for n, p in params.items() if id(p) not in self.fused.covered}
        self.params = dict(params)
        self._handles: list[Any] = []
        # Keyed by parameter name, reached through (module, attribute name): FSDP2 swaps unsharded
        # parameters into the modules during forward, so the tensor autograd sees is not the one given
        # here. `live` is the tensor a forward used (the given one, or FSDP2's unsharded one).
        self.live: dict[str, torch.Tensor] = {}
        self._reset()
        name_of = {id(p): n for n, p in params.items()}
        for module in model.modules():
            own = [(a, name_of[id(p)]) for a, p in module.named_parameters(recurse=False) if id(p) in name_of]
            if own:
                self._handles.append(module.register_forward_pre_hook(partial(self._hook_live, own)))
                hook = partial(self._on_forward, own)
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
                if isinstance(module, nn.Embedding):
                    self._handles.append(module.register_forward_pre_hook(self._expand_broadcast_ids))
        for n, p in params.items():
            self._handles.append(p.register_hook(partial(self._on_param_grad, n)))

    def _reset(self) -> None:
        self.uses: dict[str, int] = {}
        self.arrived: dict[str, int] = {}
        self.pending: dict[str, torch.Tensor] = {}
        self.result: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.tolerance: dict[str, float] = {}
        self.seen_in_forward: set[str] = set()  # parameters used outside a backward pass
        self.unattributed: set[str] = set()

    @property
    def batch_size(self) -> int:
        """Rows of the current batch (its leading dim; samples: `segments.num_samples`)."""
        return self.segments.rows

    def start_batch(self, segments: Segments | int) -> None:
        """Call before each forward pass with the batch's samples (an int: one sample per row)."""
        self._reset()
        self.segments = segments if isinstance(segments, Segments) else Segments(segments)
        self.fused.start_batch(self.segments)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.fused.remove()

    def __enter__(self) -> PerSampleAbsGrad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _expand_broadcast_ids(self, module: nn.Module, args: tuple) -> tuple | None:
        """Position ids of shape (1, T) are broadcast over the batch after lookup; expanding them to
        (B, T) first changes no value but gives each sample its own rows of the output."""
        ids = args[0] if args else None
        if (
            not self._replaying
            and isinstance(ids, torch.Tensor)
            and ids.dim() > 1
            and ids.shape[0] == 1 < self.batch_size
        ):
            return (ids.expand(self.batch_size, *ids.shape[1:]), *args[1:])
        return None

    # forward: remember each call's input, count the uses of each parameter
    def _on_forward(
        self, own: list[tuple[str, str]], module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        if not torch.is_grad_enabled() or self._replaying:  # not while generic_per_sample re-runs a module
            return
        ids = [n for _, n in own]
        in_backward = torch._C._current_graph_task_id() != -1
        if in_backward and all(i in self.seen_in_forward for i in ids):
            return  # non-reentrant checkpointing recomputing the forward: not another use
        B, seg = self.batch_size, self.segments

        def samples_in(t: Any) -> bool:
            """Rows in dim 0; packed: positions in dim 1 (in any dim for the torch.func path)."""
            if not seg.packed:
                return isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == B
            dim = seg.position_dim(t)
            return dim == 1 or (dim is not None and fast_path(module) is None)

        ok = (
            isinstance(output, torch.Tensor)
            and output.requires_grad
            and samples_in(output)
            and not any(
                isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == B for v in kwargs.values()
            )
            and len(args) > 0
            and samples_in(args[0])
        )
        if not ok:
            self.unattributed.update(ids)
            return
        for i in ids:
            self.uses[i] = self.uses.get(i, 0) + 1
        if not in_backward:
            self.seen_in_forward.update(ids)
        output.register_hook(partial(self._on_output_grad, module, own, args, kwargs))

    def _hook_live(self, own: list[tuple[str, str]], module: nn.Module, args: tuple) -> None:
        """Before forward: hook the tensor this forward uses where it is not the parameter given
        (FSDP2's unsharded parameter, a persistent tensor: hooked once). A pre-hook, as an FSDP2
        module's own post-forward hook puts the sharded parameter back."""
        if not torch.is_grad_enabled() or self._replaying:
            return
        for attr, n in own:
            t = getattr(module, attr)
            if t is not self.params[n] and self.live.get(n) is not t:
                self._handles.append(t.register_hook(partial(self._on_param_grad, n)))
            self.live[n] = t

    # backward, at the layer's output: form the per-sample gradients of its parameters
    def _on_output_grad(
        self, module: nn.Module, own: list[tuple[str, str]], args: tuple, kwargs: dict, g: torch.Tensor
    ) -> None:
        fast = fast_path(module)
        with torch.no_grad():
            if fast:
                per_sample = fast(module, args[0], g, self.segments)
            else:
                self._replaying = True  # the module's children must not count this re-run as a use
                try:
                    per_sample = generic_per_sample(
                        module, args, kwargs, [a for a, _ in own], g, self.segments
                    )
                finally:
                    self._replaying = False
            tol = _tolerance(g.dtype, args[0].dtype)
            for attr, n in own:
                self.tolerance[n] = max(tol, self.tolerance.get(n, 0.0))
                self._collect(n, per_sample[attr])

    def _collect(self, pid: str, ps: Any) -> None:
        if self.uses[pid] == 1:
            signed = ps.sum() if self.check else None  # before transformed_sum, which consumes ps
            self.result[pid] = (ps.transformed_sum(self.transform), signed)
            return
        if pid not in self.pending:
            p = self.live.get(pid, self.params[pid])
            shape = getattr(p, "ds_shape", p.shape)  # a ZeRO-3 placeholder's own shape is (0,)
            self.pending[pid] = p.new_zeros((self.segments.num_samples, *shape), dtype=torch.float32)
        ps.add_to(self.pending[pid])
        self.arrived[pid] = self.arrived.get(pid, 0) + 1
        if self.arrived[pid] == self.uses[pid]:
            self._finalize(pid)

    def _finalize(self, pid: str) -> None:
        buf = self.pending.pop(pid)
        signed = buf.sum(0) if self.check else None
        self.result[pid] = (reduce_samples(buf, self.transform), signed)

    # backward, at the parameter: hand autograd sum_k |g_k| (or fn(g_k)) instead of sum_k g_k
    def _on_param_grad(self, pid: str, grad: torch.Tensor) -> torch.Tensor:
        name = pid
        if pid in self.pending:
            # Some uses never got a gradient (a tied lm_head whose logits the loss does not use):
            # their contribution is zero, and every one that will arrive has, since this
            # parameter's gradient depends on all of them.
            self._finalize(pid)
        if pid in self.result and pid not in self.unattributed:
            transformed, signed = self.result.pop(pid)
            if signed is not None:
                err = (signed.float() - grad.float()).norm()
                if (
                    err
                    > max(self.tolerance.get(pid, 0.0), _tolerance(grad.dtype)) * grad.float().norm() + 1e-6
                ):
                    raise PerSampleMismatch(
                        f"per-sample gradients of {name!r} do not add up to its batch gradient "
                        f"(relative error {float(err / (grad.float().norm() + 1e-12)):.2e})"
                    )
            return transformed.to(grad.dtype)
        if self.segments.num_samples == 1:  # one sample: |batch gradient| is exact
            return self.transform(grad)
        raise PerSampleMismatch(f"no per-sample gradient could be formed for {name!r}")


def _tolerance(*dtypes: torch.dtype) -> float:
    """Relative tolerance of the exactness check: 1e-3, or 4 roundings of the coarsest dtype (bf16:
    3%; a misread forward is off by order 1)."""
    eps = max((torch.finfo(d).eps for d in dtypes if d.is_floating_point), default=0.0)
    return max(1e-3, 4 * eps)
