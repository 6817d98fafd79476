"""Exact sum_k |g_k| in one backward pass: the |.| of Eq. 2 taken per sample, batched.

For a batch of B samples whose scalar outputs are summed, autograd gives sum_k g_k; Eq. 2 needs
sum_k |g_k|. Each layer's per-sample gradient is a product of quantities that backward already has:
for a Linear layer y = W x + b over positions t, g_k(W) = sum_t dy_kt x_kt^T and g_k(b) = sum_t dy_kt.
`PerSampleAbsGrad` captures each layer's input on forward and its output gradient on backward, forms
the per-sample gradients of the layer's own parameters, and makes autograd accumulate sum_k |g_k|
into `p.grad` instead of sum_k g_k (a tensor hook on the parameter replaces its gradient). So
gradient accumulation over micro-batches -- and, under DeepSpeed, the reduce-scatter of gradients --
work unchanged on the right quantity.

Fast paths: nn.Linear, transformers' Conv1D, nn.Embedding (sparse rows), nn.LayerNorm. Any other
module that owns parameters uses `torch.func` (vmap of a vjp through that module alone). A parameter
used several times (tied embeddings) sums its per-sample contributions before |.|. Where a gradient
cannot be attributed to samples (a parameter used outside its module's forward, a tuple output,
batch not in dim 0), `PerSampleMismatch` is raised and the caller falls back to one sample per
backward pass. With `check=True` the per-sample gradients are verified to add up to autograd's batch
gradient, which catches layers whose forward the fast paths misread.

Per-sample exactness assumes samples do not interact in the forward pass (true in eval mode; not
for BatchNorm in train mode).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

Transform = Callable[[torch.Tensor], torch.Tensor]


class PerSampleMismatch(RuntimeError):
    """Per-sample gradients could not be formed for some parameter in this batch."""


def reduce_samples(t: torch.Tensor, fn: Transform) -> torch.Tensor:
    """sum_k fn(t_k) over dim 0, consuming `t`: |.| and square run in place (no (B, *shape) temporary)."""
    inplace = {torch.abs: torch.Tensor.abs_, torch.square: torch.Tensor.square_}.get(fn)
    return (inplace(t) if inplace else fn(t)).sum(0)


class _Dense:
    """Per-sample gradients as a dense (B, *shape) tensor."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t

    def transformed_sum(self, fn: Transform) -> torch.Tensor:
        return reduce_samples(self.t, fn)

    def sum(self) -> torch.Tensor:
        return self.t.sum(0)

    def add_to(self, buf: torch.Tensor) -> None:
        buf += self.t


class _Rows:
    """Per-sample gradients of an embedding table, as the rows each sample touched."""

    def __init__(self, ids: torch.Tensor, grad: torch.Tensor, num_rows: int) -> None:
        B, d = ids.shape[0], grad.shape[-1]
        self.num_rows, self.batch = num_rows, B
        key = (torch.arange(B, device=ids.device)[:, None] * num_rows + ids.reshape(B, -1)).reshape(-1)
        self.keys, inverse = torch.unique(key, return_inverse=True)  # one entry per (sample, row)
        self.vals = grad.new_zeros(len(self.keys), d).index_add_(0, inverse, grad.reshape(-1, d))

    def _scatter(self, vals: torch.Tensor) -> torch.Tensor:
        return vals.new_zeros(self.num_rows, vals.shape[1]).index_add_(0, self.keys % self.num_rows, vals)

    def transformed_sum(self, fn: Transform) -> torch.Tensor:
        return self._scatter(fn(self.vals))  # rows a sample did not touch: fn(0) = 0

    def sum(self) -> torch.Tensor:
        return self._scatter(self.vals)

    def add_to(self, buf: torch.Tensor) -> None:
        buf.view(self.batch * self.num_rows, -1).index_add_(0, self.keys, self.vals)


class _Outer:
    """Per-sample gradients g_k x_k^T of a layer that sees one position per sample, kept factored:
    for |.| and square, sum_k fn(g_k x_k^T) = fn(G)^T fn(X), one matmul and no (B, out, in) tensor."""

    def __init__(self, g: torch.Tensor, x: torch.Tensor) -> None:
        self.g, self.x = g, x  # (B, out), (B, in)

    def transformed_sum(self, fn: Transform) -> torch.Tensor:
        if fn in (torch.abs, torch.square):
            return fn(self.g).T @ fn(self.x)
        return reduce_samples(self.dense(), fn)

    def sum(self) -> torch.Tensor:
        return self.g.T @ self.x

    def dense(self) -> torch.Tensor:
        return self.g[:, :, None] * self.x[:, None, :]

    def add_to(self, buf: torch.Tensor) -> None:
        buf += self.dense()


