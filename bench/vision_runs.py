"""The machinery of bench/vision_tables.py: one method on a task sequence, lambda chosen on validation data.

- `Protocol`: what defines a benchmark's training (model, optimiser, epochs, validation fraction);
- `Run`: one method, its candidate lambdas (`grid`) and where Omega comes from;
- `run_sequence`: train the tasks in order; R (test) and R_val (validation, carved from each task's
  training set by `masllm.tasks.vision.validation_split`) after every task;
- `tuned`: every lambda of the grid on the selection seed(s), the choice by
  `masllm.continual.select_lambda` on R_val (best validation ACC; the test sets never enter), then
  the other seeds at the chosen lambda.

The training loop is `masllm.tasks.vision.train_task` (whole-tensor batches, the penalty gradient of
`masllm.penalty`), importance is `masllm.compute_importance` on a random subset of each task's
training images (Omega is a mean over samples, Eq. 2), merged by `Omega.merge` (`MASConfig.merge`).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from masllm import ESTIMATORS, MASConfig, compute_importance  # noqa: E402
from masllm.continual.metrics import summarize  # noqa: E402
from masllm.continual.selection import select_lambda  # noqa: E402
from masllm.methods.lwf import LwFConfig, distillation_loss, frozen_copy  # noqa: E402
from masllm.methods.si import SynapticIntelligence  # noqa: E402
from masllm.omega import Omega  # noqa: E402
from masllm.tasks.vision import (  # noqa: E402
    MultiHeadClassifier,
    TaskData,
    accuracy,
    batches,
    train_task,
    validation_split,
)

NO_PENALTY = ("finetune", "joint", "lwf")  # lwf: distillation instead of a penalty (Li & Hoiem 2016)


@dataclass
class Protocol:
    """Everything that defines one benchmark's training, as published (or as close as we know)."""

    hidden: tuple[int, ...]
    optimizer: str  # "adam" or "sgd"
    lr: float
    epochs: int
    batch_size: int = 128
    reset_optimizer: bool = False  # Hsu et al.'s code keeps one optimizer for the whole sequence
    importance_samples: int = 2000
    train_per_task: int | None = None  # subsample training sets (CPU budget, quick runs)
    validation: float = 0.1  # fraction of each task's training set held out: what lambda is chosen on
    max_validation: int = 2000  # of which at most this many are evaluated (Permuted MNIST: 6000 / task)
    init_std: float | None = None  # every parameter ~ N(0, std^2) (SPP: 0.1); None: PyTorch's default
    dropout: float = 0.0
    lr_decay: float = 1.0  # learning rate x lr_decay^epoch within each task (SPP: 0.96)


@dataclass
class Run:
    """One method: name, candidate lambdas (chosen on validation when more than one), Omega's data."""

    label: str
    method: str
    grid: tuple[float, ...] = (0.0,)  # lambda (LwF: lambda_o); finetune / joint: ignored
    importance_from: str = "train"  # train | test | train+test
    importance_classes: tuple[int, ...] | None = None  # first task only (adaptation test)
    merge: str = "sum"  # MASConfig.merge: sum | mean | alpha | ...
    normalize_omega: bool = False  # each task's Omega scaled to unit mean before the merge


def available(method: str) -> bool:
    return method in NO_PENALTY or method in ESTIMATORS


def make_optimizer(model: torch.nn.Module, p: Protocol) -> torch.optim.Optimizer:
    if p.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=p.lr)
    return torch.optim.SGD(model.parameters(), lr=p.lr)


def subsample(x: torch.Tensor, y: torch.Tensor, n: int | None, g: torch.Generator):
    if n is None or n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=g)[:n]
    return x[idx], y[idx]


def carve(task: TaskData, p: Protocol, seed: int, g: torch.Generator):
    """(train x, y) and (validation x, y) of a task: validation held out first, then train subsampled."""
    keep, held = validation_split(len(task.x_train), p.validation, seed)
    train = subsample(task.x_train[keep], task.y_train[keep], p.train_per_task, g)
    return train, (task.x_train[held[: p.max_validation]], task.y_train[held[: p.max_validation]])


def importance_data(task: TaskData, x_train, y_train, run: Run, first: bool, n: int, g, head: int):
    """Unlabeled batches for Eq. 2: a random subset of the train / test / both sets of the task."""
    if run.importance_from == "train":
        x, y = x_train, y_train
    elif run.importance_from == "test":
        x, y = task.x_test, task.y_test
    else:
        x, y = torch.cat([x_train, task.x_test]), torch.cat([y_train, task.y_test])
    if first and run.importance_classes is not None:
        keep = torch.isin(y, torch.tensor(run.importance_classes))
        x, y = x[keep], y[keep]
    x, y = subsample(x, y, n, g)
    return batches(x, y, head, 256)


