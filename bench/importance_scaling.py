"""How the cost of the Omega pass grows with the work: sequence length x batch size.

Usage:
    OMP_NUM_THREADS=1 python bench/importance_scaling.py [--seqs 128,256,512,1024] [--batches 1,4,16,32]
        [--rounds 1] [--out bench/results/importance_scaling]

On a GPT-2-shaped model (~5M parameters, 1024 positions), for every (T, B): seconds and peak extra
memory of one pass over one batch, for a plain forward+backward of sum ||logits||^2, masllm per_batch
and masllm exact. Prints a Markdown table, writes `scaling.json` and a log-log PNG (seconds vs tokens B x T).
Cost should grow linearly in tokens (slope ~1 on the log-log plot) until attention's T^2 shows.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
from common import paired_ratios, peak_allocated_bytes, timings
from transformers import GPT2Config, GPT2LMHeadModel

from masllm import MASConfig, compute_importance


def model_5m() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8192, n_positions=1024, n_embd=256, n_layer=4, n_head=4)
    return GPT2LMHeadModel(cfg).eval()


def measure(model, T: int, B: int, rounds: int) -> dict[str, dict[str, float]]:
    ids = torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": ids}]

    def plain():
        model(input_ids=ids).logits.float().pow(2).sum().backward()
        model.zero_grad(set_to_none=True)

    variants = {
        "forward+backward": plain,
        "per_batch": lambda: compute_importance(model, batches, MASConfig(abs_mode="per_batch"), show_progress=False),
        "exact": lambda: compute_importance(model, batches, MASConfig(check_per_sample=False), show_progress=False),
    }  # fmt: skip
    times = timings(variants, rounds, warmup=1)
    ratio = paired_ratios(times, "forward+backward")
    return {
        k: {"seconds": statistics.median(times[k]), "ratio": ratio[k], "peak_bytes": peak_allocated_bytes(f)}
        for k, f in variants.items()
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
    for variant, marker in (("forward+backward", "o"), ("per_batch", "s"), ("exact", "^")):
        for T in sorted({r["T"] for r in rows}):
            pts = sorted((r["T"] * r["B"], r[variant]["seconds"]) for r in rows if r["T"] == T)
            ax.loglog(*zip(*pts), marker=marker, lw=0.8, label=f"{variant}, T={T}")
    ax.set(xlabel="tokens per pass (B x T)", ylabel="seconds per pass", title="Omega pass vs tokens")
    ax.legend(fontsize=5, ncol=2)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def slope(rows: list[dict], variant: str) -> float:
    """Least-squares slope of log seconds on log tokens (1 = linear in tokens)."""
    xs = [math.log(r["T"] * r["B"]) for r in rows]
    ys = [math.log(r[variant]["seconds"]) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main(seqs: list[int], sizes: list[int], rounds: int, out: Path) -> None:
    torch.set_num_threads(1)
    model = model_5m()
    rows = []
    header = "| T | B | tokens | fwd+bwd s | per_batch s (x) | exact s (x) | peak MiB fwd+bwd / per_batch / exact |"
    print(header + "\n|---|---|---|---|---|---|---|", flush=True)
    for T in seqs:
        for B in sizes:
            r = {"T": T, "B": B, **measure(model, T, B, rounds)}
            rows.append(r)
            f, p, e = (r[k] for k in ("forward+backward", "per_batch", "exact"))
            mib = " / ".join(f"{v['peak_bytes'] / 2**20:.0f}" for v in (f, p, e))
            print(f"| {T} | {B} | {T * B} | {f['seconds']:.3f} | {p['seconds']:.3f} ({p['ratio']:.2f}) "
                  f"| {e['seconds']:.3f} ({e['ratio']:.2f}) | {mib} |", flush=True)  # fmt: skip
    print(
        "log-log slope (seconds vs tokens): "
        + ", ".join(f"{v} {slope(rows, v):.2f}" for v in ("forward+backward", "per_batch", "exact"))
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, out / "scaling.png")
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", default="128,256,512,1024")
    p.add_argument("--batches", default="1,4,16,32")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default="bench/results/importance_scaling")
    a = p.parse_args()
    main([int(s) for s in a.seqs.split(",")], [int(b) for b in a.batches.split(",")], a.rounds, Path(a.out))
