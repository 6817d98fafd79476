"""The report of a sequence run: R matrices and summaries per method, as JSON, Markdown and plots.

`build_report` turns per-method rows of metrics into `report.json`'s structure; `format_report`
prints it (the recipe's closing table, which says plainly how much less each method forgot than
fine-tuning); `write_report` writes `report.json`, `report.md` and the PNG plots:

- `forgetting_<metric>.png`: heatmap, per method, of how much worse task j is after training on
  task i than right after learning it (i >= j);
- `curves_<metric>.png`: each task's metric across the sequence, one panel per task, a line per method;
- `omega_hist_<method>.png`: histogram of log10 Omega per layer type (MAS paper, Fig. D1).

matplotlib is imported only when plotting (it is an optional dependency: `masllm[plots]`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..omega.io import atomic_write_text
from .metrics import diagonal, summarize

BASELINE = "finetune"
LAYER_TYPES = (  # first match wins: (type, pattern over the parameter name)
    ("norm", r"(^|\.)(ln_\w+|\w*norm\w*)(\.|$)"),
    ("embedding", r"(wte|wpe|embed\w*)(\.|$)"),
    ("attention", r"(attn|attention|q_proj|k_proj|v_proj|o_proj)"),
    ("mlp", r"(mlp|ffn|fc\d*|feed_forward|intermediate)"),
    ("head", r"(lm_head|classifier|head)"),
)


@dataclass
class RunResult:
    """One method on the sequence: rows[i][task] = metrics after training task i."""

    name: str
    method: str
    reg_lambda: float | None
    rows: list[dict[str, dict[str, float]]]


def matrix(rows: list[dict[str, dict[str, float]]], tasks: list[str], metric: str) -> list[list[float]]:
    """R[i][j] of one metric from the recipe's rows."""
    return [[row[t][metric] for t in tasks] for row in rows]


def build_report(
    runs: list[RunResult],
    tasks: list[str],
    metrics: Mapping[str, bool],
    primary: str,
    validation: str | None = None,
) -> dict[str, Any]:
    """R and ACC / BWT / FWT / forgetting per run and metric; FWT against fine-tuning's diagonal.
    `validation`: the metric lambda is chosen on, recorded for `masllm.continual.selection`."""
    baseline = next((r for r in runs if r.method == BASELINE), None)
    report: dict[str, Any] = {"tasks": tasks, "primary_metric": primary, "metrics": dict(metrics)}
    if validation is not None:
        report["validation_metric"] = validation
    report["fwt_reference"] = f"diagonal of {baseline.name!r}" if baseline else None
    report["runs"] = {}
    for run in runs:
        entry: dict[str, Any] = {"method": run.method, "reg_lambda": run.reg_lambda, "R": {}, "summary": {}}
        for metric, higher in metrics.items():
            if not _has(run, metric):
                continue
            R = matrix(run.rows, tasks, metric)
            reference = diagonal(matrix(baseline.rows, tasks, metric)) if _has(baseline, metric) else None
            entry["R"][metric] = R
            entry["summary"][metric] = summarize(R, higher, reference).to_dict()
        report["runs"][run.name] = entry
    if baseline is not None:
        report["comparison"] = {
            r.name: compare(report, r.name, baseline.name) for r in runs if r is not baseline
        }
    return report


def _has(run: RunResult | None, metric: str) -> bool:
    return run is not None and all(metric in cell for row in run.rows for cell in row.values())


def compare(
    report: dict[str, Any], name: str, baseline: str, metric: str | None = None
) -> dict[str, float | None]:
    """How much less `name` forgot than `baseline`, and what it cost on the new tasks (by `metric`,
    the primary one by default)."""
    metric = metric or report["primary_metric"]
    run, base = report["runs"][name], report["runs"][baseline]
    f_run, f_base = run["summary"][metric]["forgetting"], base["summary"][metric]["forgetting"]
    new_run, new_base = diagonal(run["R"][metric])[1:], diagonal(base["R"][metric])[1:]
    change = [(a - b) / abs(b) for a, b in zip(new_run, new_base) if b] if new_base else []
    return {
        "forgetting": f_run,
        "baseline_forgetting": f_base,
        "forgetting_reduction": 1 - f_run / f_base if f_base > 0 else None,
        "new_task_relative_change": sum(change) / len(change) if change else None,
    }


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.3e}"


