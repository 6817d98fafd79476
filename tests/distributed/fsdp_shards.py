"""FSDP2 shards with uneven rows, without accelerate: torch `fully_shard` on 2 gloo ranks.

Usage:
    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/fsdp_shards.py --out DIR

A small MLP whose dims do not split evenly over 2 ranks (rows 5 -> 3 + 2, 3 -> 2 + 1, 1 -> 1 + 0:
rank 1 holds nothing of the last layer). Each rank computes, against a one-process reference on an
unsharded copy (rank 0's data and rank 1's together, 7 samples, so the ranks get 3 and 4 and run in
lockstep): Omega (exact per-sample |g|, a DTensor), the penalty's gradient and value on DTensor
shards, the consolidated save (compared with `save_pretrained` of the gathered Omega) and the
slice-wise load. Rank r writes rank{r}.json; rank 0 writes the two saved directories.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import distribute_tensor
from torch.utils.data import Dataset

from masllm import MASConfig, Omega, compute_importance
from masllm.distributed import exit_process
from masllm.distributed.fsdp import DTensorShards, local_tensor
from masllm.omega.sharded import load_omega_shards, save_omega_consolidated
from masllm.penalty import BoundPenalty


class Rows(Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3), nn.LayerNorm(3), nn.Linear(3, 1))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    cfg = MASConfig(reg_lambda=3.0, importance_batch_size=2)
    data = Rows(torch.randn(7, 6, generator=torch.Generator().manual_seed(1)))
    reference_model = mlp()
    reference = compute_importance(reference_model, data, cfg, show_progress=False)  # before the group: all 7
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = copy.deepcopy(reference_model)
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.LayerNorm)):
            fully_shard(layer)
    fully_shard(model)
    omega = compute_importance(model, data, cfg, show_progress=False)  # ranks: samples 0-2 and 3-6
    report = {"omega_rel_err": max(rel(omega[n].full_tensor(), reference[n]) for n in reference)}
    report["dtensor"] = all(
        hasattr(t, "full_tensor") for t in (*omega.importance.values(), *omega.anchors.values())
    )
    report["held"] = {n: local_tensor(t).numel() for n, t in omega.importance.items()}
    report["tasks"] = omega.tasks

    # the penalty on shards: grad += 2 lambda Omega (theta - theta*), against full tensors
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in params.values():
            p.add_(distribute_tensor(torch.randn(p.shape, generator=g), p.device_mesh, p.placements))
            p.grad = distribute_tensor(torch.randn(p.shape, generator=g), p.device_mesh, p.placements)
    want = {
        n: p.grad.full_tensor() + 2 * 3.0 * reference[n] * (p.full_tensor() - reference.anchors[n])
        for n, p in params.items()
    }
    want_value = sum(
        float((reference[n] * (p.full_tensor() - reference.anchors[n]) ** 2).sum()) for n, p in params.items()
    )
    bound = BoundPenalty(
        [params[n] for n in omega], [omega[n] for n in omega], [omega.anchors[n] for n in omega]
    )
    bound.add_grad_(3.0)
    report["penalty_grad_rel_err"] = max(rel(params[n].grad.full_tensor(), want[n]) for n in want)
    value = bound.value(3.0)
    dist.all_reduce(value)
    report["penalty_value"], report["penalty_value_reference"] = float(value), 3.0 * want_value

    # save: the consolidated files = save_pretrained of the gathered Omega; load: this rank's slices
    save_omega_consolidated(omega, out / "consolidated")
    gathered = Omega(
        {n: t.full_tensor() for n, t in omega.importance.items()},
        {n: t.full_tensor() for n, t in omega.anchors.items()},
        config=omega.config,
        tasks=omega.tasks,
        merge_state=omega.merge_state,
    )
    if rank == 0:
        gathered.save_pretrained(out / "plain")
    dist.barrier()
    local = DTensorShards({n: params[n] for n in omega})
    loaded = load_omega_shards(out / "plain", local.shards)
    placed = local.place(loaded.importance)
    diffs = [(local_tensor(placed[n]) - local_tensor(omega[n])).abs() for n in omega]
    report["load_err"] = max(float(d.max()) if d.numel() else 0.0 for d in diffs)
    report["load_dtensor"] = all(t.placements == params[n].placements for n, t in placed.items())
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
    exit_process()
