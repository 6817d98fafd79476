"""Per-sample sums computed *in place of* autograd's weight gradients, not beside them.

The hook path of `per_sample.py` lets autograd compute each parameter's batch gradient and then
replaces it with sum_k fn(g_k): for a Linear layer the batch gradient is a matmul as large as the
per-sample products themselves, so exact importance cost about one extra weight-gradient pass (and
for a 262k-token tied embedding, more than doubled a backward). Here the forward of each eligible
layer goes through an `autograd.Function` whose backward returns the input gradient as usual and,
as the *weight's* gradient, sum_k fn(g_k) directly. Autograd still accumulates it into `p.grad`, so
gradient accumulation, DeepSpeed's and FSDP's reduce hooks work on it unchanged.

Eligible: `nn.Linear`, transformers' `Conv1D` and `nn.Embedding` (also an embedding scaled by an
`embed_scale`, e.g. Gemma's, checked against its own forward on a probe), whose parameters are each
used by that one module -- or a weight tied between one Linear and one Embedding (an LM's input
embedding and output layer). For a tied weight the per-sample gradient is the sum of both uses,
g_k + e_k, with e_k non-zero only on the rows R_k that sample k looked up, so

    sum_k fn(g_k + e_k) = sum_k fn(g_k)  +  sum_k sum_{r in R_k} [fn(g_k + e_k)_r - fn(g_k)_r]

the Linear's backward (which runs first: the output layer is last in the forward) returns the first
term and keeps g_k on the rows R_k; the Embedding's backward returns the correction. Everything else
(LayerNorm, custom modules, parameters used several times) stays on the hook path.

A sample k is what the batch's `Segments` says (a row, or a packed sequence). Under autocast (a
Trainer with `bf16=True` wraps the model's forward in it) the forward's matmul runs in bf16 and
the backward gets bf16 output gradients: the backward computes in that dtype, as autograd's would,
and the sums over samples are float32.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.pytorch_utils import Conv1D

from .layers import PerSampleMismatch, Transform, _conv1d, _embedding, _linear, accumulate_transformed
from .segments import Segments


class _FusedLinear(torch.autograd.Function):
    """y = x W^T + b (Linear) or x W + b (Conv1D); backward: dx, and sum_k fn(g_k) for W and b."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):  # noqa: ANN001 (autograd.Function's signature)
        ctx.save_for_backward(x, weight)
        ctx.layer = layer
        if layer.kind == "conv1d":
            return torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], weight.shape[1])
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        gx = None
        if ctx.needs_input_grad[0]:  # in g's dtype: bf16 under autocast (autograd casts it back to x's)
            w = weight.to(g.dtype)
            gx = g @ w.T if layer.kind == "conv1d" else g @ w
        gw, gb = layer.weight_grads(x, g)
        layer.engine.returned(layer.module.weight, gw)  # not `weight`: checkpointing unpacks a copy
        if gb is not None:
            layer.engine.returned(layer.module.bias, gb)
        return gx, gw, gb, None


class _FusedEmbedding(torch.autograd.Function):
    """y = W[ids] * scale; backward: sum_k fn(e_k) (or a tied weight's correction) for W."""

    @staticmethod
    def forward(ctx, ids, weight, layer):  # noqa: ANN001
        ctx.save_for_backward(ids)
        ctx.layer = layer
        out = F.embedding(ids, weight, layer.module.padding_idx)
        return out * layer.scale.to(out.dtype) if layer.scale is not None else out

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        (ids,) = ctx.saved_tensors
        layer = ctx.layer
        if layer.scale is not None:
            g = g * layer.scale.to(g.dtype)
        gw = layer.embedding_grad(ids, g)
        layer.engine.returned(layer.module.weight, gw)
        return None, gw, None


