"""Exact importance with packing on and off, and in bf16: time per sequence and Omega agreement.

Usage:
    OMP_NUM_THREADS=1 python bench/packed_importance.py [--sequences 64] [--per-batch 8] [--rounds 3]

A GPT-2-shaped model (~25M parameters) and sequences of mixed lengths (16 to 256 tokens, as chat
data has them). The same sequences, 8 per micro-batch, go through `compute_importance` two ways:
padded to the batch's longest (one sequence per row, `attention_mask`) and packed padding-free (one
row, `position_ids` restarting, as transformers' `DataCollatorWithFlattening` and TRL's
`padding_free` collator build it). Printed: the median seconds per sequence of each, timed
interleaved, their ratio, the share of the padded tokens that are padding, and the agreement of the
two Omegas (max relative difference); then the agreement of Omega under bf16 autocast (what a
Trainer with `bf16=True` runs) and of a bf16 model with the fp32 model's (relative L1 per tensor,
the worst tensor), and whether any run left the batched exact path.
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from common import gpt2_25m, interleaved, num_params
from transformers import DataCollatorWithFlattening

from masllm import MASConfig, compute_importance


def sequences(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 257, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (t,), generator=g).tolist() for t in lengths]


def padded(seqs: list[list[int]]) -> dict[str, torch.Tensor]:
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    return {"input_ids": ids, "attention_mask": mask}


def max_rel(a, b) -> float:
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max()) for n in b)


def worst_l1(a, b) -> tuple[str, float]:
    errs = {n: float((a[n] - b[n]).abs().sum() / b[n].abs().sum()) for n in b}
    return max(errs.items(), key=lambda kv: kv[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--per-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    cli = parser.parse_args()
    model = gpt2_25m()
    seqs = sequences(cli.sequences, model.config.vocab_size)
    groups = [seqs[i : i + cli.per_batch] for i in range(0, len(seqs), cli.per_batch)]
    flatten = DataCollatorWithFlattening()
    padded_batches = [padded(g) for g in groups]
    packed_batches = [flatten([{"input_ids": s} for s in g]) for g in groups]
    cfg = MASConfig(check_per_sample=False)
    results = {}

    def run(name, batches):
        def fn():
            results[name] = compute_importance(model, batches, cfg, show_progress=False)

        return fn

    med = interleaved(
        {"padded": run("padded", padded_batches), "packed": run("packed", packed_batches)}, cli.rounds
    )
    tokens = sum(map(len, seqs))
    pad_share = 1 - tokens / sum(b["input_ids"].numel() for b in padded_batches)
    print(f"GPT-2-shaped model, {num_params(model) / 1e6:.1f}M parameters; {len(seqs)} sequences of 16-256")
    print(
        f"tokens ({tokens} tokens), {cli.per_batch} per micro-batch; padding = {pad_share:.0%} of the padded tokens"
    )
    for name in ("padded", "packed"):
        per_seq = med[name] / len(seqs)
        print(f"  {name:<7} {per_seq * 1e3:8.2f} ms per sequence   {med[name] / med['padded']:.3f}x padded")
    for om in results.values():
        assert om.tasks[0]["num_samples"] == len(seqs) and "importance/fallback" not in om.tasks[0], om.tasks
    print(
        f"Omega packed vs padded: max relative difference {max_rel(results['packed'], results['padded']):.2e}"
    )

    few = packed_batches[:2]  # bf16 agreement on 16 sequences (packed rows)
    ref = compute_importance(gpt2_25m(), few, cfg, show_progress=False)
    auto = compute_importance(
        Accelerator(mixed_precision="bf16", cpu=True).prepare_model(gpt2_25m()), few, cfg, show_progress=False
    )
    bf16 = compute_importance(gpt2_25m().to(torch.bfloat16), few, cfg, show_progress=False)
    for label, om in (("bf16 autocast", auto), ("bf16 weights", bf16)):
        name, err = worst_l1(om, ref)
        fell = "importance/fallback" in om.tasks[0]
        print(f"Omega {label} vs fp32: worst tensor relative L1 {err:.2%} ({name}); fallback: {fell}")


if __name__ == "__main__":
    main()
