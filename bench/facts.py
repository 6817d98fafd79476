"""Fact learning (MAS paper Sec. 5.2): Table 4's layout and the Fig. 7 analog, beside the paper's numbers.

Usage:
    OMP_NUM_THREADS=1 python bench/facts.py [--seeds 3] [--epochs 5] [--data ../shared/data]
        [--methods finetune,mas,si,l2] [--out bench/results/facts] [--quick]

The data is `masllm.tasks.facts`: <digit, relation, item> scenes from real MNIST / Fashion-MNIST
images (400 facts, 30 train + 10 test images each), the units embedded by all-MiniLM-L6-v2; 4 tasks
of disjoint fact groups (`fact_groups('units', seed)`: each seed is another random split, as the
paper's 3 splits). Model: MLP 784-400-400 + S/P/O heads (3 x 384), Adam 1e-3 (fresh per task),
batch 50, the squared-distance loss. Each method with a strength runs its grid on the first seed,
the value with the best validation ACC (mean validation MAP of the final model,
`masllm.continual.select_lambda`; 10% of each task's training images) is chosen, then the other
seeds run at it. The test sets never enter the choice.

Table 4 analog: test MAP per task at the end of the sequence and overall ('all': every fact ranked
over every test image), mean +- std over seeds. Fig. 7 analog: T1's facts whose subject is one of
two of T1's digits form the subset; MAS with Omega of T1 from the subset's images only (later tasks:
their own images), at MAS's chosen lambda, vs MAS (Omega from all of T1), SI and finetune: the
subset's MAP and the rest of T1's MAP after each task.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from facts_runs import FactProtocol, setup, tuned  # noqa: E402

from masllm.omega.io import atomic_write_text  # noqa: E402

PAPER_TABLE4 = {  # MAS paper Table 4: T1..T4, all, for random splits 1, 2, 3
    "finetune": [(0.19, 0.19, 0.28, 0.71, 0.18), (0.20, 0.27, 0.18, 0.66, 0.18), (0.21, 0.25, 0.24, 0.46, 0.14)],
    "si": [(0.36, 0.32, 0.38, 0.68, 0.25), (0.37, 0.39, 0.38, 0.46, 0.24), (0.30, 0.31, 0.36, 0.61, 0.24)],
    "mas": [(0.42, 0.37, 0.41, 0.65, 0.29), (0.42, 0.42, 0.46, 0.65, 0.28), (0.30, 0.36, 0.38, 0.66, 0.27)],
}  # fmt: skip
PAPER_FIG7 = "sports subset MAP at the end: MAS (Omega from the subset) 0.50, finetune and SI about 0.20"
GRIDS = {
    "mas": (1.0, 10.0, 100.0),
    "si": (1.0, 10.0, 100.0),
    "l2": (0.01, 0.1, 1.0),
    "lmas": (1.0, 10.0, 100.0),
}


def ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table4(results: dict) -> str:
    lines = ["Table 4 analog: test MAP at the end of the 4-task sequence (mean ± std over seeds/splits)",
             f"{'method':<22}" + "".join(f"{c:>16}" for c in ("T1", "T2", "T3", "T4", "all")),
             ]  # fmt: skip
    for name, res in results.items():
        runs = res["runs"]
        cols = [[r["R"][-1][j] for r in runs] for j in range(4)] + [[r["all"][-1] for r in runs]]
        lam = "" if name == "finetune" else f" l={res['lambda']:g}"
        lines.append(f"{name + lam:<22}" + "".join(f"{ms(c):>16}" for c in cols))
        if name in PAPER_TABLE4:
            paper = [statistics.mean(s[j] for s in PAPER_TABLE4[name]) for j in range(5)]
            lines.append(f"{'  paper (3 splits)':<22}" + "".join(f"{v:>16.2f}" for v in paper))
    return "\n".join(lines)


def fig7(results: dict, subset_digits: list[str]) -> str:
    lines = [f"Fig. 7 analog: MAP of T1's subset (subject in {subset_digits}) and of the rest of T1 after each task",
             f"{'method':<28}{'part':<8}" + "".join(f"{'after T' + str(i + 1):>16}" for i in range(4))]  # fmt: skip
    for name, res in results.items():
        for part in ("subset", "rest"):
            cols = [[r[part][i] for r in res["runs"]] for i in range(4)]
            lines.append(f"{name:<28}{part:<8}" + "".join(f"{ms(c):>16}" for c in cols))
    lines.append(f"paper: {PAPER_FIG7}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--methods", default="finetune,mas,si,l2")
    ap.add_argument("--cache", type=Path, default=Path("~/.cache/masllm/facts").expanduser())
    ap.add_argument("--out", type=Path, default=Path("bench/results/facts"))
    ap.add_argument(
        "--quick", action="store_true", help="1 seed, 1 epoch, one lambda per method (a smoke run)"
    )
    args = ap.parse_args()
    t0 = time.time()
    p = FactProtocol(epochs=1 if args.quick else args.epochs, batch_size=50)
    seeds = list(range(1 if args.quick else args.seeds))
    envs = {s: setup(args.data, s, p, args.cache) for s in seeds}
    env0 = envs[seeds[0]]
    print(f"unit embeddings: {env0['embedding_source']}; {len(env0['tasks'])} tasks of "
          f"{[len(t.facts) for t in env0['tasks']]} facts, {len(env0['tasks'][0].x_train)} train / "
          f"{len(env0['tasks'][0].x_val)} val / {len(env0['tasks'][0].x_test)} test images per task", flush=True)  # fmt: skip
    results = {}
    for m in args.methods.split(","):
        grid = GRIDS.get(m, (0.0,))
        results[m] = tuned(envs, p, m, (grid[1:2] or grid) if args.quick else grid, seeds)
    fig = {k: results[k] for k in ("finetune", "si", "mas") if k in results}
    if "mas" in results:
        fig["mas (Omega: T1 subset)"] = tuned(envs, p, "mas", (0.0,), seeds, omega_subset=True,
                                              fixed=results["mas"]["lambda"])  # fmt: skip
    wall = time.time() - t0
    text = "\n\n".join([table4(results), fig7(fig, env0["subset_digits"]), f"wall time: {wall / 60:.1f} min"])
    print("\n" + text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "facts_quick.json" if args.quick else "facts.json"
    payload = {"protocol": vars(p), "seeds": seeds, "wall_seconds": wall, "results": results,
               "fig7": {"subset_digits": env0["subset_digits"], "mas_subset": fig.get("mas (Omega: T1 subset)")},
               "embedding_source": env0["embedding_source"]}  # fmt: skip
    atomic_write_text(args.out / name, json.dumps(payload, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
