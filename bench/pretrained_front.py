"""The front of bench/pretrained_llm.py: plasticity vs forgetting per run, lambda by the validation rule.

From the run records (`runs/<name>.json`) and the pretrained model's record:

- plasticity (x): mean over the new domains k of test perplexity on k right after learning k,
  relative to finetune's (1.0 = as plastic as finetune; higher = learnt less); also relative to the
  pretrained model's (below 1: the domain was learnt at all);
- general forgetting (y1): test perplexity on general text (never trained on) at the end of the
  sequence, relative to the pretrained model's, minus 1;
- domain forgetting (y2): mean over the earlier domains (all but the last) of test perplexity at
  the end relative to right after learning it, minus 1.

lambda is chosen per method with `masllm.continual.selection.select_lambda` on validation data only:
R_val has the general text as task 0 (what pretraining learnt) and the domains as tasks 1..K; the
rule reads its final row (ACC, Eq. 6, lower perplexity is better), which is the only row the bench
measures on validation sets (the earlier rows repeat it, so the matrix is square and ACC unchanged).
Test numbers never enter the rule.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from masllm.continual.selection import Selection, select_lambda

FINETUNE = "finetune"


def validation_matrix(record: Mapping[str, Any], tasks: list[str], log: bool = False) -> list[list[float]]:
    """Square R_val (tasks = general + domains) whose final row is the final model's validation ppl."""
    row = [record["validation"][t] for t in tasks]
    row = [math.log(v) for v in row] if log else row
    return [list(row) for _ in tasks]


def select(records: list[Mapping[str, Any]], tasks: list[str], log: bool = False) -> dict[str, Selection]:
    """Per method with a strength: the lambda the validation rule picks (nll instead of ppl with `log`)."""
    grids: dict[str, dict[float, list]] = {}
    for r in records:
        if r["strength"] is not None:
            grids.setdefault(r["method"], {}).setdefault(r["strength"], []).append(
                validation_matrix(r, tasks, log)
            )
    return {m: select_lambda(g, higher_is_better=False) for m, g in grids.items()}


def front(
    records: list[Mapping[str, Any]], pretrained: Mapping[str, float], domains: list[str]
) -> list[dict[str, Any]]:
    """One row per run: plasticity relative to finetune, general and domain forgetting, validation ACC."""
    ft = next((r for r in records if r["method"] == FINETUNE), None)
    last = f"after_{domains[-1]}"
    rows = []
    for r in records:
        test = r["test"]
        learnt = [test[f"after_{d}"][d] for d in domains]
        rel = [v / ft["test"][f"after_{d}"][d] for v, d in zip(learnt, domains)] if ft else None
        rows.append(
            {
                "name": r["name"],
                "method": r["method"],
                "strength": r["strength"],
                "plasticity": sum(rel) / len(rel) if rel else math.nan,
                "plasticity_per_domain": rel,
                "vs_pretrained": sum(v / pretrained[f"test:{d}"] for v, d in zip(learnt, domains))
                / len(domains),
                "general_forgetting": test[last]["general"] / pretrained["test:general"] - 1,
                "domain_forgetting": sum(test[last][d] / test[f"after_{d}"][d] - 1 for d in domains[:-1])
                / max(1, len(domains) - 1),
                "val_acc": sum(r["validation"].values()) / len(r["validation"]),
                "seconds": r["seconds"],
            }
        )
    return rows


def table(rows: list[dict[str, Any]], chosen: Mapping[str, Selection], domains: list[str]) -> str:
    """A markdown table of the front, the validation rule's choice marked with *."""
    head = (
        "| run | new-domain ppl vs finetune (mean) | per domain | vs pretrained | general-text forgetting "
        "| earlier-domain forgetting | val ACC (ppl) | s |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        mark = " *" if r["method"] in chosen and chosen[r["method"]].chosen == r["strength"] else ""
        per = " ".join(f"{v:.3f}" for v in r["plasticity_per_domain"] or [])
        lines.append(
            f"| {r['name']}{mark} | {r['plasticity']:.3f} | {per} | {r['vs_pretrained']:.3f} "
            f"| {r['general_forgetting']:+.1%} "
            f"| {r['domain_forgetting']:+.1%} | {r['val_acc']:.3f} | {r['seconds']:.0f} |"
        )
    return head + "\n".join(lines) + f"\n\n(per domain: {', '.join(domains)}; * = chosen on validation)\n"


def plot(rows: list[dict[str, Any]], chosen: Mapping[str, Selection], path: Any) -> None:
    """Two panels: general-text and earlier-domain forgetting against plasticity, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, key, label in (
        (axes[0], "general_forgetting", "general-text ppl at end / pretrained - 1"),
        (axes[1], "domain_forgetting", "earlier domains: ppl at end / after learning - 1"),
    ):
        for m in methods:
            pts = sorted((r["plasticity"], r[key], r["strength"]) for r in rows if r["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) > 1 else "s", label=m)
            for x, y, s in pts:
                if s is not None:
                    star = "*" if m in chosen and chosen[m].chosen == s else ""
                    ax.annotate(f"{s:g}{star}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("new-domain test ppl right after learning, relative to finetune (mean)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Forgetting vs plasticity (lower-left is better; * = lambda chosen on validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def omega_shares(directory: Path) -> dict[str, dict[str, float]]:
    """Where an Omega's mass lies: share of the total per module kind (q_proj, ..., lora_A / lora_B)
    and per third of the layers, read from a saved `mas_omega.safetensors`."""
    from safetensors.torch import load_file

    omega = load_file(str(directory / "mas_omega.safetensors"))
    total = sum(float(t.double().sum()) for t in omega.values())
    layers = [int(m.group(1)) for n in omega if (m := re.search(r"layers\.(\d+)\.", n))]
    depth = max(layers) + 1 if layers else 1
    shares: dict[str, dict[str, float]] = {"module": {}, "lora": {}, "depth": {}}
    for name, t in omega.items():
        share = float(t.double().sum()) / total
        module = next((p for p in name.split(".") if p.endswith("_proj")), "other")
        lora = "lora_A" if "lora_A" in name else "lora_B" if "lora_B" in name else "base"
        m = re.search(r"layers\.(\d+)\.", name)
        third = ["first third", "middle third", "last third"][3 * int(m.group(1)) // depth] if m else "other"
        for kind, key in (("module", module), ("lora", lora), ("depth", third)):
            shares[kind][key] = shares[kind].get(key, 0.0) + share
    return shares


if __name__ == "__main__":  # python bench/pretrained_front.py <out>/cache: each cached task-0 Omega
    for d in sorted(Path(sys.argv[1]).glob("omega0-*")):
        print(d.name)
        for kind, s in omega_shares(d).items():
            print(f"  {kind}: " + ", ".join(f"{k} {v:.1%}" for k, v in sorted(s.items())))
