"""MAS state per rank under DeepSpeed ZeRO-3 and FSDP2, and the cost of the sharded penalty, in one run.

Usage:
    OMP_NUM_THREADS=1 python bench/zero_memory.py [--steps 10] [--batch 4] [--seq 64]

Relaunches itself as 2 CPU ranks twice, with `accelerate_configs/cpu_zero3.yaml` (every parameter
partitioned by DeepSpeed) and with `accelerate_configs/cpu_fsdp2.yaml` (torch `fully_shard`), on the
~25M-parameter GPT-2 of bench/common.py, and reports for each:
- bytes of Omega + theta* held by each rank (measured on the tensors it holds; FSDP2: the local
  shards of its DTensors) against the 8 P bytes every rank holds when they are replicated (DDP, or
  libraries that keep full copies), in fp32 and with `storage_dtype="bfloat16"`;
- the median time of a training step with the MAS penalty added on the rank's shards (ZeRO: inside
  its step; FSDP2: after the last backward), against a plain step of the same backend, measured
  interleaved in the same Trainer run (odd steps with lambda = 0, even steps with lambda = 1; with
  lambda = 0 the step is the backend's own, the only extra being one Python call), so machine noise
  hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import TrainerCallback, TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import gpt2_25m  # noqa: E402

from masllm import MASConfig, MASTrainer, Omega, compute_importance  # noqa: E402
from masllm.distributed import exit_process, world  # noqa: E402
from masllm.distributed.fsdp import local_tensor  # noqa: E402

RESULT = ROOT / "bench" / "results" / "zero_memory.json"
BACKENDS = {"ZeRO-3": "cpu_zero3.yaml", "FSDP2": "cpu_fsdp2.yaml"}


class Tokens(Dataset):
    def __init__(self, n: int, seq: int, vocab: int, labels: bool = True):
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))
        self.labels = labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], **({"labels": self.ids[i]} if self.labels else {})}


class Interleave(TrainerCallback):
    """Odd steps plain (lambda = 0), even steps MAS (lambda = 1); wall time of each step."""

    def __init__(self, trainer: MASTrainer) -> None:
        self.trainer, self.times = trainer, {"plain": [], "MAS": []}

    def on_step_begin(self, args, state, control, **kwargs):
        self.kind = "MAS" if state.global_step % 2 else "plain"
        self.trainer.mas_config.reg_lambda = 1.0 if self.kind == "MAS" else 0.0
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times[self.kind].append(time.perf_counter() - self.t0)


def time_calls(obj: object, name: str) -> list[float]:
    """Wall time of every call of obj.name (an instance attribute shadows the method)."""
    fn, times = getattr(obj, name), []

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - t0)
        return out

    setattr(obj, name, timed)
    return times


def args_for(out: str, steps: int, batch: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,  # CPU ranks over gloo (accelerate_configs/README.md)
        disable_tqdm=True,
        logging_strategy="no",
    )


def measure(cli: argparse.Namespace) -> None:
    model = gpt2_25m()
    vocab = model.config.vocab_size
    cfg = MASConfig(reg_lambda=1.0, importance_batch_size=2)
    with tempfile.TemporaryDirectory() as tmp:
        first = MASTrainer(model, args_for(tmp, 1, cli.batch), train_dataset=Tokens(64, cli.seq, vocab))
        first.train()  # builds the engine / shards the model: importance needs the reduced shards
        sharded = first.model_wrapped if first.is_deepspeed_enabled else first.model
        omega = Omega(config=cfg).merge(
            compute_importance(sharded, Tokens(8, cli.seq, vocab, labels=False), cfg, task_name="t1")
        )
        rank, ws = world()
        local = {
            k: [local_tensor(t) for t in d.values()]
            for k, d in (("omega", omega), ("anchors", omega.anchors))
        }
        held = {k: sum(t.numel() * t.element_size() for t in ts) for k, ts in local.items()}
        P = sum(s.full_numel for s in omega.shards.values())
        bf16 = 2 * sum(t.numel() for t in local["omega"]) * torch.bfloat16.itemsize
        trainer = MASTrainer(
            model,
            args_for(tmp, 2 * cli.steps + 2, cli.batch),
            train_dataset=Tokens(256, cli.seq, vocab),
            omega=omega,
        )
        timer = Interleave(trainer)
        trainer.add_callback(timer)
        penalty_times = time_calls(trainer, "apply_sharded_penalty")
        trainer.train()
    times = {k: v[1:] for k, v in timer.times.items()}  # the first of each kind warms up
    report = {
        "rank": rank,
        "world_size": ws,
        "P": P,
        "omega_bytes": held["omega"],
        "anchors_bytes": held["anchors"],
        "replicated_bytes_fp32": 8 * P,
        "sharded_bytes_bf16": bf16,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "penalty_median_s": statistics.median(penalty_times[3::2]),  # MAS steps are the odd calls; 1st binds
        "steps_timed": {k: len(v) for k, v in times.items()},
        "dtensor": all(hasattr(t, "full_tensor") for t in omega.importance.values()),
    }
    reports = [None] * ws
    torch.distributed.all_gather_object(reports, report)
    if rank == 0:
        Path(cli.part).write_text(json.dumps(reports))


def print_report(backend: str, reports: list[dict]) -> None:
    P = reports[0]["P"]
    print(f"\nMAS state per rank, GPT-2 {P / 1e6:.1f}M parameters, {backend}, {len(reports)} CPU ranks")
    print(
        f"{'rank':<6}{'Omega+theta* bytes':>20}{'x 8P/N':>9}{'replicated 8P':>16}{'ratio':>8}{'bf16 storage':>15}"
    )
    for r in reports:
        held = r["omega_bytes"] + r["anchors_bytes"]
        ideal = 8 * P / r["world_size"]
        print(
            f"{r['rank']:<6}{held:>20,}{held / ideal:>9.3f}{r['replicated_bytes_fp32']:>16,}"
            f"{held / r['replicated_bytes_fp32']:>8.3f}{r['sharded_bytes_bf16']:>15,}"
        )
    m, n = reports[0]["median_s"], reports[0]["steps_timed"]
    plain, mas = m["plain"], m["MAS"]
    print(f"\nstep time (rank 0, median of {n['plain']} / {n['MAS']} interleaved steps)")
    print(f"plain {backend} step {plain:.4f} s   MAS {backend} step {mas:.4f} s   ratio {mas / plain:.3f}")
    pen = reports[0]["penalty_median_s"]
    print(
        f"penalty on the rank's shards (part of the MAS step): {pen * 1e3:.2f} ms = {pen / plain:.2%} of a step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--part", help=argparse.SUPPRESS)  # set by the relaunch: where rank 0 writes
    cli = parser.parse_args()
    if "WORLD_SIZE" in os.environ:
        measure(cli)
        exit_process()  # the ranks leave together, without torch's gloo teardown race
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend, config in BACKENDS.items():
            part = Path(tmp) / f"{config}.json"
            cmd = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                f"accelerate_configs/{config}",
            ]
            cmd += [__file__, "--steps", str(cli.steps), "--batch", str(cli.batch), "--seq", str(cli.seq)]
            if subprocess.call([*cmd, "--part", str(part)], cwd=ROOT, env=env):
                sys.exit(f"the {backend} launch failed")
            results[backend] = json.loads(part.read_text())
    RESULT.parent.mkdir(exist_ok=True)
    args = {k: v for k, v in vars(cli).items() if k != "part"}
    RESULT.write_text(json.dumps({"args": args, "backends": results}, indent=2) + "\n")
    for backend, reports in results.items():
        print_report(backend, reports)


if __name__ == "__main__":
    main()