def new_model(tasks: list[TaskData], p: Protocol, seed: int) -> MultiHeadClassifier:
    torch.manual_seed(seed)
    n_heads = max(t.head for t in tasks) + 1
    sizes = [next(t.num_classes for t in tasks if t.head == h) for h in range(n_heads)]
    model = MultiHeadClassifier.from_backbone_config(
        "mlp", in_features=784, hidden_sizes=p.hidden, dropout=p.dropout, head_sizes=sizes
    )
    if p.init_std is not None:
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0.0, p.init_std)
    return model


def evaluate_all(model, tasks: list[TaskData], val: list | None = None) -> list[float]:
    """Each task's accuracy (its own outputs only, `TaskData.classes`), on test or on `val` sets."""
    sets = [(t.x_test, t.y_test) for t in tasks] if val is None else val
    return [accuracy(model, x, y, t.head, classes=t.classes) for t, (x, y) in zip(tasks, sets)]


def normalized(omega: Omega) -> Omega:
    """Omega scaled to unit mean over all its entries: equal lambda is then equal mean strength."""
    total = sum(float(t.double().sum()) for t in omega.importance.values())
    count = sum(t.numel() for t in omega.importance.values())
    for t in omega.importance.values():
        t.mul_(count / total)
    return omega


@torch.no_grad()
def finite(model, x: torch.Tensor, head: int | torch.Tensor) -> bool:
    """Weights and outputs still finite (not so with plain SGD when lr * 2 lambda Omega > 2)."""
    weights = all(bool(torch.isfinite(q).all()) for q in model.parameters())
    return weights and bool(torch.isfinite(model(x, task_ids=head).logits).all())


def train_epochs(model, x, y, head, opt, p: Protocol, g, **kw) -> None:
    """p.epochs epochs of train_task, the learning rate decayed by p.lr_decay after each one."""
    for e in range(p.epochs):
        for group in opt.param_groups:
            group["lr"] = p.lr * p.lr_decay**e
        train_task(model, x, y, head, opt, epochs=1, batch_size=p.batch_size, generator=g, **kw)


def run_sequence(tasks: list[TaskData], p: Protocol, run: Run, lam: float, seed: int, probes=()) -> dict:
    """Train the tasks in order with `run`'s method at strength `lam`.

    Returns R[i][j] (test accuracy on task j after task i, %), R_val (the same on the validation
    sets) and the wall time. `probes`: extra test sets evaluated after every task (extra columns of R).
    A run whose weights or outputs stop being finite (plain SGD with lr * 2 lambda Omega > 2 on
    some weight) is not trained further: its remaining rows evaluate the broken model, `diverged` names the task.
    """
    t0 = time.time()
    g = torch.Generator().manual_seed(seed)
    model = new_model(tasks, p, seed)
    data = [carve(t, p, seed, g) for t in tasks]
    train, val = [d[0] for d in data], [d[1] for d in data]
    if run.method == "joint":
        R, R_val = run_joint(model, tasks, train, val, p, g)
        return {"R": [R] * len(tasks), "R_val": [R_val] * len(tasks), "seconds": time.time() - t0}
    if not available(run.method):
        raise ValueError(f"Method {run.method!r} is not registered in masllm.ESTIMATORS")
    penalty = run.method not in NO_PENALTY
    cfg = MASConfig(
        method=run.method if penalty else "mas", reg_lambda=lam if penalty else 0.0, merge=run.merge
    )
    omega = Omega(config=cfg)
    opt = make_optimizer(model, p)
    R, R_val, diverged = [], [], None
    for i, (t, (x, y)) in enumerate(zip(tasks, train)):
        if p.reset_optimizer and i:
            opt = make_optimizer(model, p)
        if diverged is None:
            hooks, finish = method_hooks(run, lam, model, tasks[:i], cfg)
            train_epochs(model, x, y, t.head, opt, p, g, omega=omega, reg_lambda=cfg.reg_lambda, **hooks)
            if finish is not None:
                finish()
            if not finite(model, x[:256], t.head):
                diverged = t.name
        R.append(evaluate_all(model, [*tasks, *probes]))
        R_val.append(evaluate_all(model, tasks, val))
        if penalty and i < len(tasks) - 1 and diverged is None:
            imp = importance_data(t, x, y, run, i == 0, p.importance_samples, g, t.head)
            try:
                new = compute_importance(model, imp, cfg, task_name=t.name, show_progress=False)
            except (RuntimeError, ValueError) as e:  # non-finite outputs on some importance sample
                diverged = f"{t.name} (importance: {str(e)[:60]})"
                continue
            omega.merge(normalized(new) if run.normalize_omega else new)
    state = {k: v for k, v in omega.merge_state.items() if not k.startswith("_")}
    return {"R": R, "R_val": R_val, "seconds": time.time() - t0, "diverged": diverged, "merge_state": state}


NS = SimpleNamespace()  # stands for TrainingArguments in the SI callback's hooks