class _Layer:
    """One fused module: its kind, its tie (if any), the engine's per-batch state."""

    def __init__(self, engine: FusedLayers, module: nn.Module, kind: str, tie: dict | None) -> None:
        self.engine, self.module, self.kind, self.tie = engine, module, kind, tie
        self.scale = getattr(module, "embed_scale", None) if kind == "embedding" else None
        self.calls = 0
        self.called_in_forward = False  # a call outside backward: a later one inside is a recomputation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, engine = self.module, self.engine
        if not torch.is_grad_enabled() or engine.replaying():  # no backward will come, or a torch.func replay
            return type(m).forward(m, x)
        in_backward = torch._C._current_graph_task_id() != -1
        if in_backward and self.called_in_forward:
            # non-reentrant activation checkpointing recomputes the forward to refill the saved
            # tensors of the nodes already in the graph (whose backward runs): the same Function,
            # not a second use. (Reentrant checkpointing runs its first forward without grad.)
            return self._apply(x)
        self.calls += 1
        self.called_in_forward |= not in_backward
        if self.calls > 1:
            raise PerSampleMismatch(f"{type(m).__name__} is called more than once per forward pass")
        return self._apply(x)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if self.kind == "embedding":
            B = self.engine.segments.rows
            if x.dim() > 1 and x.shape[0] == 1 < B:  # broadcast position ids: each sample its own rows
                x = x.expand(B, *x.shape[1:])
            if self.tie is not None:
                self.tie["ids"] = x
            return _FusedEmbedding.apply(x, m.weight, self)
        return _FusedLinear.apply(x, m.weight, m.bias, self)

    def weight_grads(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        fn = self.engine.transform
        forms = (_conv1d if self.kind == "conv1d" else _linear)(self.module, x, g, self.engine.segments)
        bias = forms["bias"].transformed_sum(fn) if "bias" in forms else None
        if self.tie is None or self.tie.get("ids") is None:
            return forms["weight"].transformed_sum(fn), bias
        return self._tied_dense(forms["weight"], fn), bias

    def _tied_dense(self, form: Any, fn: Transform) -> torch.Tensor:
        """sum_k fn(g_k) over this use, keeping g_k at the rows sample k looked up (for the correction)."""
        seg, ids = self.engine.segments, self.tie["ids"]
        looked_up = [
            torch.unique(seg.sample(ids, k, feature_dims=0)) for k in range(seg.num_samples)
        ]  # sorted
        kept: list[list[torch.Tensor]] = [[] for _ in looked_up]

        def keep(k: int, r0: int, tile: torch.Tensor) -> None:  # before fn; index copies, not views
            r = looked_up[k]
            lo, hi = (
                int(i) for i in torch.searchsorted(r, torch.tensor([r0, r0 + len(tile)], device=r.device))
            )
            kept[k].append(tile[r[lo:hi] - r0].float())

        total = accumulate_transformed(form.rows, seg.num_samples, form.shape, fn, form.g.device, each=keep)
        self.tie["kept"] = torch.cat([piece for pieces in kept for piece in pieces])
        return total

    def embedding_grad(self, ids: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        fn = self.engine.transform
        rows = _embedding(self.module, ids, g, self.engine.segments)["weight"]  # per (sample, row), sorted
        kept = self.tie.pop("kept", None) if self.tie is not None else None
        if kept is None:  # not tied, or the dense use got no gradient (e.g. F = hidden states)
            return rows.transformed_sum(fn)
        return rows._scatter(fn(kept + rows.vals) - fn(kept))


def _kind(module: nn.Module) -> str | None:
    if type(module) is nn.Linear:
        return "linear"
    if type(module) is Conv1D:
        return "conv1d"
    plain = isinstance(module, nn.Embedding) and not (
        module.max_norm is not None or module.scale_grad_by_freq or module.sparse
    )
    if plain and (type(module).forward is nn.Embedding.forward or _scaled_embedding(module)):
        return "embedding"
    return None


def _scaled_embedding(module: nn.Embedding) -> bool:
    """An embedding whose forward is W[ids] * embed_scale (Gemma's), checked on a probe."""
    scale = getattr(module, "embed_scale", None)
    if not isinstance(scale, torch.Tensor | float) or module.weight.numel() == 0:  # ZeRO-3 placeholder
        return False
    with torch.no_grad():
        ids = torch.arange(min(4, module.num_embeddings), device=module.weight.device)[None]
        expected = F.embedding(ids, module.weight, module.padding_idx)
        return torch.equal(module(ids), expected * torch.as_tensor(scale).to(expected))


class FusedLayers:
    """Routes the forward of every eligible module through the fused Functions while active."""

    def __init__(
        self, model: nn.Module, params: dict[str, nn.Parameter], transform: Transform, replaying, check: bool
    ) -> None:
        self.transform, self.replaying, self.segments = transform, replaying, Segments(0)
        wanted = {id(p) for p in params.values()}
        owners: dict[int, list[nn.Module]] = {}
        for module in model.modules():
            for _, p in module.named_parameters(recurse=False):
                owners.setdefault(id(p), []).append(module)
        self.layers: list[_Layer] = []
        ties: dict[int, dict] = {}
        for module in model.modules():
            kind, own = _kind(module), list(module.parameters(recurse=False))
            if kind is None or not own or any(id(p) not in wanted for p in own):
                continue
            shared = [p for p in own if len(owners[id(p)]) > 1]
            if shared and not (
                len(shared) == 1 and shared[0] is module.weight and _tied_pair(owners[id(module.weight)])
            ):
                continue
            tie = ties.setdefault(id(module.weight), {}) if shared else None
            self.layers.append(_Layer(self, module, kind, tie))
        self.ties = ties
        self.covered = {id(p) for layer in self.layers for p in layer.module.parameters(recurse=False)}
        for layer in self.layers:
            layer.module.forward = types.MethodType(_forward_of(layer), layer.module)
        self._returned: dict[int, torch.Tensor] = {}
        self._handles = []
        if check:  # a use of the weight outside the fused module (e.g. F.linear(x, self.lin.weight))
            for p in {
                id(p): p for layer in self.layers for p in layer.module.parameters(recurse=False)
            }.values():
                self._handles.append(p.register_hook(lambda grad, _p=p: self._check(_p, grad)))

    def returned(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        """What a fused backward handed autograd for `p` (a tied weight: the sum over its two uses),
        cast to `p`'s dtype first as autograd casts it (a bf16 weight: the sum of the two bf16 casts)."""
        if self._handles:
            key, grad = id(p), grad.to(p.dtype)
            self._returned[key] = grad if key not in self._returned else self._returned[key] + grad

    def _check(self, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The total gradient autograd delivers must be exactly what the fused backward returned:
        anything else came from a use of the parameter these layers do not see."""
        expected = self._returned.pop(id(p), None)
        if expected is None or (
            grad is not expected and not torch.allclose(grad, expected, rtol=1e-5, atol=1e-8)
        ):
            raise PerSampleMismatch(f"a {tuple(p.shape)} parameter is also used outside its module's forward")
        return grad

    def start_batch(self, segments: Segments) -> None:
        self.segments = segments
        self._returned.clear()
        for layer in self.layers:
            layer.calls, layer.called_in_forward = 0, False
        for tie in self.ties.values():
            tie.clear()

    def remove(self) -> None:
        for layer in self.layers:
            layer.module.__dict__.pop("forward", None)
        for h in self._handles:
            h.remove()
        self.layers, self._handles = [], []


def _forward_of(layer: _Layer):
    def forward(module: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        if len(args) != 1 or kwargs:  # not the one-tensor call the Functions reproduce
            raise PerSampleMismatch(
                f"{type(module).__name__} called with {len(args)} args and {sorted(kwargs)}"
            )
        return layer.forward(args[0])

    return forward


def _tied_pair(modules: list[nn.Module]) -> bool:
    return sorted(_kind(m) or "" for m in modules) in (["embedding", "linear"],)
