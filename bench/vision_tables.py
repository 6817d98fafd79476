"""Split / Permuted MNIST with masllm, printed beside the published tables.

Usage:
    OMP_NUM_THREADS=1 python bench/vision_tables.py [--tables hsu,fig6,adapt,table3,spp_split,spp_permuted]
        [--seeds 3] [--quick] [--data /work/shared/data] [--out bench/results]

Tables (mean +- std over seeds; each with the wall time it took on this machine):
- `hsu`: Hsu et al. 2018 ("Re-evaluating continual learning scenarios", Table 2, incremental task):
  Split MNIST, one 2-way head per task, MLP 784-400-400, Adam 1e-3 (one optimizer for the whole
  sequence, as their code), 4 epochs, batch 128.
- `spp_split`, `spp_permuted`: SPP paper (Peng et al. 2018) Tables 2 and 3: MLP 784-512-256-heads,
  SGD, ACC / BWT / FWT (Eq. 6-8), FWT against a joint model's per-task accuracy m_i.
- `fig6`: MAS paper (Aljundi et al. 2018) Fig. 6: 5 permuted-MNIST tasks, MLP with 512 units,
  average accuracy and average forgetting against lambda (PNG written to --out).
- `table3`: MAS paper Table 3 pattern: MAS and l-MAS, Omega from training / test / both (unlabeled).
- `adapt`: MAS paper Sec. 5.1 adaptation test: Omega of task 1 from one class only.

Methods are masllm estimators by name (`masllm.ESTIMATORS`: mas, lmas, ewc, spp, l2, ...),
plus `finetune` (no penalty) and `joint` (all tasks at once). A method not (yet) registered prints
as a missing row. The training loop is `masllm.tasks.vision.train_task` (whole-tensor batches, the
penalty gradient of `masllm.penalty`), importance is `masllm.compute_importance`, the summaries
are `masllm.continual.metrics`. Importance uses a random subset of each task's training set
(--importance-samples, default 2000): Omega is a mean over samples (Eq. 2), and exact per-sample
|g| over all 12-60k samples would cost far more than the training itself here.
"""

from __future__ import annotations

import argparse
import json
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
from masllm.methods.lwf import LwFConfig, distillation_loss, frozen_copy  # noqa: E402
from masllm.methods.si import SynapticIntelligence  # noqa: E402
from masllm.omega import Omega  # noqa: E402
from masllm.tasks.vision import (  # noqa: E402
    MultiHeadClassifier,
    TaskData,
    accuracy,
    batches,
    load_idx_dataset,
    permuted_tasks,
    split_tasks,
    train_task,
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
    train_per_task: int | None = None  # subsample training sets (quick runs)


@dataclass
class Run:
    """One method on one benchmark: name, estimator, lambda, and where Omega is estimated from."""

    label: str
    method: str
    reg_lambda: float = 0.0
    importance_from: str = "train"  # train | test | train+test
    importance_classes: tuple[int, ...] | None = None  # first task only (adaptation test)


def available(method: str) -> bool:
    return method in NO_PENALTY or method in ESTIMATORS


def selected(runs: list[Run], args: argparse.Namespace) -> list[Run]:
    """The runs whose method is in --methods (all when not given)."""
    return [r for r in runs if not args.methods or r.method in args.methods]


def make_optimizer(model: torch.nn.Module, p: Protocol) -> torch.optim.Optimizer:
    if p.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=p.lr)
    return torch.optim.SGD(model.parameters(), lr=p.lr)


def subsample(x: torch.Tensor, y: torch.Tensor, n: int | None, g: torch.Generator):
    if n is None or n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=g)[:n]
    return x[idx], y[idx]


def importance_data(task: TaskData, run: Run, first: bool, n: int, g: torch.Generator, head: int):
    """Unlabeled batches for Eq. 2: a random subset of the train / test / both sets of the task."""
    if run.importance_from == "train":
        x, y = task.x_train, task.y_train
    elif run.importance_from == "test":
        x, y = task.x_test, task.y_test
    else:
        x, y = torch.cat([task.x_train, task.x_test]), torch.cat([task.y_train, task.y_test])
    if first and run.importance_classes is not None:
        keep = torch.isin(y, torch.tensor(run.importance_classes))
        x, y = x[keep], y[keep]
    x, y = subsample(x, y, n, g)
    return batches(x, y, head, 256)