def method_hooks(run: Run, lam: float, model, previous: list[TaskData], cfg: MASConfig):
    """What a method adds to the plain loop (train_task kwargs, and what to do after training):
    SI's path integral (masllm.methods.si callback, driven from this loop), LwF's distillation loss
    (weight lambda_o = `lam`, LwF's default when 0)."""
    if run.method == "si":
        si = SynapticIntelligence(cfg)
        si.on_train_begin(NS, None, None, model=model)
        hooks = {
            "before_step": lambda: si.on_pre_optimizer_step(NS, None, None),
            "after_step": lambda: si.on_optimizer_step(NS, None, None),
        }
        return hooks, lambda: si.on_train_end(NS, None, None, model=model)  # SI's Eq. 5
    if run.method == "lwf" and previous:
        teacher, old = frozen_copy(model), sorted({t.head for t in previous})
        lwf = LwFConfig(lwf_weight=lam) if lam else LwFConfig()

        def loss_fn(m, batch):  # CE on the new head + distillation of every old head (LwF, Eq. 2)
            out = m(**batch)
            x = batch["pixel_values"]
            with torch.no_grad():
                targets = [teacher(x, task_ids=h).logits for h in old]
            kd = sum(
                distillation_loss(m(x, task_ids=h).logits, z, lwf.lwf_temperature)
                for h, z in zip(old, targets)
            )
            return out.loss + lwf.lwf_weight * kd

        return {"loss_fn": loss_fn}, None
    return {}, None


def run_joint(model, tasks, train, val, p: Protocol, g: torch.Generator):
    """All tasks' training data shuffled together (the upper reference m_i of FWT)."""
    x = torch.cat([d[0] for d in train])
    y = torch.cat([d[1] for d in train])
    heads = torch.cat([torch.full((len(d[0]),), t.head, dtype=torch.long) for t, d in zip(tasks, train)])
    train_epochs(model, x, y, heads, make_optimizer(model, p), p, g)
    return evaluate_all(model, tasks), evaluate_all(model, tasks, val)


def tuned(tasks_for_seed: Callable[[int], list[TaskData]], p: Protocol, run: Run, seeds: list[int],
          select_seeds: int = 1) -> dict | None:  # fmt: skip
    """Every lambda of run.grid on the first `select_seeds` seeds, the one with the best validation
    ACC (masllm.continual.select_lambda), then the remaining seeds at it. None: method missing."""
    if not available(run.method):
        return None

    def one(lam: float, s: int) -> dict:
        r = run_sequence(tasks_for_seed(s), p, run, lam, s)
        print(f"  {run.label} lambda {lam:g} seed {s}: final test {[round(v, 2) for v in r['R'][-1]]}, "
              f"val ACC {sum(r['R_val'][-1]) / len(r['R_val'][-1]):.2f} ({r['seconds']:.0f} s)"
              + (f", DIVERGED on {r['diverged']}" if r.get("diverged") else ""),
              file=sys.stderr, flush=True)  # fmt: skip
        return r

    grid = {lam: [one(lam, s) for s in seeds[:select_seeds]] for lam in run.grid}
    chosen, table = run.grid[0], None
    if len(run.grid) > 1:
        sel = select_lambda({lam: [r["R_val"] for r in rs] for lam, rs in grid.items()})
        chosen, table = sel.chosen, sel.table()
        print(f"  {run.label}: {table} (seeds {seeds[:select_seeds]})", flush=True)
    runs = grid[chosen] + [one(chosen, s) for s in seeds[select_seeds:]]
    return {"lambda": chosen, "selection": table, "runs": runs, "grid": grid}


def summaries(results: list[dict], reference: list[float] | None = None) -> list[dict]:
    rows = []
    for r in results:
        s = summarize(r["R"], higher_is_better=True, reference=reference)
        rows.append({"acc": s.acc, "bwt": s.bwt, "fwt": s.fwt, "forgetting": s.forgetting,
                     "forgetting_per_task": s.forgetting_per_task, **r})  # fmt: skip
    return rows


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):6.2f} ± {sd:4.2f}"


def label_of(run: Run, res: dict | None) -> str:
    """The row label, with the lambda used (marked 'val' when chosen on validation from a grid)."""
    if res is None or run.method in ("finetune", "joint") or (run.method == "lwf" and run.grid == (0.0,)):
        return run.label
    return f"{run.label} l={res['lambda']:g}" + (" (val)" if len(run.grid) > 1 else "")


def print_rows(title: str, rows: list[tuple[str, list[dict] | None, dict]], cols: list[str]) -> None:
    print(f"\n{title}")
    head = (
        f"{'method':<40}" + "".join(f"{c.upper() + ' ours':>17}{'paper':>8}" for c in cols) + f"{'s/seed':>9}"
    )
    print(head)
    for label, res, published in rows:
        if res is None:
            print(f"{label:<40}  missing (method not registered in masllm yet)")
            continue
        line = f"{label:<40}"
        for c in cols:
            vals = [r[c] for r in res if r.get(c) is not None]
            pub = published.get(c)
            line += f"{mean_std(vals):>17}{(f'{pub:.2f}' if pub is not None else '/'):>8}"
        line += f"{statistics.mean(r['seconds'] for r in res):>9.1f}"
        print(line, flush=True)
