"""Sharded Omega <-> checkpoint files, in one process: the streaming writer and the sliced reader.

The multi-process behaviour is in test_distributed_zero.py; here the file format and the slicing
arithmetic are checked against plain safetensors and plain tensor slicing, for ZeRO-3-style padded
partitions and ZeRO-2-style fragments (including ranks that own nothing of a tensor).
"""

from __future__ import annotations

import pytest
import torch
from reference import without_save_id
from safetensors.torch import load_file
from torch import nn

from masllm import MASConfig, Omega
from masllm.distributed import Shard
from masllm.omega.sharded import load_omega_shards, save_omega_consolidated

SHAPES = {"a.weight": (5, 7), "a.bias": (13,), "b.weight": (3, 4, 2), "c.scale": (1,)}


def full_omega(dtype: torch.dtype = torch.float32) -> Omega:
    g = torch.Generator().manual_seed(0)
    imp = {n: torch.rand(s, generator=g).to(dtype) for n, s in SHAPES.items()}
    anc = {n: torch.randn(s, generator=g).to(dtype) for n, s in SHAPES.items()}
    cfg = MASConfig(storage_dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    return Omega(imp, anc, config=cfg, tasks=[{"name": "t", "num_samples": 3, "method": "mas"}])


def zero3_shards(rank: int, world: int) -> dict[str, Shard]:
    """ZeRO-3: equal partitions of ceil(n / world), the last padded (padding is not stored)."""
    out = {}
    for n, s in SHAPES.items():
        numel = int(torch.Size(s).numel())
        ps = -(-numel // world)
        start = min(
            rank * ps, numel
        )  # as masllm.distributed.zero.LocalShards: padding-only ranks hold nothing
        out[n] = Shard(start, max(0, min(ps, numel - start)), s)
    return out


def zero2_shards(rank: int, world: int) -> dict[str, Shard]:
    """ZeRO-2: one flat buffer of all tensors split evenly; a rank owns fragments, maybe none."""
    total = sum(int(torch.Size(s).numel()) for s in SHAPES.values())
    lo, hi = rank * total // world, (rank + 1) * total // world
    out, offset = {}, 0
    for n, s in SHAPES.items():
        numel = int(torch.Size(s).numel())
        a, b = max(lo, offset), min(hi, offset + numel)
        out[n] = Shard(a - offset, b - a, s) if b > a else Shard(0, 0, s)
        offset += numel
    return out


def sharded(omega: Omega, shards: dict[str, Shard]) -> Omega:
    return Omega(dict(omega.importance), dict(omega.anchors), config=omega.config, tasks=omega.tasks).reshard(
        shards
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_consolidated_save_is_the_ordinary_format(tmp_path, dtype):
    full = full_omega(dtype)
    one_rank = {n: Shard(0, int(torch.Size(s).numel()), s) for n, s in SHAPES.items()}
    save_omega_consolidated(sharded(full, one_rank), tmp_path)
    loaded = Omega.from_pretrained(tmp_path)
    raw = load_file(tmp_path / "mas_omega.safetensors")
    for n in SHAPES:
        assert loaded[n].dtype == dtype and torch.equal(loaded[n], full[n]) and torch.equal(raw[n], full[n])
        assert torch.equal(loaded.anchors[n], full.anchors[n])
    assert loaded.tasks == full.tasks and loaded.config == full.config


def test_consolidated_save_shards_files_like_one_process(tmp_path):
    """Above max_shard_size: the same shard files and index as `save_pretrained`: the same header and
    data bytes, but for the id of the save each file carries (`masllm.omega.commit`)."""
    full = full_omega()
    one_rank = {n: Shard(0, int(torch.Size(s).numel()), s) for n, s in SHAPES.items()}
    save_omega_consolidated(sharded(full, one_rank), tmp_path / "z", max_shard_size=100)
    full.save_pretrained(tmp_path / "p", max_shard_size=100)
    files = sorted(p.name for p in (tmp_path / "p").iterdir() if p.name != "mas_config.json")
    assert "mas_omega.safetensors.index.json" in files and len(files) > 4
    assert files == sorted(p.name for p in (tmp_path / "z").iterdir() if p.name != "mas_config.json")
    for name in files:
        assert without_save_id(tmp_path / "z" / name) == without_save_id(tmp_path / "p" / name), name
    loaded = Omega.from_pretrained(tmp_path / "z")
    assert all(
        torch.equal(loaded[n], full[n]) and torch.equal(loaded.anchors[n], full.anchors[n]) for n in SHAPES
    )


@pytest.mark.parametrize("layout", [zero3_shards, zero2_shards])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_sliced_load_equals_slicing_the_full_tensors(tmp_path, layout, world):
    full = full_omega()
    full.save_pretrained(tmp_path)
    pieces = {n: [] for n in SHAPES}
    for rank in range(world):
        shards = layout(rank, world)
        part = load_omega_shards(tmp_path, shards)
        assert part.is_sharded and part.shards == shards
        for n, s in shards.items():
            assert torch.equal(part[n], s.slice_of(full[n]))
            assert torch.equal(part.anchors[n], s.slice_of(full.anchors[n]))
            pieces[n].append(part[n])
    for n in SHAPES:  # the slices tile each tensor exactly
        assert torch.equal(torch.cat(pieces[n]), full[n].reshape(-1))


def test_anchors_stored_as_the_model_take_this_ranks_weights(tmp_path):
    model = nn.Linear(7, 5)
    omega = Omega({n: torch.rand_like(p) for n, p in model.named_parameters()}).set_anchors(model)
    omega.save_pretrained(tmp_path, model=model)
    assert not (tmp_path / "mas_anchors.safetensors").exists()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    shards = {n: Shard(2, 3, s) for n, s in shapes.items()}
    weights = {n: shards[n].slice_of(p.detach()) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="weights="):
        load_omega_shards(tmp_path, shards)
    part = load_omega_shards(tmp_path, shards, weights)
    for n in shapes:
        assert torch.equal(part.anchors[n], weights[n])


def test_sliced_load_refuses_wrong_shapes(tmp_path):
    full_omega().save_pretrained(tmp_path)
    shards = zero3_shards(0, 2)
    shards["a.weight"] = Shard(0, 3, (7, 5))
    with pytest.raises(ValueError, match="shape"):
        load_omega_shards(tmp_path, shards)
