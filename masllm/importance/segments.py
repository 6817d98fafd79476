"""Which positions of a batch are which sample of Eq. 2: one sequence per row, or packed rows.

A padded batch holds one sample per row (dim 0). A padding-free ("packed") batch holds several
sequences in one row, as transformers' `DataCollatorWithFlattening` and TRL's padding-free collator
emit them: a (1, T) row whose `position_ids` restart at every sequence, with, optionally,
`cu_seq_lens_q` / `cu_seq_lens_k` (the boundaries, for flash attention's varlen kernels) and
`seq_idx` (the sequence of each token). A sample is then a sequence, not a row: the |.| of Eq. 2 is
taken per sequence and N counts sequences. `Segments` (computed once per batch by `segments_of`)
says which positions belong to which sample, and the per-layer products (`layers.py`) reduce over
it instead of over dim 0, so padded and packed batches go through the same code.

A batch is packed when it carries `cu_seq_lens_q` or `seq_idx`, or `position_ids` that restart
while no `attention_mask` is given: a sequence starts wherever a position is not the previous one
plus 1. That is the rule by which transformers keeps packed sequences apart (sdpa and eager
attention build a block-diagonal mask from `position_ids` when there is no attention mask and no
cache -- the importance pass runs with `use_cache=False` -- and flash attention reads
`cu_seq_lens`). With an `attention_mask`, a row is one sequence unless `cu_seq_lens` or `seq_idx`
say otherwise, and a sequence with no non-padding position (mask 0 throughout, or an empty
`cu_seq_lens` entry) is no sample: it does not count in N.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..batch import Batch, batch_size, slice_batch

PACKING_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k")  # flat boundaries, rebuilt when a batch is cut


class PerSampleMismatch(RuntimeError):
    """Per-sample gradients could not be formed for some parameter in this batch."""


@dataclass
class Segments:
    """The samples of one batch: its rows, or spans of positions of its (rows, length) grid."""

    rows: int  # B, the leading dim of every input
    length: int = 0  # T, positions per row (packed only)
    bounds: list[tuple[int, int]] | None = None  # each sample's [a, b) in the flat B * T positions
    index: torch.Tensor | None = None  # (B * T,) the sample of each position, -1 for none
    _on: dict[torch.device, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def packed(self) -> bool:
        """False when sample k is row k (the plain batched layout)."""
        return self.bounds is not None

    @property
    def num_samples(self) -> int:
        return self.rows if self.bounds is None else len(self.bounds)

    def positions(self, t: torch.Tensor, feature_dims: int) -> torch.Tensor:
        """`t` (B, ..., *features) as (rows, positions, *features), or (B * T, inner, *features) packed."""
        feats = t.shape[t.dim() - feature_dims :]
        if not self.packed:
            return t.reshape(self.rows, -1, *feats)
        if t.dim() < 2 + feature_dims or tuple(t.shape[:2]) != (self.rows, self.length):
            raise PerSampleMismatch(
                f"a {tuple(t.shape)} tensor has no ({self.rows}, {self.length}) positions of the packed batch"
            )
        return t.reshape(self.rows * self.length, -1, *feats)

    def sample(self, t: torch.Tensor, k: int, feature_dims: int = 1) -> torch.Tensor:
        """Sample k's part of `t`, as (positions, *features)."""
        flat = self.positions(t, feature_dims)
        part = flat[k] if not self.packed else flat[self.bounds[k][0] : self.bounds[k][1]]
        return part.reshape(-1, *flat.shape[2:])

    def sum_positions(self, t: torch.Tensor, feature_dims: int) -> torch.Tensor:
        """sum over each sample's positions: (S, *features), in float32."""
        flat = self.positions(t, feature_dims).float().sum(1)
        if not self.packed:
            return flat
        index = self.index_on(t.device)
        keep = index >= 0
        out = flat.new_zeros(self.num_samples, *flat.shape[1:])
        return out.index_add_(0, index[keep], flat[keep])

    def sample_of(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sample of each entry of an index tensor (B, T, ...), flattened, and which entries
        belong to a sample (None: all; packed positions of no sample are left out)."""
        if not self.packed:
            owner = torch.arange(self.rows, device=ids.device)[:, None]
            return owner.expand(self.rows, ids.numel() // self.rows).reshape(-1), None
        flat = self.positions(ids, 0)  # (B * T, inner)
        owner = self.index_on(ids.device)[:, None].expand_as(flat).reshape(-1)
        return owner, owner >= 0

    def position_dim(self, t: Any) -> int | None:
        """The dim of a packed batch's tensor (B, ...) that runs over its T positions: 1, or the only
        other dim of size T (attention heads come first in (B, heads, T, d)); None: none, or unclear."""
        if not (isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[0] == self.rows):
            return None
        if t.shape[1] == self.length:
            return 1
        dims = [d for d in range(2, t.dim()) if t.shape[d] == self.length]
        return dims[0] if len(dims) == 1 else None

    def unpack(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """(B, T, ...) -> (S, L, ...) with positions in `dim`: each sample's positions, zero-padded to
        the longest (the torch.func path vmaps over dim 0; zeros add nothing to the gradient of a
        layer that acts on each position alone)."""
        if not self.packed:
            return t
        t = t.movedim(dim, 1)
        flat = t.reshape(self.rows * self.length, *t.shape[2:])
        longest = max(b - a for a, b in self.bounds)
        out = flat.new_zeros(self.num_samples, longest, *t.shape[2:])
        for k, (a, b) in enumerate(self.bounds):
            out[k, : b - a] = flat[a:b]
        return out.movedim(1, dim)

    def index_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._on:
            self._on[device] = self.index.to(device)
        return self._on[device]


def forward_kwargs(model: Any, seg: Segments) -> dict[str, Any]:
    """What a model call needs for a packed batch: a transformers model without its cache, since it
    keeps packed sequences apart (from `position_ids`) only when it has none."""
    if seg.packed and getattr(getattr(model, "config", None), "use_cache", None) is not None:
        return {"use_cache": False}
    return {}


def segments_of(x: Batch) -> Segments:
    """The samples of a model input (see the module docstring for when a batch is packed)."""
    B = batch_size(x)
    if not isinstance(x, Mapping):
        return Segments(B)
    mask = x.get("attention_mask")
    if not (isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == B):
        mask = None
    starts = _sequence_starts(x, B, mask is not None)
    if starts is None:
        if mask is None or bool(mask.any(1).all()):
            return Segments(B)
        starts = torch.zeros(mask.shape, dtype=torch.bool)  # one sequence per row, some all padding
        starts[:, 0] = True
    T = starts.shape[1]
    if mask is not None and tuple(mask.shape) != (B, T):
        raise ValueError(
            f"attention_mask {tuple(mask.shape)} does not match the batch's ({B}, {T}) positions"
        )
    flat = starts.reshape(-1).cpu()
    seg = flat.long().cumsum(0) - 1  # every row starts a sequence: none runs across rows
    n = int(seg[-1]) + 1
    counted = torch.ones(n, dtype=torch.bool)
    if mask is not None:  # a sequence of padding only is no sample
        counted = torch.zeros(n).index_add_(0, seg, mask.reshape(-1).cpu().float()) > 0
    if n == B and bool(counted.all()):
        return Segments(B)
    first = flat.nonzero().squeeze(1)
    stop = torch.cat([first[1:], torch.tensor([B * T])])
    renumber = torch.where(counted, counted.long().cumsum(0) - 1, -1)
    bounds = [(a, b) for a, b, c in zip(first.tolist(), stop.tolist(), counted.tolist()) if c]
    return Segments(B, T, bounds, renumber[seg])


def _sequence_starts(x: Mapping, B: int, has_mask: bool) -> torch.Tensor | None:
    """(B, T) bool, True where a sequence starts, from each key that says so; None: one per row."""
    found: list[tuple[str, torch.Tensor]] = []
    T = _length(x)
    cu = x.get("cu_seq_lens_q")
    if isinstance(cu, torch.Tensor) and T:
        cu = cu.reshape(-1).long().cpu()
        if cu[0] != 0 or cu[-1] != B * T or bool((cu.diff() < 0).any()):
            raise ValueError(
                f"cu_seq_lens_q {cu.tolist()} does not run from 0 to the batch's {B} x {T} positions"
            )
        starts = torch.zeros(B * T + 1, dtype=torch.bool)
        starts[cu[:-1]] = True  # an empty entry (a repeated boundary) starts nothing
        starts = starts[:-1].reshape(B, T)
        if not bool(starts[:, 0].all()):
            raise ValueError(f"cu_seq_lens_q {cu.tolist()}: a sequence runs across rows of the batch")
        found.append(("cu_seq_lens_q", starts))
    seq_idx = x.get("seq_idx")
    if isinstance(seq_idx, torch.Tensor) and seq_idx.dim() == 2:
        found.append(("seq_idx", _changes(seq_idx.expand(B, -1).cpu(), step=0)))
    pos = x.get("position_ids")
    if isinstance(pos, torch.Tensor) and pos.dim() == 2 and not has_mask:
        found.append(("position_ids", _changes(pos.expand(B, -1).cpu(), step=1)))
    if not found:
        return None
    name, starts = found[0]
    for other, s in found[1:]:
        if not torch.equal(s, starts):
            raise ValueError(f"A packed batch's {name} and {other} disagree on where its sequences start")
    return starts


def _changes(t: torch.Tensor, step: int) -> torch.Tensor:
    """True at column 0 and wherever t[:, j] != t[:, j - 1] + step."""
    starts = torch.ones(t.shape, dtype=torch.bool)
    starts[:, 1:] = t[:, 1:] != t[:, :-1] + step
    return starts


def _length(x: Mapping) -> int:
    for key in ("input_ids", "position_ids", "seq_idx", "inputs_embeds"):
        v = x.get(key)
        if isinstance(v, torch.Tensor) and v.dim() >= 2:
            return v.shape[1]
    return 0


def sample_batch(batch: Batch, seg: Segments, k: int) -> Batch:
    """Sample k alone, labels included (the one-sample-per-backward fallback)."""
    if not seg.packed:
        return slice_batch(batch, k, k + 1, labels=True)
    return _positions(batch, seg, *seg.bounds[k])


def first_samples(batch: Batch, seg: Segments, n: int) -> list[Batch]:
    """The first n samples of a batch, labels included: one batch, or two when a packed row is cut
    (its full rows, then the part of the next row that holds the last samples)."""
    if not seg.packed:
        return [slice_batch(batch, 0, n, labels=True)]
    stop = seg.bounds[n - 1][1]
    row, T = (stop - 1) // seg.length, seg.length
    if stop % T == 0:
        return [_positions(batch, seg, 0, stop)]
    head = [_positions(batch, seg, 0, row * T)] if row else []
    return [*head, _positions(batch, seg, row * T, stop)]


def _positions(batch: Mapping, seg: Segments, lo: int, hi: int) -> dict[str, Any]:
    """The flat positions [lo, hi) of a packed batch: whole rows, or a part of one row."""
    B, T = seg.rows, seg.length
    r0, r1 = lo // T, -(-hi // T)
    cols = slice(lo - r0 * T, hi - r0 * T) if r1 - r0 == 1 else slice(None)
    out: dict[str, Any] = {}
    for key, v in batch.items():
        if key in PACKING_KEYS and isinstance(v, torch.Tensor):
            kept = v[(v >= lo) & (v <= hi)] - lo
            out[key] = torch.cat([v.new_tensor([0]), kept, v.new_tensor([hi - lo])]).unique()
        elif isinstance(v, torch.Tensor) and v.dim() >= 2 and tuple(v.shape[:2]) in ((B, T), (1, T)):
            out[key] = (v if v.shape[0] == 1 else v[r0:r1])[:, cols]
        elif isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == B:
            out[key] = v[r0:r1]
        else:
            out[key] = v
    return out
