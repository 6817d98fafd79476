"""Shared by the benchmarks: a GPT-2-shaped model of ~25M parameters and interleaved timing.

These machines are noisy, so variants are never timed one after the other: each round times every
variant once, in turn; a variant's ratio to the baseline is the median over rounds of its time over
the baseline's time *in the same round* (neighbours in time share the machine's load).
Peak memory is the allocator's own high-water mark: `torch.cuda.max_memory_allocated` on a GPU,
the same quantity on CPU from the profiler's allocation records (resident-set figures follow
glibc's heap and mmap policy more than the tensors a variant holds).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


def gpt2_25m(vocab: int = 8192, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=512, n_layer=6, n_head=8)
    return GPT2LMHeadModel(cfg)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def timings(variants: dict[str, Callable[[], None]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call of each variant, timed round-robin after `warmup` untimed rounds."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each variant, timed round-robin."""
    return {k: statistics.median(v) for k, v in timings(variants, rounds, warmup).items()}


def paired_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Median over rounds of each variant's time over the baseline's in the same round."""
    base = times[baseline]
    return {k: statistics.median(t / b for t, b in zip(v, base)) for k, v in times.items()}


def print_table(
    title: str, times: dict[str, list[float]], baseline: str, targets: dict[str, str] | None = None
) -> None:
    """Median seconds and the paired ratio to `baseline` of each variant."""
    targets = targets or {}
    ratios = paired_ratios(times, baseline)
    print(f"\n{title}")
    print(f"{'variant':<34} {'median s':>10} {'x ' + baseline:>14}   target")
    for name, t in times.items():
        print(f"{name:<34} {statistics.median(t):>10.4f} {ratios[name]:>14.3f}   {targets.get(name, '')}")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: the profiler's C++ side prints two lines per session."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_allocated_bytes(fn: Callable[[], None], device: str = "cpu") -> int:
    """Peak bytes of tensors `fn` allocates on top of those live when it starts (the allocator's
    high-water mark; CPU: from the profiler's allocation records, which carry the running total)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()  # (it ran, warnings and all, when it was timed)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    records = sorted(
        (e["ts"], e["args"])
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    )
    if not records:
        return 0
    first = records[0][1]
    start = first["Total Allocated"] - first["Bytes"]  # live before fn's first allocation (or free)
    return max(0, max(a["Total Allocated"] for _, a in records) - start)
