"""The machinery of bench/facts.py: one method on the 4-task fact sequence, lambda chosen on validation.

`run_facts` trains the tasks in order with `masllm.tasks.vision.train_task` (whole-tensor batches,
the penalty gradient of `masllm.penalty`, the model's own loss: the S/P/O embedding distance),
estimates Omega with `masllm.compute_importance` (F = the [S | P | O] embedding, no softmax) and
merges it with `Omega.merge`; after every task it records the test MAP of every task (R), the
validation MAP (R_val, what lambda is chosen on), the overall MAP, and for the Fig. 7 analog the MAP
of a subset of T1's facts and of the rest of T1. SI's path integral is recorded by
`masllm.methods.si.SynapticIntelligence`, driven from the loop (bench/vision_runs.method_hooks).
`tuned` runs the grid on the first seed, chooses with `masllm.continual.select_lambda`, then runs the
other seeds at the chosen value.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision_runs import Run, method_hooks  # noqa: E402

from masllm import MASConfig, compute_importance  # noqa: E402
from masllm.continual.selection import select_lambda  # noqa: E402
from masllm.omega import Omega  # noqa: E402
from masllm.tasks.facts import (  # noqa: E402
    DIGITS,
    ITEMS,
    RELATIONS,
    FactEmbeddingModel,
    FactsSpec,
    all_facts,
    fact_embeddings,
    fact_groups,
    load_facts,
    make_tasks,
    overall_map,
    task_map,
    unit_embeddings,
)
from masllm.tasks.vision import batches, train_task  # noqa: E402


@dataclass
class FactProtocol:
    hidden: tuple[int, ...] = (400, 400)
    lr: float = 1e-3  # Adam, a fresh one per task
    epochs: int = 8
    batch_size: int = 35  # the paper's mini-batch
    importance_samples: int = 1000
    validation: float = 0.1
    subset_digits: int = 2  # Fig. 7 analog: T1's facts whose subject is one of T1's first k digits


def setup(data_dir: Path, split_seed: int, p: FactProtocol, cache: Path) -> dict:
    """Data (cached), the unit embeddings, the 4 tasks of split `split_seed`, T1's subset."""
    spec = FactsSpec(str(data_dir / "mnist"), str(data_dir / "fashion-mnist"))
    data = load_facts(spec, cache)
    units = [unit_embeddings(list(n), cache) for n in (DIGITS, RELATIONS, ITEMS)]
    targets = fact_embeddings(data.facts, *(u[0] for u in units))
    groups = fact_groups("units", split_seed)
    tasks = make_tasks(data, groups, validation=p.validation, validation_seed=split_seed)
    t1 = tasks[0].facts
    subjects = all_facts()[t1, 0].unique(sorted=False)
    digits = torch.tensor(sorted(subjects.tolist())[: p.subset_digits])
    subset = t1[torch.isin(all_facts()[t1, 0], digits)]
    return {"tasks": tasks, "targets": targets, "subset": subset, "rest": t1[~torch.isin(t1, subset)],
            "subset_digits": [DIGITS[d] for d in digits.tolist()], "embedding_source": units[0][1]}  # fmt: skip


def importance_batches(task, x_subset_of: torch.Tensor | None, n: int, g: torch.Generator) -> list:
    x, f = task.x_train, task.f_train
    if x_subset_of is not None:  # Fig. 7: Omega from the subset's (unlabeled) images only
        keep = torch.isin(f, x_subset_of)
        x = x[keep]
    x = x[torch.randperm(len(x), generator=g)[:n]]
    return batches(x, None, 0, 256)


def run_facts(
    env: dict, p: FactProtocol, method: str, lam: float, seed: int, omega_subset: bool = False
) -> dict:
    """One run; returns R, R_val, overall MAP per row, subset / rest MAP of T1 per row, seconds."""
    t0 = time.time()
    tasks, g = env["tasks"], torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FactEmbeddingModel.from_backbone_config(
        "mlp", env["targets"], in_features=784, hidden_sizes=p.hidden
    )
    penalty = method not in ("finetune",)
    cfg = MASConfig(method=method if penalty else "mas", reg_lambda=lam if penalty else 0.0)
    omega = Omega(config=cfg)
    rows = {"R": [], "R_val": [], "all": [], "subset": [], "rest": []}
    for i, t in enumerate(tasks):
        opt = torch.optim.Adam(model.parameters(), lr=p.lr)
        hooks, finish = method_hooks(Run(method, method), lam, model, [], cfg)
        train_task(model, t.x_train, t.f_train, 0, opt, epochs=p.epochs, batch_size=p.batch_size,
                   omega=omega, reg_lambda=cfg.reg_lambda, generator=g, **hooks)  # fmt: skip
        if finish is not None:
            finish()
        rows["R"].append([task_map(model, u) for u in tasks])
        rows["R_val"].append([task_map(model, u, "val") for u in tasks])
        rows["all"].append(overall_map(model, tasks))
        rows["subset"].append(task_map(model, tasks[0], facts=env["subset"]))
        rows["rest"].append(task_map(model, tasks[0], facts=env["rest"]))
        if penalty and i < len(tasks) - 1:
            only = env["subset"] if omega_subset and i == 0 else None
            imp = importance_batches(t, only, p.importance_samples, g)
            omega.merge(compute_importance(model, imp, cfg, task_name=t.name, show_progress=False))
    return {**rows, "seconds": time.time() - t0}


def tuned(envs: dict[int, dict], p: FactProtocol, method: str, grid: tuple[float, ...], seeds: list[int],
          omega_subset: bool = False, fixed: float | None = None) -> dict:  # fmt: skip
    """The grid on seeds[0], lambda by select_lambda on R_val (validation MAP), the other seeds at it."""

    def one(lam: float, s: int) -> dict:
        r = run_facts(envs[s], p, method, lam, s, omega_subset)
        print(f"  {method}{' (Omega: T1 subset)' if omega_subset else ''} lambda {lam:g} seed {s}: "
              f"final MAP {[round(v, 3) for v in r['R'][-1]]} all {r['all'][-1]:.3f}, "
              f"val ACC {sum(r['R_val'][-1]) / 4:.3f} ({r['seconds']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
        return r

    if fixed is not None or len(grid) == 1:
        lam = grid[0] if fixed is None else fixed
        return {"lambda": lam, "selection": None, "runs": [one(lam, s) for s in seeds]}
    results = {lam: one(lam, seeds[0]) for lam in grid}
    sel = select_lambda({lam: [r["R_val"]] for lam, r in results.items()})
    print(f"  {method}: {sel.table()} (seed {seeds[0]})", flush=True)
    runs = [results[sel.chosen]] + [one(sel.chosen, s) for s in seeds[1:]]
    return {"lambda": sel.chosen, "selection": sel.table(), "runs": runs,
            "grid": {str(k): v for k, v in results.items()}}  # fmt: skip
