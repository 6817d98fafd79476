"""Cost of the MAS penalty in a training step, measured side by side in one run.

Usage:
    OMP_NUM_THREADS=1 python bench/penalty_overhead.py [--rounds 15] [--batch 8] [--seq 128]

Three optimizer steps on the same GPT-2-shaped model (~25M parameters, CPU, AdamW), each a real
`Trainer.training_step` + clip + `optimizer.step`:
- plain: transformers.Trainer, no penalty;
- masllm: MASTrainer, the penalty gradient 2 lambda Omega (theta - theta*) added with foreach ops;
- loss-term: the penalty most libraries use, a Python loop of (Omega * (p - p_old)**2).sum() added
  to the loss, so autograd builds and back-propagates through it.
Target: masllm <= 1.03x plain.

Then the peak memory the penalty step itself adds (tensor bytes allocated at its high-water mark,
from the profiler's allocation records on CPU): masllm's
chunked foreach ops against the same two passes on whole tensors (a full parameter-sized
temporary theta - theta*). Target: <= 1/8 of the parameter bytes.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from common import gpt2_25m, num_params, peak_allocated_bytes, print_table, timings
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from masllm import MASConfig, MASTrainer, Omega
from masllm.penalty import add_penalty_grad_


class Tokens(Dataset):
    def __init__(self, n: int, seq: int, vocab: int):
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class LossTermTrainer(Trainer):
    """The usual approach: the penalty as a loss term, a Python loop over parameters."""

    def __init__(self, *args, omega: Omega, reg_lambda: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.omega, self.reg_lambda = omega, reg_lambda

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        penalty = 0.0
        for n, p in self.model.named_parameters():
            penalty = penalty + (self.omega[n] * (p - self.omega.anchors[n]) ** 2).sum()
        return loss + self.reg_lambda * penalty


def random_omega(model) -> Omega:
    g = torch.Generator().manual_seed(1)
    imp = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    return Omega(imp, anchors, tasks=[{"name": "previous", "num_samples": 1, "method": "mas"}])


def make_stepper(trainer: Trainer):
    """One full optimizer step exactly as Trainer's inner loop does it."""
    trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    trainer.current_gradient_accumulation_steps = 1
    model, batch = trainer.model, next(iter(trainer.get_train_dataloader()))

    def step():
        trainer.training_step(model, batch)
        trainer._clip_grad_norm(model)
        trainer.optimizer.step()
        model.zero_grad()

    return step


def penalty_memory(model, omega: Omega) -> None:
    """Peak extra bytes of one penalty step: chunked (masllm) vs whole-tensor foreach."""
    names = list(omega.importance)
    params = dict(model.named_parameters())
    theta = [params[n].detach() for n in names]
    grads = [torch.zeros_like(t) for t in theta]
    omegas, anchors = [omega[n] for n in names], [omega.anchors[n] for n in names]

    def whole():
        diff = torch._foreach_sub(theta, anchors)
        torch._foreach_addcmul_(grads, omegas, diff, value=2.0)

    param_bytes = sum(t.numel() * t.element_size() for t in theta)
    print(f"\npeak extra memory of one penalty step (parameters: {param_bytes / 2**20:.1f} MiB)")
    for name, fn in {
        "masllm (chunked foreach)": lambda: add_penalty_grad_(theta, grads, omegas, anchors, 1.0),
        "whole-tensor foreach": whole,
    }.items():
        extra = peak_allocated_bytes(fn)
        print(
            f"{name:<34} {extra / 2**20:>8.1f} MiB = {extra / param_bytes:.3f} x parameter bytes   target <= 0.125"
        )


def main(rounds: int, batch: int, seq: int) -> None:
    torch.set_num_threads(1)
    model = gpt2_25m()
    omega = random_omega(model)
    data = Tokens(64, seq, model.config.vocab_size)
    tmp = tempfile.mkdtemp()
    args = TrainingArguments(
        output_dir=tmp, per_device_train_batch_size=batch, report_to=[], use_cpu=True, max_grad_norm=1.0
    )
    cfg = MASConfig(reg_lambda=1.0)
    variants = {
        "plain Trainer": make_stepper(Trainer(gpt2_25m(), args, train_dataset=data)),
        "MASTrainer (grad, foreach)": make_stepper(
            MASTrainer(gpt2_25m(), args, train_dataset=data, mas_config=cfg, omega=omega)
        ),
        "loss-term penalty (Python loop)": make_stepper(
            LossTermTrainer(gpt2_25m(), args, train_dataset=data, omega=omega, reg_lambda=1.0)
        ),
    }
    print(
        f"GPT-2-shaped model, {num_params(model) / 1e6:.1f}M parameters; batch {batch} x {seq} tokens; "
        f"AdamW, clip 1.0; torch threads 1; {rounds} interleaved rounds"
    )
    times = timings(variants, rounds)
    print_table(
        "seconds per optimizer step", times, "plain Trainer", {"MASTrainer (grad, foreach)": "<= 1.03x"}
    )
    penalty_memory(model, omega)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    a = p.parse_args()
    main(a.rounds, a.batch, a.seq)
