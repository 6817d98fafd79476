"""Choosing lambda on validation data: one rule, shared by the benchmarks and the recipe.

Every candidate strength (lambda, or the strength a method names: `Method.strength`) is run on the
sequence with a validation set carved from each task's training data (a task's or domain's
`validation` fraction: the vision and facts kinds' `val_accuracy` / `val_map`, the causal_lm kind's
`val_nll`); R_val[i][j] is then the validation metric of task j after training task i. The rule:

    choose the candidate with the best validation ACC (Eq. 6: the mean over tasks of the final
    model's validation metric), averaged over the runs (seeds) given for it; a tie goes to the
    smaller strength (the weaker constraint).

ACC weighs forgetting (the earlier tasks' final values) and plasticity (the later tasks' values)
in the metric's own units, so the rule needs no budget of its own; the test sets never enter it.
For a metric where lower is better the best ACC is the lowest. Text domains are ranked by their
mean next-token NLL (log perplexity), not by mean perplexity: domains' perplexities differ by orders
of magnitude (a small GPT-2: 23 on license texts, 400+ on source code after forgetting), so an
arithmetic mean of perplexities lets the worst-modelled domain alone decide; the NLL weighs every
domain's relative change alike.

From the recipe: give every task a `validation` fraction, run the grid with
`--compare mas=0.1,mas=1,mas=10`, then `python -m masllm.continual.selection <output_dir>/report.json`
prints each method's grid and its chosen strength (`select_from_report`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .metrics import Matrix, acc

VALIDATION_METRIC = "val_accuracy"  # the vision kind's validation metric in report.json


def validation_metric(report: Mapping[str, Any]) -> str:
    """The metric the report's task kind chose lambda on (`validation_metric`: the causal_lm kind's
    val_nll), else the validation counterpart of its primary metric (val_accuracy, val_map)."""
    metrics = report.get("metrics", {})
    if report.get("validation_metric") in metrics:
        return report["validation_metric"]
    primary = f"val_{report.get('primary_metric', '')}"
    if primary in metrics:
        return primary
    found = sorted(m for m in metrics if m.startswith("val_"))
    return found[0] if len(found) == 1 else VALIDATION_METRIC


@dataclass(frozen=True)
class Selection:
    """The chosen strength and the validation ACC of every candidate (mean over its runs)."""

    chosen: float
    scores: dict[float, float]
    higher_is_better: bool = True

    def table(self) -> str:
        """One line: every candidate's validation ACC, the chosen one marked."""
        cells = [f"{k:g}: {v:.2f}{' (chosen)' if k == self.chosen else ''}" for k, v in self.scores.items()]
        return "validation ACC by lambda: " + ", ".join(cells)


def select_lambda(validation: Mapping[float, Sequence[Matrix]], higher_is_better: bool = True) -> Selection:
    """The rule above: `validation[lam]` holds the validation R of each run (seed) at strength lam."""
    if not validation:
        raise ValueError("select_lambda needs at least one candidate strength")
    empty = [lam for lam, runs in validation.items() if not runs]
    if empty:
        raise ValueError(f"No validation runs for lambda {empty}")
    scores = {float(lam): sum(acc(R) for R in runs) / len(runs) for lam, runs in sorted(validation.items())}
    sign = 1.0 if higher_is_better else -1.0
    chosen = max(scores, key=lambda lam: (sign * scores[lam], -lam))  # best ACC, then the smaller lambda
    return Selection(chosen, scores, higher_is_better)


def select_from_report(report: Mapping[str, Any], metric: str | None = None) -> dict[str, Selection]:
    """Per method of a recipe report (report.json), the rule over its runs with a strength, on
    `metric` (default: `validation_metric(report)`)."""
    metric = metric or validation_metric(report)
    if metric not in report.get("metrics", {}):
        raise ValueError(
            f"The report has no metric {metric!r} (metrics: {sorted(report.get('metrics', {}))}); "
            "give every task a `validation` fraction"
        )
    grids: dict[str, dict[float, list[Matrix]]] = {}
    for run in report["runs"].values():
        if run.get("reg_lambda") is None or metric not in run["R"]:
            continue
        grids.setdefault(run["method"], {}).setdefault(float(run["reg_lambda"]), []).append(run["R"][metric])
    return {m: select_lambda(grid, report["metrics"][metric]) for m, grid in grids.items()}


def main(argv: list[str] | None = None) -> dict[str, Selection]:
    ap = argparse.ArgumentParser(description="Choose each method's lambda on validation data (report.json).")
    ap.add_argument(
        "report", type=Path, help="report.json of a recipe run with a grid of --compare strengths"
    )
    ap.add_argument(
        "--metric",
        default=None,
        help="default: the report's validation_metric, else val_<its primary metric>",
    )
    args = ap.parse_args(argv)
    chosen = select_from_report(json.loads(args.report.read_text()), args.metric)
    for method, sel in chosen.items():
        print(f"{method}: lambda {sel.chosen:g} ({sel.table()})")
    return chosen


if __name__ == "__main__":
    main()
