"""Shared by the benchmarks: a GPT-2-shaped model of ~25M parameters and interleaved timing.

These machines are noisy, so variants are never timed one after the other: each round times every
variant once, in turn, and the median over rounds is reported, as a ratio to the baseline measured
in the same rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def gpt2_25m(vocab: int = 8192, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=512, n_layer=6, n_head=8)
    return GPT2LMHeadModel(cfg)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each variant, timed round-robin."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def print_table(
    title: str, medians: dict[str, float], baseline: str, targets: dict[str, str] | None = None
) -> None:
    targets = targets or {}
    print(f"\n{title}")
    print(f"{'variant':<34} {'median s':>10} {'x ' + baseline:>14}   target")
    for name, t in medians.items():
        print(f"{name:<34} {t:>10.4f} {t / medians[baseline]:>14.3f}   {targets.get(name, '')}")
