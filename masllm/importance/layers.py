"""Per-sample gradients of one layer's own parameters, from its input and its output gradient.

For a Linear layer y = W x + b over positions t, g_k(W) = sum_t dy_kt x_kt^T and g_k(b) = sum_t dy_kt:
quantities the backward pass already has. Each fast path returns, per parameter name, an object that
can hand out `transformed_sum(fn)` = sum_k fn(g_k) (|.| for MAS, square for the Fisher), `sum()`
(= autograd's batch gradient, for the exactness check) and `add_to(buf)` (a tied parameter's
contributions are summed per sample before fn). Fast paths: nn.Linear, transformers' Conv1D,
nn.Embedding (sparse rows), nn.LayerNorm; any other module goes through `generic_per_sample`
(torch.func vmap of a vjp through that module alone).

A sample is what the batch's `Segments` says: a row (sum over its positions t), or a sequence
packed with others in a row (sum over its own span of positions). The reductions over samples run
in float32 whatever the layer's dtype (bf16 products, summed over many samples, would lose them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .segments import PerSampleMismatch, Segments  # noqa: F401 (PerSampleMismatch: its old home)

Transform = Callable[[torch.Tensor], torch.Tensor]
INPLACE = {torch.abs: torch.Tensor.abs_, torch.square: torch.Tensor.square_}


def reduce_samples(t: torch.Tensor, fn: Transform) -> torch.Tensor:
    """sum_k fn(t_k) over dim 0 in float32, consuming `t`: |.| and square run in place (no (B, *shape)
    temporary)."""
    inplace = INPLACE.get(fn)
    return (inplace(t) if inplace else fn(t)).sum(0, dtype=torch.float32)


# Rows of a weight-sized product formed at a time on a CPU: a tile of ~2 MiB stays in cache while
# |.| and the sum over samples run over it (a 262k-row output layer's per-sample product, formed
# whole, is written to memory and read back twice: ~1.5x its matmul's time instead of ~1.1x). On a
# GPU the product is formed whole (small tiles would cost a kernel launch each, for no cache gain).
TILE_ELEMENTS = 1 << 19

# sample(k, r0, r1, out=None): rows r0:r1 of sample k's (out, in) product (written into `out` if given)
RowsOfSample = Callable[..., torch.Tensor]


def accumulate_transformed(
    sample: RowsOfSample,
    n: int,
    shape: tuple[int, int],
    fn: Transform,
    device: torch.device,
    each: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """sum_k fn(g_k) over n samples, in float32, one tile of rows at a time: each sample's tile is
    formed in turn into one reused buffer and transformed in place where fn allows (|.|, square);
    `each(k, r0, tile)` sees sample k's rows r0:... before fn."""
    rows, cols = shape
    step = max(1, TILE_ELEMENTS // max(cols, 1)) if device.type == "cpu" else rows
    inplace = INPLACE.get(fn)
    total = buf = None
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        for k in range(n):
            p = sample(k, r0, r1, out=None if buf is None else buf[: r1 - r0])
            if buf is None:
                total = torch.empty(shape, dtype=torch.float32, device=p.device)
                buf = torch.empty((min(step, rows), cols), dtype=p.dtype, device=p.device)
            if each is not None:
                each(k, r0, p)
            t = inplace(p) if inplace else fn(p)
            tile = total[r0:r1]
            tile.copy_(t) if k == 0 else tile.add_(t)  # float32 sums (a bf16 layer too)
    return total if total is not None else torch.zeros(shape, device=device)


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

    def __init__(self, ids: torch.Tensor, grad: torch.Tensor, num_rows: int, seg: Segments) -> None:
        d = grad.shape[-1]
        self.num_rows, self.batch = num_rows, seg.num_samples
        owner, keep = seg.sample_of(ids)  # the sample of each looked-up id
        ids, grad = ids.reshape(-1), grad.reshape(-1, d)
        if keep is not None:
            owner, ids, grad = owner[keep], ids[keep], grad[keep]
        self.keys, inverse = torch.unique(owner * num_rows + ids, return_inverse=True)  # (sample, row)
        self.vals = grad.new_zeros(len(self.keys), d, dtype=torch.float32).index_add_(
            0, inverse, grad.float()
        )

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
            return (fn(self.g).T @ fn(self.x)).float()
        return reduce_samples(self.dense(), fn)

    def sum(self) -> torch.Tensor:
        return self.g.T @ self.x

    def dense(self) -> torch.Tensor:
        return self.g[:, :, None] * self.x[:, None, :]

    @property
    def shape(self) -> tuple[int, int]:
        return self.g.shape[1], self.x.shape[1]

    def rows(self, k: int, r0: int, r1: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows r0:r1 of sample k's g_k x_k^T (a tied weight's dense use goes through these)."""
        g, x = self.g[k, r0:r1], self.x[k]
        return torch.outer(g, x) if out is None else torch.outer(g, x, out=out)

    def add_to(self, buf: torch.Tensor) -> None:
        buf += self.dense()


class _Products:
    """Per-sample gradients of a weight used at several positions: g_k = sum_{t in k} dy_t x_t^T, kept
    as the two factors (B, T, out) and (B, T, in). They are formed one sample at a time (a row, or a
    packed sequence's span of positions) when transformed and summed, so the weight's autograd-sized
    matmul is the only big temporary (never (B, out, in))."""

    def __init__(self, g: torch.Tensor, x: torch.Tensor, seg: Segments) -> None:
        self.g, self.x, self.seg = g, x, seg  # (B, T, out), (B, T, in): the weight's gradient is (out, in)

    @property
    def shape(self) -> tuple[int, int]:
        return self.g.shape[-1], self.x.shape[-1]

    def rows(self, k: int, r0: int, r1: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows r0:r1 of sample k's (out, in) product, written into `out` when given."""
        a, b = self.seg.sample(self.g, k)[:, r0:r1].T, self.seg.sample(self.x, k)
        return a @ b if out is None else torch.mm(a, b, out=out)

    def transformed_sum(self, fn: Transform) -> torch.Tensor:
        return accumulate_transformed(self.rows, self.seg.num_samples, self.shape, fn, self.g.device)

    def sum(self) -> torch.Tensor:  # every position, a sample's or not: autograd's gradient
        return self.g.reshape(-1, self.g.shape[-1]).T @ self.x.reshape(-1, self.x.shape[-1])

    def add_to(self, buf: torch.Tensor) -> None:
        for k in range(self.seg.num_samples):
            buf[k] += self.rows(k, 0, self.shape[0])


class _Transposed:
    """A per-sample form whose parameter is stored transposed (transformers' Conv1D: (in, out))."""

    def __init__(self, form: Any) -> None:
        self.form = form

    def transformed_sum(self, fn: Transform) -> torch.Tensor:
        return self.form.transformed_sum(fn).T

    def sum(self) -> torch.Tensor:
        return self.form.sum().T

    def add_to(self, buf: torch.Tensor) -> None:
        self.form.add_to(buf.transpose(-1, -2))


def _linear(module: nn.Linear, x: torch.Tensor, g: torch.Tensor, seg: Segments) -> dict[str, Any]:
    # x in the dtype the layer computed in (g's: an autocast layer's input is cast for its matmul)
    if g.dim() == 2 and not seg.packed:  # one position per sample (an MLP): keep g_k x_k^T factored
        out: dict[str, Any] = {"weight": _Outer(g, x.to(g.dtype))}
        if module.bias is not None:
            out["bias"] = _Dense(
                g.to(torch.float32, copy=True)
            )  # the reduction works in place, g is autograd's
        return out
    out = {"weight": _Products(g, x.to(g.dtype), seg)}  # g_k = G_k^T X_k: (out, in)
    if module.bias is not None:
        out["bias"] = _Dense(seg.sum_positions(g, 1))
    return out


def _conv1d(module: Conv1D, x: torch.Tensor, g: torch.Tensor, seg: Segments) -> dict[str, Any]:
    weight = _Transposed(_Products(g, x.to(g.dtype), seg))  # W: (in, out)
    return {"weight": weight, "bias": _Dense(seg.sum_positions(g, 1))}


def _embedding(module: nn.Embedding, ids: torch.Tensor, g: torch.Tensor, seg: Segments) -> dict[str, Any]:
    if module.padding_idx is not None:  # autograd gives the padding row no gradient
        g = g * (ids != module.padding_idx).unsqueeze(-1).to(g.dtype)
    return {"weight": _Rows(ids, g, module.num_embeddings, seg)}


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor, g: torch.Tensor, seg: Segments) -> dict[str, Any]:
    shape = module.normalized_shape
    xhat = nn.functional.layer_norm(x.to(g.dtype), shape, eps=module.eps)
    out = {"weight": _Dense(seg.sum_positions(g * xhat, len(shape)))}
    if module.bias is not None:
        out["bias"] = _Dense(seg.sum_positions(g, len(shape)))
    return out


FAST_PATHS: dict[type, Callable[..., dict[str, Any]]] = {
    nn.Linear: _linear,
    Conv1D: _conv1d,
    nn.Embedding: _embedding,
    nn.LayerNorm: _layer_norm,
}


def generic_per_sample(
    module: nn.Module, args: tuple, kwargs: dict, names: list[str], g: torch.Tensor, seg: Segments
) -> dict[str, Any]:
    """Per-sample gradients of `module`'s own parameters by vmap over a vjp through its forward.

    Packed rows are first cut into their samples, zero-padded to the longest (`Segments.unpack`):
    exact for a module that acts on each position alone (a norm, a scale), whose padded positions
    get a zero output gradient; one that mixes positions is caught by the exactness check."""
    if seg.packed:  # positions in dim 1, or e.g. in dim 2 of a per-head (B, heads, T, d) input
        dims = [seg.position_dim(a) for a in args]
        args = tuple(a if d is None else seg.unpack(a, d) for a, d in zip(args, dims))
        g = seg.unpack(g, seg.position_dim(g))
        batched = [d is not None for d in dims]
    else:
        batched = [isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == g.shape[0] for a in args]
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


def fast_path(module: nn.Module) -> Callable[..., dict[str, Any]] | None:
    for kind, fn in FAST_PATHS.items():
        if type(module) is kind or (isinstance(module, kind) and type(module).forward is kind.forward):
            return fn
    return None