def format_report(report: dict[str, Any], metric: str | None = None) -> str:
    """Markdown tables: R per run, the summaries, and one plain sentence per compared method."""
    metric = metric or report["primary_metric"]
    tasks, higher = report["tasks"], report["metrics"][metric]
    lines = [f"### {metric}: R[i][j] (row: after training on task i; column: evaluated on task j)", ""]
    for name, run in report["runs"].items():
        lines += [f"**{name}** (lambda={_fmt(run['reg_lambda'])})", ""]
        lines += ["| after \\ on | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        for i, row in enumerate(run["R"][metric]):
            lines.append(f"| {i}-{tasks[i]} | " + " | ".join(_fmt(v) for v in row) + " |")
        lines.append("")
    direction = "higher" if higher else "lower"
    lines += [
        f"### Summary ({metric}, {direction} is better; forgetting = how much worse the earlier tasks "
        "end than right after learning them, mean over tasks 1..T-1)",
        "",
        "| method | lambda | ACC (Eq. 6) | BWT (Eq. 8) | FWT (Eq. 7) | forgetting |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in report["runs"].items():
        s = run["summary"][metric]
        lines.append(
            f"| {name} | {_fmt(run['reg_lambda'])} | {_fmt(s['acc'])} | {_fmt(s['bwt'])} | {_fmt(s['fwt'])} | {_fmt(s['forgetting'])} |"
        )
    lines.append("")
    for name in report.get("comparison", {}):  # each section's sentences in its own metric
        lines.append(_sentence(name, compare(report, name, _baseline(report), metric), metric))
    return "\n".join(lines).rstrip() + "\n"


def _baseline(report: dict[str, Any]) -> str:
    return next(name for name, run in report["runs"].items() if run["method"] == BASELINE)


def _sentence(name: str, c: dict[str, float | None], metric: str) -> str:
    if c["forgetting_reduction"] is None:
        return f"- {name}: {BASELINE} did not forget (forgetting {_fmt(c['baseline_forgetting'])}): nothing to reduce."
    amount = c["forgetting_reduction"]
    verb = f"forgot {amount:.0%} less" if amount >= 0 else f"forgot {-amount:.0%} MORE"
    text = (
        f"- **{name} {verb} than {BASELINE}** (mean {metric} change on earlier tasks "
        f"{_fmt(c['forgetting'])} vs {_fmt(c['baseline_forgetting'])})"
    )
    if c["new_task_relative_change"] is not None:
        text += f"; on each new task its {metric} was {c['new_task_relative_change']:+.1%} relative to {BASELINE}'s"
    return text + "."


def layer_type(name: str) -> str:
    """The layer type of a parameter name, for the Omega histograms (Fig. D1)."""
    return next((kind for kind, pattern in LAYER_TYPES if re.search(pattern, name)), "other")


def write_report(
    report: dict[str, Any],
    directory: str | Path,
    omegas: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write report.json, report.md and (with `plots`) the PNGs; return the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "report.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    md = "\n".join(format_report(report, m) for m in report["metrics"] if _has_metric(report, m))
    atomic_write_text(directory / "report.md", md)
    written = [directory / "report.json", directory / "report.md"]
    if plots:
        written += plot_report(report, directory, omegas or {})
    return written


def _has_metric(report: dict[str, Any], metric: str) -> bool:
    return all(metric in run["R"] for run in report["runs"].values())


def plot_report(
    report: dict[str, Any], directory: Path, omegas: Mapping[str, Mapping[str, torch.Tensor]]
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for metric in report["metrics"]:
        if _has_metric(report, metric):
            written.append(_plot_forgetting(report, metric, directory / f"forgetting_{metric}.png"))
            written.append(_plot_curves(report, metric, directory / f"curves_{metric}.png"))
    for name, omega in omegas.items():
        if len(omega):
            written.append(_plot_omega(omega, name, directory / f"omega_hist_{name}.png"))
    return written


def forgetting_map(R: list[list[float]], higher_is_better: bool) -> list[list[float]]:
    """F[i][j] = how much worse task j is after task i than after learning it (i >= j), else NaN."""
    sign = 1.0 if higher_is_better else -1.0
    T = len(R)
    return [[sign * (R[j][j] - R[i][j]) if i >= j else math.nan for j in range(T)] for i in range(T)]


def _plot_forgetting(report: dict[str, Any], metric: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tasks, runs = report["tasks"], report["runs"]
    maps = {n: forgetting_map(r["R"][metric], report["metrics"][metric]) for n, r in runs.items()}
    finite = [v for m in maps.values() for row in m for v in row if not math.isnan(v)]
    vmax = max([abs(v) for v in finite] + [1e-12])
    fig, axes = plt.subplots(
        1, len(maps), figsize=(3.4 * len(maps) + 1, 3.2), squeeze=False, layout="constrained"
    )
    for ax, (name, F) in zip(axes[0], maps.items()):
        im = ax.imshow(F, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set(title=name, xlabel="evaluated on")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(tasks)), tasks)
        for i, row in enumerate(F):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v + 0.0:.3g}", ha="center", va="center", fontsize=7)  # no "-0"
    axes[0][0].set_ylabel("after training on")
    fig.colorbar(im, ax=axes[0].tolist(), label=f"forgetting ({metric})")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_curves(report: dict[str, Any], metric: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tasks = report["tasks"]
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(3.2 * len(tasks), 3), squeeze=False, layout="constrained"
    )
    for j, ax in enumerate(axes[0]):
        values = []
        for name, run in report["runs"].items():
            values += [row[j] for row in run["R"][metric]]
            ax.plot(range(len(tasks)), [row[j] for row in run["R"][metric]], marker="o", label=name)
        if min(values) > 0 and max(values) / min(values) > 20:  # e.g. perplexity before and after
            ax.set_yscale("log")
        ax.axvline(j, color="grey", lw=0.8, ls=":")
        ax.set(title=f"on {tasks[j]}", xlabel="after training on")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_omega(omega: Mapping[str, torch.Tensor], name: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    groups: dict[str, list[torch.Tensor]] = {}
    for param, values in omega.items():
        groups.setdefault(layer_type(param), []).append(values.detach().float().flatten().cpu())
    fig, axes = plt.subplots(1, len(groups), figsize=(3.4 * len(groups), 2.8), squeeze=False)
    for ax, (kind, tensors) in zip(axes[0], sorted(groups.items())):
        values = torch.cat(tensors)
        positive = values[values > 0]
        ax.hist(torch.log10(positive).numpy(), bins=50, color="tab:blue")
        zero = 1 - positive.numel() / max(values.numel(), 1)
        ax.set_title(f"{kind}: {values.numel()} params, {zero:.0%} zero", fontsize=9)
        ax.set_xlabel("log10 Omega")
    axes[0][0].set_ylabel("count")
    fig.suptitle(f"Omega per layer type ({name})", y=1.04)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
