"""Importance of the other gradient-based methods (EWC, SPP, MAS vector output) under ZeRO vs one process.

Usage:
    python tests/distributed/methods_importance.py --out /tmp/single
    accelerate launch --config_file accelerate_configs/cpu_zero3.yaml \\
        tests/distributed/methods_importance.py --out /tmp/z3

A tiny GPT-2 gets a DeepSpeed engine from one MASTrainer step at learning rate 0 (weights unchanged),
then `compute_importance` runs on the engine for each method and rank 0 writes the consolidated
Omega to `--out/<method>/`. Label sampling (sampled Fisher, SPP) is replaced by argmax so that the
numbers do not depend on each rank's random stream. Launched by tests/test_methods_distributed.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the shared tiny models
from conftest import tiny_gpt2  # noqa: E402
from distributed.two_tasks import ListDataset, save_omega, task_data  # noqa: E402

from masllm import EWCConfig, MASConfig, MASTrainer, compute_importance  # noqa: E402
from masllm.distributed import exit_process  # noqa: E402

METHODS = {
    "ewc": MASConfig(method="ewc", importance_batch_size=3),
    "l2": MASConfig(method="l2", importance_batch_size=3),
    "ewc_sampled": EWCConfig(ewc_sampled=True, importance_batch_size=3),
    "spp": MASConfig(method="spp", importance_batch_size=3),
    "mas_hidden": MASConfig(
        method="mas", output="hidden_states", importance_batch_size=3
    ),  # lm_head: no grad
    "mas_vector": MASConfig(
        method="mas_vector", output="hidden_states", importance_batch_size=2, max_importance_samples=4
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    torch.multinomial = lambda p, n: p.argmax(-1, keepdim=True)  # deterministic "sampling"
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    model, data = tiny_gpt2(vocab=50, tie=False), task_data(0, 1)  # untied: hidden states reach no head
    args = TrainingArguments(
        output_dir=str(out / "train"),
        per_device_train_batch_size=8 // ws,
        max_steps=1,
        learning_rate=0.0,
        optim="sgd",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = MASTrainer(model, args, train_dataset=data)
    trainer.train()
    engine_or_model = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    for name, cfg in METHODS.items():
        labelled = ListDataset(data)  # EWC's empirical Fisher uses the labels; the others ignore them
        omega = compute_importance(engine_or_model, labelled, cfg, task_name=name, show_progress=False)
        save_omega(omega, out / name, model)


if __name__ == "__main__":
    main()
    exit_process()
