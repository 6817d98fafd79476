"""Split / Permuted MNIST with masllm, printed beside the published tables; lambda chosen on validation data.

Usage:
    OMP_NUM_THREADS=1 python bench/vision_tables.py [--tables hsu,fig6,adapt,table3,spp_split,spp_permuted,alpha]
        [--seeds 3] [--lambdas mas=0.1/0.4/1,ewc=1000] [--quick] [--data ../shared/data] [--out bench/results]

Every method with a strength (lambda; SI's c; LwF's lambda_o) runs its grid (defaults below, `--lambdas
key=v1/v2/...` overrides one) on the first seed, the value with the best validation ACC is chosen
(`masllm.continual.select_lambda`: the validation sets are 10% of each task's training images, held
out by `masllm.tasks.vision.validation_split`; the test sets never enter the choice), then the other
seeds run at it. Each table prints the grid's validation ACC and the chosen value.

Tables (mean +- std over seeds; each with the wall time it took on this machine):
- `hsu`: Hsu et al. 2018 ("Re-evaluating continual learning scenarios", Table 2, incremental task):
  Split MNIST, one 2-way head per task, MLP 784-400-400, Adam 1e-3 (one optimizer for the whole
  sequence, as their code), 4 epochs, batch 128.
- `spp_split`, `spp_permuted`: SPP paper (Peng et al. 2018) Tables 2 and 3: MLP 784-512-256-10,
  ACC / BWT / FWT (Eq. 6-8), FWT against a joint model's per-task accuracy m_i. Split MNIST on one
  shared 10-way output layer trained with the full softmax, each task answering on its own two
  classes at test time (`--spp-layout shared`; `multi`: one 2-way head per task).
- `fig6`: MAS paper (Aljundi et al. 2018) Fig. 6: 5 permuted-MNIST tasks, MLP with 512 units,
  average accuracy and average forgetting against lambda (PNG written to --out).
- `table3`: MAS paper Table 3: MAS and l-MAS at matched strength (each task's Omega scaled to unit
  mean, the same lambdas) and each at its own validation-chosen lambda; Omega from training / test /
  both (unlabeled).
- `adapt`: MAS paper Sec. 5.1 adaptation test: Omega of task 1 from one class only.
- `alpha`, `alpha_permuted`: alpha-scaling (merge='alpha') vs sum vs mean, 3 task orders x the
  seeds: maximum forgetting over tasks, the spread of final ACC across orders. `alpha`: Hsu's
  protocol on the alpha-scaling write-up's Split MNIST pairs; `alpha_permuted`: fig6's protocol.

Methods are masllm estimators by name (`masllm.ESTIMATORS`: mas, lmas, ewc, spp, l2, si, ...), plus
`finetune` (no penalty), `lwf` and `joint` (all tasks at once); the machinery is bench/vision_runs.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision_runs import Protocol, Run, label_of, mean_std, print_rows, run_sequence, summaries, tuned  # noqa: E402

from masllm.tasks.vision import TaskData, load_idx_dataset, permuted_tasks, split_tasks  # noqa: E402

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
GRIDS = {  # candidate strengths per key; the table picks each on validation data
    "mas": (0.1, 0.4, 1.0, 4.0),  # Hsu protocol
    "ewc": (100.0, 1000.0, 10000.0),
    "si": (30.0, 300.0, 3000.0),
    "l2": (0.001, 0.01, 0.1),
    "lwf": (0.3, 1.0, 3.0),
    "spp_mas": (0.01, 0.1, 1.0),  # SPP protocols (SGD: lr * 2 lambda Omega must stay < 2)
    "spp_ewc": (1.0, 10.0, 100.0),
    "spp_si": (0.1, 1.0, 10.0),
    "spp_spp": (0.01, 0.1, 1.0),
    "spp_lwf": (0.3, 1.0, 3.0),
    "mas_perm": (0.05, 0.1, 0.25, 1.0),  # 5 permuted tasks, Adam, 1 epoch (fig6, adapt, table3)
    "lmas": (0.05, 0.25, 1.0),
    "adapt": (0.05, 0.25),
    "unit": (0.001, 0.003, 0.01, 0.03),  # Omega at unit mean (table3's matched strength)
    "alpha_sum": (0.4, 2.0, 10.0),
    "alpha_mean": (0.4, 2.0, 10.0),
    "alpha_alpha": (0.4, 2.0, 10.0),
}
ALPHA_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 0))  # the alpha-scaling write-up's Split MNIST


def hsu_protocol(args) -> Protocol:
    return Protocol(hidden=(400, 400), optimizer="adam", lr=1e-3, epochs=4, batch_size=128,
                    importance_samples=args.importance_samples, train_per_task=args.train_per_task)  # fmt: skip


def table_rows(args, tasks_for_seed, p: Protocol, runs: list[Run], published: dict, fwt_joint: bool):
    """Each run tuned on validation; rows for print_rows and the JSON dump."""
    joint = None
    if fwt_joint and args.joint_from:  # the joint runs of an earlier invocation (same protocol, seeds)
        joint = json.loads(Path(args.joint_from).read_text())["joint"][: len(args.seeds)]
    elif fwt_joint:
        joint = tuned(tasks_for_seed, p, Run("joint", "joint"), args.seeds)["runs"]
    rows, dump = [], {}
    for run in runs:
        if args.methods and run.method not in args.methods:
            continue
        res = tuned(tasks_for_seed, p, run, args.seeds)
        summ = None
        if res is not None:
            refs = [j["R"][-1] for j in joint] if joint else [None] * len(res["runs"])
            summ = [summaries([r], ref)[0] for r, ref in zip(res["runs"], refs)]
        rows.append((label_of(run, res), summ, published(run.method)))
        dump[run.label] = {
            "lambda": res and res["lambda"],
            "selection": res and res["selection"],
            "runs": summ,
        }
    if joint:
        rows.append(("joint", summaries(joint), published("joint")))
        dump["joint"] = summaries(joint)
    return rows, dump


def table_hsu(args, data) -> dict:
    g = args.grids
    runs = [
        Run("Adam (finetune)", "finetune"),
        Run("MAS", "mas", g["mas"]),
        Run("EWC", "ewc", g["ewc"]),
        Run("SI", "si", g["si"]),
        Run("LwF", "lwf", g["lwf"]),
        Run("L2", "l2", g["l2"]),
        Run("joint (offline)", "joint"),
    ]
    tasks = split_tasks(data["mnist"])
    rows, dump = table_rows(
        args, lambda s: tasks, hsu_protocol(args), runs, lambda m: {"acc": HSU.get(m)}, False
    )
    print_rows("Hsu et al. 2018 Split MNIST, incremental task (MLP 2x400, Adam 1e-3, 4 epochs, batch 128)",
               rows, ["acc", "forgetting"])  # fmt: skip
    return dump


def spp_protocol(args, permuted: bool) -> Protocol:
    return Protocol(hidden=(512, 256), optimizer=args.spp_optimizer, lr=args.spp_lr, epochs=args.spp_epochs,
                    importance_samples=args.importance_samples, init_std=args.spp_init_std,
                    lr_decay=args.spp_lr_decay, dropout=args.spp_dropout,
                    train_per_task=args.permuted_train_per_task if permuted else args.train_per_task)  # fmt: skip


def spp_table(args, tasks_for_seed, published: dict, title: str, p: Protocol) -> dict:
    g = args.grids
    opt = {"adam": "Adam", "sgd": "SGD", "sgdm": "SGD+momentum"}[p.optimizer]
    runs = [
        Run(f"{opt} (finetune)", "finetune"),
        Run("EWC", "ewc", g["spp_ewc"]),
        Run("SI", "si", g["spp_si"]),
        Run("MAS", "mas", g["spp_mas"]),
        Run("LwF", "lwf", g["spp_lwf"]),
        Run("SPP", "spp", g["spp_spp"]),
    ]

    def pub(method):
        fwt, bwt, acc = published.get(method, (None, None, None))
        return {"acc": acc, "bwt": bwt, "fwt": fwt}

    rows, dump = table_rows(args, tasks_for_seed, p, runs, pub, True)
    print_rows(title, rows, ["acc", "bwt", "fwt"])
    return dump


def describe(p: Protocol) -> str:
    init = f"N(0, {p.init_std}^2) init" if p.init_std else "default init"
    return (f"{p.optimizer} lr {p.lr} (x{p.lr_decay}/epoch), {p.epochs} epochs, batch {p.batch_size}, {init}, "
            f"dropout {p.dropout}")  # fmt: skip


def table_spp_split(args, data) -> dict:
    p = spp_protocol(args, permuted=False)
    tasks = split_tasks(data["mnist"], shared_head=args.spp_layout == "shared")
    layout = (
        "one shared 10-way output, classes masked at test" if args.spp_layout == "shared" else "2-way heads"
    )
    return spp_table(args, lambda s: tasks, SPP_SPLIT, f"SPP Table 2: Split MNIST, MLP 784-512-256, {layout}, "
                     f"{describe(p)}", p)  # fmt: skip


def table_spp_permuted(args, data) -> dict:
    p = spp_protocol(args, permuted=True)
    return spp_table(
        args, lambda s: permuted_tasks(data["mnist"], 10, seed=s), SPP_PERMUTED,
        f"SPP Table 3: Permuted MNIST 10 tasks, MLP 784-512-256-10 single head, {describe(p)}, "
        f"{p.train_per_task or 54000} train samples/task", p,
    )  # fmt: skip


def fig6_protocol(args) -> Protocol:
    return Protocol(hidden=(512, 512), optimizer="adam", lr=1e-3, epochs=args.fig6_epochs,
                    importance_samples=args.importance_samples, train_per_task=args.permuted_train_per_task)  # fmt: skip


def five_permuted(data, multi_head: bool = False):
    return lambda s: permuted_tasks(data["mnist"], 5, seed=s, multi_head=multi_head)


def table_fig6(args, data) -> dict:
    p = fig6_protocol(args)
    lams = (0.0, *args.grids["mas_perm"])
    res = tuned(five_permuted(data), p, Run("MAS", "mas", lams), args.seeds, select_seeds=len(args.seeds))
    points = {lam: summaries(rs) for lam, rs in res["grid"].items()}
    print(f"\nMAS Fig. 6: 5 permuted-MNIST tasks, MLP 784-512-512-10, Adam 1e-3, {p.epochs} epoch(s), "
          f"{p.train_per_task or 54000} train samples/task; lambda chosen on validation (all seeds): {res['lambda']:g}")  # fmt: skip
    print(f"{'lambda':>8}{'val ACC':>10}{'avg acc %':>17}{'avg forgetting %':>19}{'s/seed':>9}")
    for lam, rs in points.items():
        val = statistics.mean(sum(r["R_val"][-1]) / len(r["R_val"][-1]) for r in rs)
        mark = " <- chosen" if lam == res["lambda"] else ""
        print(f"{lam:>8g}{val:>10.2f}{mean_std([r['acc'] for r in rs]):>17}{mean_std([r['forgetting'] for r in rs]):>19}"
              f"{statistics.mean(r['seconds'] for r in rs):>9.1f}{mark}")  # fmt: skip
    print("paper Fig. 6 (a plot; its axes span 89-97 % accuracy and 0-10 % forgetting): forgetting drops "
          "steeply from lambda = 0 and stays low, accuracy is flat, around lambda = 1")  # fmt: skip
    plot_fig6(points, Path(args.out) / "fig6_lambda.png")
    return {
        "lambda": res["lambda"],
        "selection": res["selection"],
        "points": {str(k): v for k, v in points.items()},
    }


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


def new_task_acc(r: dict) -> float:
    """Mean accuracy of tasks 2..T right after learning them (the plasticity the penalty costs)."""
    R = r["R"]
    return statistics.mean(R[i][i] for i in range(1, len(R)))


def table3(args, data) -> dict:
    """MAS vs l-MAS at matched strength (unit-mean Omega, same lambda) and each at its own
    validation-chosen lambda; then Omega from train / test / train+test at those lambdas."""
    p, g, tasks_for_seed = fig6_protocol(args), args.grids, five_permuted(data)
    out: dict = {"matched": {}, "own": {}, "sources": {}}
    print("\nMAS Table 3 on 5 permuted-MNIST tasks (Adam 1e-3, 1 epoch): MAS vs l-MAS")
    print("matched strength: each task's Omega scaled to unit mean, the same lambdas (seed 0, test numbers)")
    print(
        f"{'lambda':>8}{'MAS acc':>9}{'forget':>8}{'new-task':>9}{'l-MAS acc':>11}{'forget':>8}{'new-task':>9}"
    )
    for method in ("mas", "lmas"):
        out["matched"][method] = tuned(tasks_for_seed, p, Run(f"{method} unit", method, g["unit"], normalize_omega=True),
                                       args.seeds[:1])  # fmt: skip
    for lam in g["unit"]:
        cells = ""
        for method in ("mas", "lmas"):
            r = summaries(out["matched"][method]["grid"][lam])[0]
            cells += f"{r['acc']:>9.2f}{r['forgetting']:>8.2f}{new_task_acc(r):>9.2f}" + (
                "  " if method == "mas" else ""
            )
        print(f"{lam:>8g}{cells}")
    for method in ("mas", "lmas"):
        print(f"  {method} unit-mean Omega: {out['matched'][method]['selection']}")
    rows = []
    for method, label in (("mas", "MAS"), ("lmas", "l-MAS")):
        lam = out["matched"][method]["lambda"]
        for source in ("train", "test", "train+test"):
            run = Run(f"{label} unit-mean Omega on {source}", method, (lam,), source, normalize_omega=True)
            done = out["matched"][method]["grid"][lam] if source == "train" else []  # seed 0, already run
            res = summaries(
                done + [run_sequence(tasks_for_seed(s), p, run, lam, s) for s in args.seeds[len(done) :]]
            )
            rows.append((f"{run.label} l={lam:g} (val)", res, {}))
            out["sources"][run.label] = res
        own = Run(f"{label} raw Omega", method, g["mas_perm" if method == "mas" else "lmas"])
        res = tuned(tasks_for_seed, p, own, args.seeds)
        rows.append((label_of(own, res), summaries(res["runs"]), {}))
        out["own"][method] = {
            "lambda": res["lambda"],
            "selection": res["selection"],
            "runs": summaries(res["runs"]),
        }
    print_rows("MAS Table 3 rows (the paper: train vs test Omega about equal; l-MAS forgets ~3% vs MAS ~1% "
               "at about equal new-task accuracy)", rows, ["acc", "forgetting"])  # fmt: skip
    return out


def table_adapt(args, data) -> dict:
    """Omega of task 1 from one digit only: is that digit forgotten less than task 1 as a whole?"""
    p, digit = fig6_protocol(args), args.adapt_digit
    tasks_for_seed = five_permuted(data, multi_head=True)
    pick = tuned(tasks_for_seed, p, Run("MAS (all of task 1)", "mas", args.grids["adapt"]), args.seeds[:1])
    lam = pick["lambda"]
    out = {"lambda": lam, "selection": pick["selection"]}
    print(f"\nMAS Sec. 5.1 adaptation test: 5 permuted-MNIST tasks, one head each, MAS l={lam:g} (val), "
          f"task-1 Omega from digit {digit} only")  # fmt: skip
    print(f"{'run':<26}{'forget digit %':>17}{'forget task 1 %':>17}{'last task acc':>17}")
    for label, classes in (("MAS (all of task 1)", None), (f"MAS (digit {digit} only)", (digit,))):
        stats: dict[str, list[float]] = {"digit": [], "task": [], "last": []}
        for s in args.seeds:
            tasks = tasks_for_seed(s)
            first, keep = tasks[0], tasks[0].y_test == digit
            x, y = first.x_test[keep], first.y_test[keep]
            probe = TaskData("probe", x, y, x, y, first.num_classes, first.head)
            R = run_sequence(
                tasks, p, Run(label, "mas", (lam,), importance_classes=classes), lam, s, [probe]
            )["R"]
            stats["digit"].append(R[0][-1] - R[-1][-1])
            stats["task"].append(R[0][0] - R[-1][0])
            stats["last"].append(R[-1][-2])
        out[label] = stats
        print(
            f"{label:<26}{mean_std(stats['digit']):>17}{mean_std(stats['task']):>17}{mean_std(stats['last']):>17}"
        )
    print("paper (8 objrec tasks, Flower class): forgetting on the class 2 % vs 8 % on the whole task; "
          "last task 84 % vs 69 %")  # fmt: skip
    return out


ALPHA_ORDERS = {  # the tracked task (index 0) first, in the middle, last (the write-up moves it from first to fifth)
    "first": (0, 1, 2, 3, 4),
    "middle": (1, 2, 0, 3, 4),
    "last": (1, 2, 3, 4, 0),
}


def alpha_table(args, base, p: Protocol, title: str, tracked: str) -> dict:
    """merge = alpha vs sum vs mean: max forgetting over tasks and the spread of final ACC across orders.
    `base(seed)` is the task list in its first order; each order permutes it (ALPHA_ORDERS)."""

    def tasks_for(order, s):
        return [base(s)[k] for k in ALPHA_ORDERS[order]]

    orders = list(ALPHA_ORDERS)
    out: dict = {}
    print(f"\n{title}; orders: task {tracked} {' / '.join(orders)}; lambda chosen on validation per rule "
          f"(first order, seed {args.seeds[0]})")  # fmt: skip
    print(f"{'merge':<7}{'lambda':>7}{'max forgetting':>16}{'mean forgetting':>17}"
          + "".join(f"{'ACC ' + o:>17}" for o in orders) + f"{'spread':>8}{f'{tracked} final by order':>26}")  # fmt: skip
    for merge in ("sum", "mean", "alpha"):
        pick = tuned(lambda s: tasks_for("first", s), p, Run(f"MAS merge={merge}", "mas", args.grids[f"alpha_{merge}"],
                     merge=merge), args.seeds[:1])  # fmt: skip
        lam = pick["lambda"]
        per_order = {}
        for name in orders:
            run = Run(f"MAS merge={merge} {name}", "mas", (lam,), merge=merge)
            rs = pick["grid"][lam] if name == "first" else []
            rs = rs + [run_sequence(tasks_for(name, s), p, run, lam, s) for s in args.seeds[len(rs) :]]
            per_order[name] = summaries(rs)
        allruns = [r for rs in per_order.values() for r in rs]
        maxf = [max(r["forgetting_per_task"]) for r in allruns]
        accs = {o: statistics.mean(r["acc"] for r in rs) for o, rs in per_order.items()}
        final = {
            o: statistics.mean(r["R"][-1][ALPHA_ORDERS[o].index(0)] for r in rs)
            for o, rs in per_order.items()
        }
        print(f"{merge:<7}{lam:>7g}{mean_std(maxf):>16}{mean_std([r['forgetting'] for r in allruns]):>17}"
              + "".join(f"{mean_std([r['acc'] for r in rs]):>17}" for rs in per_order.values())
              + f"{max(accs.values()) - min(accs.values()):>8.2f}"
              + f"{'  ' + ' / '.join(f'{v:.2f}' for v in final.values()):>26}", flush=True)  # fmt: skip
        totals = [r["merge_state"].get("alpha_task_totals") for r in allruns if r.get("merge_state")]
        if merge == "alpha" and totals:
            print(f"  alpha: task Omega totals S_t (first run) {[round(t, 1) for t in totals[0]]}")
        out[merge] = {"lambda": lam, "selection": pick["selection"], "orders": per_order}
    print("write-up (CNN, 5 Split MNIST tasks; plots): alpha-scaling's maximum forgetting over tasks below MAS's, "
          "and the accuracy on the moved task less dependent on its position in the order")  # fmt: skip
    return out


def table_alpha(args, data) -> dict:
    tasks = split_tasks(data["mnist"], pairs=ALPHA_PAIRS)
    title = f"Alpha-scaling vs sum vs mean: MAS, Split MNIST pairs {ALPHA_PAIRS}, Hsu protocol"
    return alpha_table(args, lambda s: tasks, hsu_protocol(args), title, "(1, 2)")


def table_alpha_permuted(args, data) -> dict:
    p = fig6_protocol(args)
    title = (f"Alpha-scaling vs sum vs mean: MAS, 5 permuted-MNIST tasks (fig6 protocol: MLP 784-512-512-10, Adam 1e-3, "
             f"{p.epochs} epoch, {p.train_per_task} train samples/task)")  # fmt: skip
    return alpha_table(args, five_permuted(data), p, title, "1 (identity)")


TABLES = {
    "hsu": table_hsu,
    "fig6": table_fig6,
    "adapt": table_adapt,
    "table3": table3,
    "spp_split": table_spp_split,
    "spp_permuted": table_spp_permuted,
    "alpha": table_alpha,
    "alpha_permuted": table_alpha_permuted,
}


def parse_grids(text: str) -> dict[str, tuple[float, ...]]:
    grids = dict(GRIDS)
    for item in filter(None, text.split(",")):
        key, values = item.split("=")
        grids[key.strip()] = tuple(float(v) for v in values.split("/"))
    return grids


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default=",".join(TABLES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--quick", action="store_true", help="1 seed, subsampled data: a smoke run of every table"
    )
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="bench/results/vision")
    ap.add_argument("--lambdas", default="", help="grids, e.g. mas=0.1/0.4/1,ewc=1000 (keys: see GRIDS)")
    ap.add_argument("--importance-samples", type=int, default=2000)
    ap.add_argument("--train-per-task", type=int, default=None)
    ap.add_argument("--permuted-train-per-task", type=int, default=20000)
    ap.add_argument("--spp-layout", default="shared", choices=["shared", "multi"])
    ap.add_argument("--spp-optimizer", default="sgd", choices=["sgd", "sgdm", "adam"])
    ap.add_argument("--spp-lr", type=float, default=0.1)
    ap.add_argument("--spp-lr-decay", type=float, default=0.96)
    ap.add_argument("--spp-epochs", type=int, default=2)
    ap.add_argument("--spp-init-std", type=float, default=None)
    ap.add_argument("--spp-dropout", type=float, default=0.0)
    ap.add_argument("--fig6-epochs", type=int, default=1)
    ap.add_argument("--adapt-digit", type=int, default=0)
    ap.add_argument("--methods", default="", help="Run only these methods (comma list), e.g. mas,ewc")
    ap.add_argument(
        "--joint-from", default=None, help="SPP tables: joint runs (FWT's m_i) from an earlier JSON"
    )
    args = ap.parse_args(argv)
    args.grids = parse_grids(args.lambdas)
    args.methods = [m for m in args.methods.split(",") if m]
    if args.quick:
        args.seeds, args.train_per_task, args.permuted_train_per_task = 1, 2000, 2000
        args.importance_samples = 500
    args.seeds = list(range(args.seeds))
    data_dir = Path(args.data)
    data = {"mnist": load_idx_dataset(data_dir / "mnist", data_dir / "SHA256SUMS")}
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.tables.split(","):
        t0 = time.time()
        result = TABLES[name](args, data)
        print(f"[{name}: {time.time() - t0:.0f} s for {len(args.seeds)} seed(s)]", flush=True)
        path = out / f"vision_{name}.json"  # each table as soon as it is done
        path.write_text(json.dumps(result, indent=1, default=lambda o: None))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
