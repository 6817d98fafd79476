"""Shared by the benchmarks: a GPT-2-shaped model of ~25M parameters and interleaved timing.

These machines are noisy, so variants are never timed one after the other: each round times every
variant once, in turn, and the median over rounds is reported, as a ratio to the baseline measured
in the same rounds.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

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


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def peak_extra_bytes(fn: Callable[[], None], repeats: int = 3) -> int:
    """Peak resident memory `fn` adds on top of what is resident when it starts (CPU, Linux), the
    smallest over `repeats` calls after a warm-up: the kernel's high-water mark (VmHWM) is reset
    before each call (`/proc/self/clear_refs` = 5); glibc is told to mmap every allocation of 64 KiB
    and more and to return its free pages (`malloc_trim`), so resident memory follows what is live."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 16)  # tensors of 64 KiB+ mmap'ed: freed memory leaves RSS at once
    fn()
    best = None
    for _ in range(repeats):
        gc.collect()
        libc.malloc_trim(0)  # hand freed heap pages back, so that reuse shows as new resident memory
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmRSS")
        fn()
        extra = (_status_kb("VmHWM") - base) * 1024
        best = extra if best is None else min(best, extra)
    return max(best, 0)