def _flat(x: torch.Tensor, B: int) -> torch.Tensor:
    return x.reshape(B, -1, x.shape[-1])  # (B, positions, features)


def _linear(module: nn.Linear, x: torch.Tensor, g: torch.Tensor) -> dict[str, Any]:
    if g.dim() == 2:  # one position per sample (an MLP): keep g_k x_k^T factored
        out: dict[str, Any] = {"weight": _Outer(g, x.to(g.dtype))}
        if module.bias is not None:
            out["bias"] = _Dense(g.clone())  # a copy: the reduction works in place, g is autograd's
        return out
    x, g = _flat(x, g.shape[0]), _flat(g, g.shape[0])
    out = {"weight": _Dense(torch.bmm(g.transpose(1, 2), x.to(g.dtype)))}  # (B, out, in)
    if module.bias is not None:
        out["bias"] = _Dense(g.sum(1))
    return out


def _conv1d(module: Conv1D, x: torch.Tensor, g: torch.Tensor) -> dict[str, Any]:
    x, g = _flat(x, g.shape[0]), _flat(g, g.shape[0])
    return {
        "weight": _Dense(torch.bmm(x.to(g.dtype).transpose(1, 2), g)),
        "bias": _Dense(g.sum(1)),
    }  # (B, in, out)


def _embedding(module: nn.Embedding, ids: torch.Tensor, g: torch.Tensor) -> dict[str, Any]:
    if module.padding_idx is not None:  # autograd gives the padding row no gradient
        g = g * (ids != module.padding_idx).unsqueeze(-1).to(g.dtype)
    return {"weight": _Rows(ids, g, module.num_embeddings)}


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor, g: torch.Tensor) -> dict[str, Any]:
    shape = module.normalized_shape
    xhat = nn.functional.layer_norm(x.to(g.dtype), shape, eps=module.eps)
    B = g.shape[0]
    out = {"weight": _Dense((g * xhat).reshape(B, -1, *shape).sum(1))}
    if module.bias is not None:
        out["bias"] = _Dense(g.reshape(B, -1, *shape).sum(1))
    return out


FAST_PATHS: dict[type, Callable[..., dict[str, Any]]] = {
    nn.Linear: _linear,
    Conv1D: _conv1d,
    nn.Embedding: _embedding,
    nn.LayerNorm: _layer_norm,
}


def _generic(
    module: nn.Module, args: tuple, kwargs: dict, names: list[str], g: torch.Tensor
) -> dict[str, Any]:
    """Per-sample gradients of `module`'s own parameters by vmap over a vjp through its forward."""
    B = g.shape[0]
    batched = [isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == B for a in args]
    params = {n: getattr(module, n).detach() for n in names}
    # every other tensor of the module (children's parameters too) enters as a constant: a real
    # leaf in the replay would get the inner backward's gradient accumulated into it
    rest = {
        n: t.detach() for n, t in (*module.named_parameters(), *module.named_buffers()) if n not in params
    }

    def one(sample_args: tuple, g_k: torch.Tensor) -> dict[str, torch.Tensor]:
        args_k = tuple(a.unsqueeze(0) if b else a for a, b in zip(sample_args, batched))
        call = lambda p: torch.func.functional_call(module, {**rest, **p}, args_k, kwargs)  # noqa: E731
        _, vjp_fn = torch.func.vjp(call, params)
        return vjp_fn(g_k.unsqueeze(0).to(g.dtype))[0]

    in_dims = (tuple(0 if b else None for b in batched), 0)
    # a clone: the inner backward may accumulate into its incoming gradient in place, and `g` is
    # still the outer backward's gradient of this module's output
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    grads = torch.func.vmap(one, in_dims=in_dims)(detached, g.clone())
    # clones: a vjp may return one parameter's gradient as a view of another's (ViT's cls_token is
    # a slice of what position_embeddings gets), and the reduction consumes them in place
    return {n: _Dense(t.clone()) for n, t in grads.items()}