def new_model(tasks: list[TaskData], p: Protocol, seed: int) -> MultiHeadClassifier:
    torch.manual_seed(seed)
    n_heads = max(t.head for t in tasks) + 1
    sizes = [next(t.num_classes for t in tasks if t.head == h) for h in range(n_heads)]
    return MultiHeadClassifier.from_backbone_config(
        "mlp", in_features=784, hidden_sizes=p.hidden, head_sizes=sizes
    )


def evaluate_all(model: MultiHeadClassifier, tasks: list[TaskData]) -> list[float]:
    return [accuracy(model, t.x_test, t.y_test, t.head) for t in tasks]


def run_sequence(
    tasks: list[TaskData], p: Protocol, run: Run, seed: int, probes: list[TaskData] = ()
) -> list[list[float]]:
    """Train the tasks in order with `run`'s method; R[i][j] = accuracy on task j after task i (%).

    `probes`: extra test sets (never trained on) evaluated after every task, as extra columns.
    """
    g = torch.Generator().manual_seed(seed)
    model = new_model(tasks, p, seed)
    data = [subsample(t.x_train, t.y_train, p.train_per_task, g) for t in tasks]
    if run.method == "joint":
        return [run_joint(model, tasks, data, p, g)] * len(tasks)
    if not available(run.method):
        raise ValueError(f"Method {run.method!r} is not registered in masllm.ESTIMATORS")
    omega = Omega(config=MASConfig(method="mas"))
    opt = make_optimizer(model, p)
    R = []
    for i, (t, (x, y)) in enumerate(zip(tasks, data)):
        if p.reset_optimizer and i:
            opt = make_optimizer(model, p)
        cfg = MASConfig(method=run.method if run.method in ESTIMATORS else "mas", reg_lambda=run.reg_lambda)
        hooks, finish = method_hooks(run, model, tasks[:i], cfg)
        train_task(
            model, x, y, t.head, opt, epochs=p.epochs, batch_size=p.batch_size,
            omega=omega, reg_lambda=run.reg_lambda, generator=g, **hooks,
        )  # fmt: skip
        if finish is not None:
            finish()
        R.append(evaluate_all(model, [*tasks, *probes]))
        if run.method not in NO_PENALTY and i < len(tasks) - 1:
            imp = importance_data(t, run, i == 0, p.importance_samples, g, t.head)
            new = compute_importance(model, imp, cfg, task_name=t.name, show_progress=False)
            if omega.is_empty:
                omega = new
            else:
                omega.merge(new)
    return R


NS = SimpleNamespace()  # stands for TrainingArguments in the SI callback's hooks


def method_hooks(run: Run, model, previous: list[TaskData], cfg: MASConfig) -> tuple[dict, Callable | None]:
    """What a method adds to the plain loop (train_task kwargs, and what to do after training):
    SI's path integral (masllm.methods.si callback, driven from this loop), LwF's distillation loss."""
    if run.method == "si":
        si = SynapticIntelligence(cfg)
        si.on_train_begin(NS, None, None, model=model)
        hooks = {
            "before_step": lambda: si.on_pre_optimizer_step(NS, None, None),
            "after_step": lambda: si.on_optimizer_step(NS, None, None),
        }
        return hooks, lambda: si.on_train_end(NS, None, None, model=model)  # SI's Eq. 5
    if run.method == "lwf" and previous:
        teacher, old, lwf = frozen_copy(model), sorted({t.head for t in previous}), LwFConfig()

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


