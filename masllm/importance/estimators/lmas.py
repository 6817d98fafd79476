"""l-MAS, the local (Hebbian) variant of MAS (Aljundi et al. 2018, Sec. 4.3, Eq. 4-7, App. B).

Instead of the whole network's function F, each layer l preserves its own output given its input:
F_l(y^{l-1}) = sigma(W y^{l-1} + b). For a Linear layer followed by a ReLU, the gradient of the
layer-local squared l2 norm (Eq. 4) is g_ij = 2 y_i^{l-1} y_j^l (Eq. 5, App. B), and

    Omega_ij = 1/N sum_k y_i^k y_j^k                                                   (Eq. 6-7)

with the factor 2 dropped (the paper: only relative importance matters). This is Hebb's rule:
synapses between neurons that fire together are important.

How it is computed, and what it means for every kind of parameter:
- A forward hook on every module that owns trainable parameters hands the rest of the network a
  detached copy of its output, so nothing is ever back-propagated *through* the network: each
  layer's gradient stops at its own input (the "local" of Fig. 3).
- A layer's local function is its output passed through the elementwise activation module that
  directly consumes it (nn.ReLU, GELU, SiLU, Tanh, ... and transformers' activation modules), or its
  output itself when no such module follows (output layers, attention projections, layers whose
  activation is a plain function call such as F.relu inside a custom forward).
- The output gradient of (1/2)||sigma(out)||^2 is sigma(out) sigma'(out) (= y for ReLU); each
  layer's own parameters then get the per-sample gradient of its local function, in one backward
  pass through that layer alone (`PerSampleAbsGrad`, abs per sample as in Eq. 2: equal to Eq. 7
  whenever y^{l-1}, y^l >= 0, e.g. between ReLU layers; the first layer's input may be negative).
  Per parameter kind:
  * Linear / Conv1D weight: |sum_t x_ti y_tj| per sample (t: sequence positions), Eq. 7;
  * bias: |sum_t y_tj| (a Hebbian product with a constant input neuron of value 1);
  * Embedding row r: n_k(r) |E_r| (input neuron: the one-hot token; output: the looked-up row);
  * LayerNorm gain / bias: |sum_t xhat_t y_t|, |sum_t y_t| (local function: the normalised output);
  * attention projections (q, k, v, o; GPT-2's c_attn, c_proj) are Linear / Conv1D layers with no
    activation: y is the projection itself;
  * convolutions, BatchNorm and other modules: the per-sample gradient of the module's local
    squared norm by torch.func through that module alone (correlation of input and output maps).
- For padded sequences (an `attention_mask` matching a layer's (B, T, ...) output, or a per-head
  (B, heads, T, d) one such as Gemma 3's q / k norms), padding positions do not count, as in MAS.
l-MAS estimates faster but less accurately than MAS (paper Sec. 5.1: 3% vs 1% forgetting);
the penalty and its strength are MAS's: lambda = 1 (paper, Sec. 5.1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2CLS

from ...batch import Batch, forward, inputs_of, to_device
from ...registry import register_estimator
from ..accumulate import accumulate_per_sample
from ..context import ImportanceContext, ImportanceSums
from ..segments import Segments, forward_kwargs

ACTIVATIONS: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    *{v[0] if isinstance(v, tuple) else v for v in ACT2CLS.values()},
)


def without_padding(t: torch.Tensor, inputs: Batch) -> torch.Tensor:
    """`t` with the padding positions of the inputs' (B, T) `attention_mask` zeroed: in dim 1 when it
    has T entries, else in the only other dim of size T of a tensor with 3+ dims (per-head (B, heads,
    T, d)); a tensor that is not per position is returned as it is."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if mask is None or mask.dim() != 2 or t.dim() < 2 or t.shape[0] != mask.shape[0]:
        return t
    T = mask.shape[1]
    others = [d for d in range(2, t.dim()) if t.shape[d] == T]
    dim = 1 if t.shape[1] == T else (others[0] if len(others) == 1 and t.dim() >= 3 else None)
    if dim is None:
        return t
    shape = [1] * t.dim()
    shape[0], shape[dim] = t.shape[0], T
    return t * mask.reshape(shape).to(t.dtype)


class _Layer:
    """One parameterised module's output in this forward pass, and the activation that consumed it."""

    def __init__(self, output: torch.Tensor, handed_on: torch.Tensor) -> None:
        self.output = output  # with the graph to the module's parameters and (detached) input
        self.handed_on = handed_on  # what the rest of the network saw
        self.out_grad: torch.Tensor | None = None  # sigma(out) sigma'(out); None: no activation


class LayerCut:
    """Forward hooks that make every parameterised module a separate local function (Sec. 4.3)."""

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter]) -> None:
        ids = {id(p) for p in params.values()}
        self.layers: dict[int, _Layer] = {}
        self.inputs: Batch = None
        self._handles: list[Any] = []
        for module in model.modules():
            if any(id(p) in ids for p in module.parameters(recurse=False)):
                self._handles.append(module.register_forward_hook(self._cut))
            elif isinstance(module, ACTIVATIONS) and not any(True for _ in module.parameters()):
                self._handles.append(module.register_forward_pre_hook(self._activation))

    def start_batch(self, inputs: Batch) -> None:
        self.layers, self.inputs = {}, inputs  # padding positions of the inputs do not count

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _cut(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad):
            return None
        if torch._C._are_functorch_transforms_active():
            # the per-sample replay of one module (`generic_per_sample`, e.g. an RMSNorm) runs its
            # forward under torch.func: cutting there would hand the vjp a detached output (zero)
            return None
        handed_on = output.detach().clone()  # a copy: an in-place activation must not touch `output`
        self.layers[id(handed_on)] = _Layer(output, handed_on)
        return handed_on

    def _activation(self, module: nn.Module, args: tuple) -> None:
        layer = self.layers.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
        if layer is None or layer.out_grad is not None:
            return
        with torch.enable_grad():
            o = args[0].detach().float().requires_grad_()
            y = module.forward(o.clone())  # .forward: no hooks; clone: in-place activations
            (layer.out_grad,) = torch.autograd.grad(0.5 * y.pow(2).sum(), o)  # sigma sigma'

    def local_loss(self) -> torch.Tensor:
        """sum_l <out_l, sigma sigma'(out_l)>: its gradient w.r.t. layer l's parameters is that of
        (1/2) ||sigma(out_l)||^2 with the layer's input held fixed (Eq. 4-5 without the factor 2)."""
        total = torch.zeros(())
        for layer in self.layers.values():
            g = layer.out_grad if layer.out_grad is not None else layer.output.detach().float()
            g = without_padding(g, self.inputs)
            total = total + (layer.output * g.to(layer.output.dtype)).sum().float()
        self.layers = {}
        return total


@register_estimator("lmas")
def lmas_importance(ctx: ImportanceContext, batches: Iterable[Batch]) -> ImportanceSums:
    """sum_k |local gradient_k| per parameter (Eq. 6-7 with |.| per sample; 1/N is applied later)."""
    cut: LayerCut | None = None

    def loss(batch: Batch, seg: Segments) -> torch.Tensor:
        nonlocal cut
        if cut is None:  # registered after PerSampleAbsGrad's hooks, so those see the uncut outputs
            cut = LayerCut(ctx.model, ctx.params)
        x = to_device(inputs_of(batch), ctx.device)
        cut.start_batch(x)
        forward(ctx.model, x, **forward_kwargs(ctx.model, seg))
        return cut.local_loss().to(ctx.device)

    try:
        return accumulate_per_sample(ctx, batches, loss, torch.abs)
    finally:
        if cut is not None:
            cut.remove()