def _fast_path(module: nn.Module) -> Callable[..., dict[str, Any]] | None:
    for kind, fn in FAST_PATHS.items():
        if type(module) is kind or (isinstance(module, kind) and type(module).forward is kind.forward):
            return fn
    return None


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
        self.names = {id(p): n for n, p in params.items()}
        self.params = {id(p): p for p in params.values()}
        self.batch_size = 0
        self._replaying = False
        self._handles: list[Any] = []
        self._reset()
        for module in model.modules():
            own = [n for n, p in module.named_parameters(recurse=False) if id(p) in self.names]
            if own:
                hook = partial(self._on_forward, own)
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
                if isinstance(module, nn.Embedding):
                    self._handles.append(module.register_forward_pre_hook(self._expand_broadcast_ids))
        for p in params.values():
            self._handles.append(p.register_hook(partial(self._on_param_grad, id(p))))

    def _reset(self) -> None:
        self.uses: dict[int, int] = {}
        self.arrived: dict[int, int] = {}
        self.pending: dict[int, torch.Tensor] = {}
        self.result: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.unattributed: set[int] = set()

    def start_batch(self, batch_size: int) -> None:
        """Call before each forward pass with the number of samples in it."""
        self._reset()
        self.batch_size = batch_size

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

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
    def _on_forward(self, own: list[str], module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not torch.is_grad_enabled() or self._replaying:  # not while _generic re-runs a module
            return
        ids = [id(getattr(module, n)) for n in own]
        B = self.batch_size
        ok = (
            isinstance(output, torch.Tensor)
            and output.requires_grad
            and output.dim() > 0
            and output.shape[0] == B
            and not any(
                isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == B for v in kwargs.values()
            )
            and len(args) > 0
            and isinstance(args[0], torch.Tensor)
            and args[0].shape[0] == B
        )
        if not ok:
            self.unattributed.update(ids)
            return
        for i in ids:
            self.uses[i] = self.uses.get(i, 0) + 1
        output.register_hook(partial(self._on_output_grad, module, own, args, kwargs))

    # backward, at the layer's output: form the per-sample gradients of its parameters
    def _on_output_grad(
        self, module: nn.Module, own: list[str], args: tuple, kwargs: dict, g: torch.Tensor
    ) -> None:
        fast = _fast_path(module)
        with torch.no_grad():
            if fast:
                per_sample = fast(module, args[0], g)
            else:
                self._replaying = True  # the module's children must not count this re-run as a use
                try:
                    per_sample = _generic(module, args, kwargs, own, g)
                finally:
                    self._replaying = False
            for n in own:
                self._collect(id(getattr(module, n)), per_sample[n])

    def _collect(self, pid: int, ps: Any) -> None:
        if self.uses[pid] == 1:
            signed = ps.sum() if self.check else None  # before transformed_sum, which consumes ps
            self.result[pid] = (ps.transformed_sum(self.transform), signed)
            return
        if pid not in self.pending:
            p = self.params[pid]
            shape = getattr(p, "ds_shape", p.shape)  # a ZeRO-3 placeholder's own shape is (0,)
            self.pending[pid] = p.new_zeros((self.batch_size, *shape), dtype=torch.float32)
        ps.add_to(self.pending[pid])
        self.arrived[pid] = self.arrived.get(pid, 0) + 1
        if self.arrived[pid] == self.uses[pid]:
            self._finalize(pid)

    def _finalize(self, pid: int) -> None:
        buf = self.pending.pop(pid)
        signed = buf.sum(0) if self.check else None
        self.result[pid] = (reduce_samples(buf, self.transform), signed)

    # backward, at the parameter: hand autograd sum_k |g_k| (or fn(g_k)) instead of sum_k g_k
    def _on_param_grad(self, pid: int, grad: torch.Tensor) -> torch.Tensor:
        name = self.names[pid]
        if pid in self.pending:
            # Some uses never got a gradient (a tied lm_head whose logits the loss does not use):
            # their contribution is zero, and every one that will arrive has, since this
            # parameter's gradient depends on all of them.
            self._finalize(pid)
        if pid in self.result and pid not in self.unattributed:
            transformed, signed = self.result.pop(pid)
            if signed is not None:
                err = (signed - grad.float()).norm()
                if err > 1e-3 * grad.float().norm() + 1e-6:
                    raise PerSampleMismatch(
                        f"per-sample gradients of {name!r} do not add up to its batch gradient "
                        f"(relative error {float(err / (grad.float().norm() + 1e-12)):.2e})"
                    )
            return transformed.to(grad.dtype)
        if self.batch_size == 1:  # one sample: |batch gradient| is exact
            return self.transform(grad)
        raise PerSampleMismatch(f"no per-sample gradient could be formed for {name!r}")