def run_joint(model, tasks, data, p: Protocol, g: torch.Generator) -> list[float]:
    """All tasks' training data shuffled together (the upper reference m_i of FWT)."""
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    heads = torch.cat([torch.full((len(d[0]),), t.head, dtype=torch.long) for t, d in zip(tasks, data)])
    train_task(
        model, x, y, heads, make_optimizer(model, p), epochs=p.epochs, batch_size=p.batch_size, generator=g
    )
    return evaluate_all(model, tasks)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):6.2f} ± {sd:4.2f}"


def run_method(tasks_for_seed: Callable[[int], list[TaskData]], p: Protocol, run: Run, seeds: list[int]):
    """Summaries per seed (dicts with acc/bwt/fwt/forgetting and R), or None when the method is missing."""
    if not available(run.method):
        return None
    out = []
    for s in seeds:
        tasks = tasks_for_seed(s)
        t0 = time.time()
        R = run_sequence(tasks, p, run, s)
        out.append({"R": R, "seconds": time.time() - t0})
        print(f"  {run.label} seed {s}: final accuracies {[round(v, 2) for v in R[-1]]} "
              f"({out[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    return out


def summaries(results: list[dict], reference: list[float] | None = None) -> list[dict]:
    rows = []
    for r in results:
        s = summarize(r["R"], higher_is_better=True, reference=reference)
        rows.append({"acc": s.acc, "bwt": s.bwt, "fwt": s.fwt, "forgetting": s.forgetting, **r})
    return rows


def print_rows(title: str, rows: list[tuple[str, list[dict] | None, dict]], cols: list[str]) -> None:
    print(f"\n{title}")
    head = (
        f"{'method':<34}" + "".join(f"{c.upper() + ' ours':>17}{'paper':>8}" for c in cols) + f"{'s/seed':>9}"
    )
    print(head)
    for label, res, published in rows:
        if res is None:
            print(f"{label:<34}  missing (method not registered in masllm yet)")
            continue
        line = f"{label:<34}"
        for c in cols:
            vals = [r[c] for r in res if r.get(c) is not None]
            pub = published.get(c)
            line += f"{mean_std(vals):>17}{(f'{pub:.2f}' if pub is not None else '/'):>8}"
        line += f"{statistics.mean(r['seconds'] for r in res):>9.1f}"
        print(line)


# ---------------------------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------------------------
HSU = {  # Hsu et al. 2018, Table 2, Split MNIST incremental task (mean of 10 runs)
    "finetune": 93.46, "mas": 99.22, "ewc": 97.70, "si": 98.56, "lwf": 99.60,
}  # fmt: skip
SPP_SPLIT = {  # Peng et al. 2018, Table 2: (FWT, BWT, ACC)
    "finetune": (-0.29, -13.9, 82.04), "ewc": (-4.99, -6.43, 88.75), "si": (-6.19, -3.51, 90.67),
    "mas": (-4.38, -2.08, 94.09), "lwf": (-4.42, -2.04, 94.08), "spp": (-0.44, -0.75, 98.31),
    "joint": (None, None, 99.87),
}  # fmt: skip
SPP_PERMUTED = {  # Peng et al. 2018, Table 3: (FWT, BWT, ACC)
    "finetune": (0.75, -6.21, 80.69), "ewc": (-0.98, -2.57, 91.97), "si": (-0.56, -4.40, 90.21),
    "mas": (-1.23, -1.61, 92.6), "lwf": (0.67, -24.02, 74.15), "spp": (2.33, -3.22, 94.51),
    "joint": (None, None, 95.05),
}  # fmt: skip


def table_hsu(args, data) -> dict:
    p = Protocol(hidden=(400, 400), optimizer="adam", lr=1e-3, epochs=4, batch_size=128,
                 importance_samples=args.importance_samples, train_per_task=args.train_per_task)  # fmt: skip
    lam = args.lambdas
    runs = [
        Run("Adam (finetune)", "finetune"),
        Run(f"MAS l={lam['mas']}", "mas", lam["mas"]),
        Run(f"MAS l={lam['mas_hsu']} (Hsu's Omega scale)", "mas", lam["mas_hsu"]),
        Run(f"EWC l={lam['ewc']}", "ewc", lam["ewc"]),
        Run("SI", "si", lam["si"]),
        Run("LwF", "lwf"),
        Run(f"L2 l={lam['l2']}", "l2", lam["l2"]),
        Run("joint (offline)", "joint"),
    ]
    tasks = split_tasks(data["mnist"])
    rows, dump = [], {}
    for run in selected(runs, args):
        res = run_method(lambda s: tasks, p, run, args.seeds)
        res = summaries(res) if res is not None else None
        rows.append((run.label, res, {"acc": HSU.get(run.method)}))
        dump[run.label] = res
    print_rows("Hsu et al. 2018 Split MNIST, incremental task (MLP 2x400, Adam 1e-3, 4 epochs, batch 128)",
               rows, ["acc", "forgetting"])  # fmt: skip
    return dump


def spp_table(args, tasks_for_seed, published: dict, title: str, p: Protocol) -> dict:
    lam = args.lambdas
    joint = run_method(tasks_for_seed, p, Run("joint", "joint"), args.seeds)
    runs = [
        Run(f"{'Adam' if p.optimizer == 'adam' else 'SGD'} (finetune)", "finetune"),
        Run(f"EWC l={lam['ewc']}", "ewc", lam["ewc"]),
        Run("SI", "si", lam["si"]),
        Run(f"MAS l={lam['mas']}", "mas", lam["mas"]),
        Run("LwF", "lwf"),
        Run(f"SPP l={lam['spp']}", "spp", lam["spp"]),
    ]
    rows, dump = [], {}
    for run in selected(runs, args):
        res = run_method(tasks_for_seed, p, run, args.seeds)
        if res is not None:  # FWT (Eq. 7) against the joint model of the same seed
            res = [summaries([r], j["R"][-1])[0] for r, j in zip(res, joint)]
        fwt, bwt, acc = published.get(run.method, (None, None, None))
        rows.append((run.label, res, {"acc": acc, "bwt": bwt, "fwt": fwt}))
        dump[run.label] = res
    jrows = summaries(joint)
    rows.append(("joint", jrows, {"acc": published["joint"][2]}))
    dump["joint"] = jrows
    print_rows(title, rows, ["acc", "bwt", "fwt"])
    return dump


def table_spp_split(args, data) -> dict:
    p = Protocol(hidden=(512, 256), optimizer=args.spp_optimizer, lr=args.sgd_lr, epochs=args.spp_epochs,
                 importance_samples=args.importance_samples, train_per_task=args.train_per_task)  # fmt: skip
    tasks = split_tasks(data["mnist"])
    return spp_table(
        args,
        lambda s: tasks,
        SPP_SPLIT,
        f"SPP Table 2: Split MNIST, MLP 784-512-256, {p.optimizer} lr {p.lr}, {p.epochs} epochs",
        p,
    )


def table_spp_permuted(args, data) -> dict:
    p = Protocol(hidden=(512, 256), optimizer=args.spp_optimizer, lr=args.sgd_lr, epochs=args.spp_epochs,
                 importance_samples=args.importance_samples, train_per_task=args.permuted_train_per_task)  # fmt: skip
    return spp_table(
        args, lambda s: permuted_tasks(data["mnist"], 10, seed=s), SPP_PERMUTED,
        f"SPP Table 3: Permuted MNIST 10 tasks, MLP 784-512-256-10 single head, {p.optimizer} lr {p.lr}, {p.epochs} epochs, "
        f"{p.train_per_task or 60000} train samples/task", p,
    )  # fmt: skip


def fig6_protocol(args) -> Protocol:
    return Protocol(hidden=(512, 512), optimizer="adam", lr=1e-3, epochs=args.fig6_epochs,
                    importance_samples=args.importance_samples, train_per_task=args.permuted_train_per_task)  # fmt: skip


def table_fig6(args, data) -> dict:
    p = fig6_protocol(args)
    points = {}
    for lam in args.fig6_lambdas:
        run = Run(f"MAS l={lam}", "mas" if lam > 0 else "finetune", lam)
        res = summaries(run_method(lambda s: permuted_tasks(data["mnist"], 5, seed=s), p, run, args.seeds))
        points[lam] = res
    print(f"\nMAS Fig. 6: 5 permuted-MNIST tasks, MLP 784-512-512-10, Adam 1e-3, {p.epochs} epoch(s), "
          f"{p.train_per_task or 60000} train samples/task")  # fmt: skip
    print(f"{'lambda':>8}{'avg acc %':>17}{'avg forgetting %':>19}{'s/seed':>9}")
    for lam, res in points.items():
        print(f"{lam:>8}{mean_std([r['acc'] for r in res]):>17}{mean_std([r['forgetting'] for r in res]):>19}"
              f"{statistics.mean(r['seconds'] for r in res):>9.1f}")  # fmt: skip
    print(
        "paper Fig. 6 (a plot; its axes span 89-97 % accuracy and 0-10 % forgetting): forgetting drops "
        "steeply from lambda = 0 and stays low, accuracy is flat, around lambda = 1"
    )
    plot_fig6(points, Path(args.out) / "fig6_lambda.png")
    return {str(k): v for k, v in points.items()}


def plot_fig6(points: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lams = list(points)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in zip(axes, ("acc", "forgetting"), ("avg. accuracy %", "avg. forgetting %")):
        means = [statistics.mean(r[key] for r in points[lam]) for lam in lams]
        sds = [statistics.stdev(r[key] for r in points[lam]) if len(points[lam]) > 1 else 0 for lam in lams]
        ax.errorbar(lams, means, yerr=sds, marker="o", capsize=3, label="masllm MAS")
        ax.set_xlabel("lambda")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("5 permuted MNIST tasks (cf. MAS paper Fig. 6)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def table3(args, data) -> dict:
    p = fig6_protocol(args)
    lam = args.lambdas["mas_perm"]
    rows, dump = [], {}
    for method, label in (("mas", "MAS"), ("lmas", "l-MAS")):
        for source in ("train", "test", "train+test"):
            run = Run(
                f"{label} Omega on {source}", method, lam if method == "mas" else args.lambdas["lmas"], source
            )
            res = run_method(lambda s: permuted_tasks(data["mnist"], 5, seed=s), p, run, args.seeds)
            res = summaries(res) if res is not None else None
            rows.append((run.label, res, {}))
            dump[run.label] = res
    print_rows(f"MAS Table 3 pattern on 5 permuted-MNIST tasks (MAS l={lam}); the paper's claim: "
               "train vs test (unlabeled) Omega about equal; l-MAS forgets more than MAS",
               rows, ["acc", "forgetting"])  # fmt: skip
    return dump


def table_adapt(args, data) -> dict:
    """Omega of task 1 from one digit only: is that digit forgotten less than task 1 as a whole?"""
    p = fig6_protocol(args)
    lam, digit = args.lambdas["mas_perm"], args.adapt_digit
    out = {}
    print(
        f"\nMAS Sec. 5.1 adaptation test: 5 permuted-MNIST tasks, one head each, MAS l={lam}, task-1 Omega from digit {digit} only"
    )
    print(f"{'run':<26}{'forget digit %':>17}{'forget task 1 %':>17}{'last task acc':>17}")
    for label, classes in (("MAS (all of task 1)", None), (f"MAS (digit {digit} only)", (digit,))):
        stats: dict[str, list[float]] = {"digit": [], "task": [], "last": []}
        for s in args.seeds:
            tasks = permuted_tasks(data["mnist"], 5, seed=s, multi_head=True)
            run = Run(label, "mas", lam, importance_classes=classes)
            model_R, digit_acc = run_with_digit_probe(tasks, p, run, s, digit)
            stats["digit"].append(digit_acc[0] - digit_acc[-1])
            stats["task"].append(model_R[0][0] - model_R[-1][0])
            stats["last"].append(model_R[-1][-1])
        out[label] = stats
        print(
            f"{label:<26}{mean_std(stats['digit']):>17}{mean_std(stats['task']):>17}{mean_std(stats['last']):>17}"
        )
    print(
        "paper (8 objrec tasks, Flower class): forgetting on the class 2 % vs 8 % on the whole task; "
        "last task 84 % vs 69 %"
    )
    return out


def run_with_digit_probe(tasks: list[TaskData], p: Protocol, run: Run, seed: int, digit: int):
    """run_sequence, also recording task-1 accuracy on one digit's test samples after every task."""
    first, keep = tasks[0], tasks[0].y_test == digit
    x, y = first.x_test[keep], first.y_test[keep]
    probe = TaskData("probe", x, y, x, y, first.num_classes, first.head)
    R = run_sequence(tasks, p, run, seed, probes=[probe])
    return [row[:-1] for row in R], [row[-1] for row in R]


TABLES = {
    "hsu": table_hsu,
    "fig6": table_fig6,
    "adapt": table_adapt,
    "table3": table3,
    "spp_split": table_spp_split,
    "spp_permuted": table_spp_permuted,
}


def parse_lambdas(text: str) -> dict[str, float]:
    lam = {
        "mas": 1.0,
        "mas_hsu": 0.4,
        "mas_perm": 1.0,
        "lmas": 1.0,
        "ewc": 100.0,
        "si": 1.0,
        "l2": 0.01,
        "spp": 1.0,
    }
    for item in filter(None, text.split(",")):
        k, v = item.split("=")
        lam[k.strip()] = float(v)
    return lam


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="hsu,fig6,adapt,table3,spp_split,spp_permuted")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--quick", action="store_true", help="1 seed, subsampled data: a smoke run of every table"
    )
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--lambdas", default="", help="e.g. mas=1,ewc=100,si=1,l2=0.01,spp=1,mas_hsu=0.4")
    ap.add_argument("--importance-samples", type=int, default=2000)
    ap.add_argument("--train-per-task", type=int, default=None)
    ap.add_argument("--permuted-train-per-task", type=int, default=20000)
    ap.add_argument("--sgd-lr", type=float, default=0.1, help="learning rate of the SPP tables")
    ap.add_argument("--spp-optimizer", default="sgd", choices=["sgd", "adam"])
    ap.add_argument("--spp-epochs", type=int, default=2)
    ap.add_argument("--fig6-epochs", type=int, default=1)
    ap.add_argument("--fig6-lambdas", default="0,0.25,0.5,1,1.5")
    ap.add_argument("--adapt-digit", type=int, default=0)
    ap.add_argument("--methods", default="", help="Run only these methods (comma list), e.g. mas,ewc")
    ap.add_argument(
        "--fig6-from", default=None, help="Only re-plot Fig. 6 from these result JSONs (comma list)"
    )
    args = ap.parse_args(argv)
    if args.fig6_from:
        points = {}
        for path in args.fig6_from.split(","):
            points.update({float(k): v for k, v in json.loads(Path(path).read_text())["fig6"].items()})
        plot_fig6(dict(sorted(points.items())), Path(args.out) / "fig6_lambda.png")
        return
    args.lambdas = parse_lambdas(args.lambdas)
    args.methods = [m for m in args.methods.split(",") if m]
    args.fig6_lambdas = [float(v) for v in args.fig6_lambdas.split(",")]
    if args.quick:
        args.seeds, args.train_per_task, args.permuted_train_per_task = 1, 2000, 2000
        args.importance_samples = 500
    args.seeds = list(range(args.seeds))
    data_dir = Path(args.data)
    data = {"mnist": load_idx_dataset(data_dir / "mnist", data_dir / "SHA256SUMS")}
    torch.set_num_threads(1)
    results = {}
    for name in args.tables.split(","):
        t0 = time.time()
        results[name] = TABLES[name](args, data)
        print(f"[{name}: {time.time() - t0:.0f} s for {len(args.seeds)} seed(s)]", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vision_tables.json").write_text(json.dumps(results, indent=1, default=lambda o: None))


if __name__ == "__main__":
    main()
