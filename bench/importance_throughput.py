"""Cost of the Omega pass (Eq. 2), measured side by side in one run.

Usage:
    OMP_NUM_THREADS=1 python bench/importance_throughput.py [--rounds 3] [--batch 8] [--seq 128] [--batches 2]

On the same GPT-2-shaped model (~25M parameters, tied embeddings, CPU) and the same unlabeled
batches, seconds per pass over them for:
- forward+backward: a plain pass of sum ||logits||^2, no hooks (the floor);
- micro-batch mode: masllm, |.| per micro-batch (abs_mode="per_batch");
- exact mode: masllm, |.| per sample in one backward pass (abs_mode="per_sample", the default);
- naive loop: one sample per backward pass with |.| after each (what exact costs without batching).
Targets (issue 2): micro-batch <= 1.10x forward+backward; exact <= 2x micro-batch.
"""

from __future__ import annotations

import argparse

import torch
from common import gpt2_25m, interleaved, num_params, print_table

from masllm import MASConfig, compute_importance


def main(rounds: int, batch: int, seq: int, n_batches: int) -> None:
    torch.set_num_threads(1)
    model = gpt2_25m().eval()
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(0, model.config.vocab_size, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        }
        for _ in range(n_batches)
    ]

    def plain():
        for b in batches:
            (model(**b).logits.float() ** 2).sum().backward()
        model.zero_grad(set_to_none=True)

    def masllm(mode: str, size: int):
        cfg = MASConfig(abs_mode=mode, importance_batch_size=size, check_per_sample=False)
        data = (
            batches
            if size == batch
            else [{k: v[i : i + 1] for k, v in b.items()} for b in batches for i in range(batch)]
        )
        return lambda: compute_importance(model, data, cfg, show_progress=False)

    variants = {
        "forward+backward (no hooks)": plain,
        "micro-batch mode": masllm("per_batch", batch),
        "exact mode (batched per-sample)": masllm("per_sample", batch),
        "naive loop (batch size 1)": masllm("per_batch", 1),
    }
    print(
        f"GPT-2-shaped model, {num_params(model) / 1e6:.1f}M parameters (tied embeddings); "
        f"{n_batches} batches of {batch} x {seq} tokens; torch threads 1; {rounds} interleaved rounds"
    )
    medians = interleaved(variants, rounds)
    print_table(
        "seconds per importance pass",
        medians,
        "forward+backward (no hooks)",
        {"micro-batch mode": "<= 1.10x"},
    )
    print(
        f"exact / micro-batch = {medians['exact mode (batched per-sample)'] / medians['micro-batch mode']:.3f}"
        f"   (target <= 2)"
    )
    print(
        f"naive loop / exact  = {medians['naive loop (batch size 1)'] / medians['exact mode (batched per-sample)']:.3f}"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batches", type=int, default=2)
    a = p.parse_args()
    main(a.rounds, a.batch, a.seq, a.batches)
