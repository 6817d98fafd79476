"""A two-task MAS run on a tiny GPT-2, launched by tests/test_distributed_*.py in every configuration.

Usage:
    python tests/distributed/two_tasks.py --out /tmp/single                  # one process
    accelerate launch --config_file accelerate_configs/cpu_zero3.yaml \\
        tests/distributed/two_tasks.py --out /tmp/z3 --resume-check --load-check /tmp/single/omega
    accelerate launch --config_file accelerate_configs/cpu_fsdp2.yaml \\
        tests/distributed/two_tasks.py --out /tmp/f2 --resume-check --load-check /tmp/z3/omega /tmp/single/omega

Task A (4 optimizer steps, 2 micro-batches each) -> Omega_A (Eq. 2 on A's unlabeled inputs) ->
task B under the penalty (Eq. 3, lambda = 50, SGD, gradient clipping at 0.5) -> Omega_B merged. The global
batch is the same at every world size, so every configuration must end with the same numbers.
Rank 0 writes to --out: `omega/` (consolidated checkpoint), `weights.safetensors` (full final
weights), `omega_a/` (Omega after task A), `losses.json`; every rank writes `rank{r}.json` (its
local element counts) and `rank{r}.safetensors` (its raw slices and their offsets).
With --resume-check: task B is resumed from its step-2 checkpoint in a fresh Trainer with an empty
Omega; Omega, theta*, losses and weights must come back as in the uninterrupted run (rank 0 writes
`resume.json`). With --load-check DIR [DIR ...]: an Omega saved elsewhere (any world size) is loaded into
this run's shards and compared with the file's tensors (`load.json`). With --lora the model is a
frozen base with LoRA adapters (only they have fp32 master slices, Omega and theta*). Under FSDP2
Omega and theta* are DTensors: the raw slices are their local shards, and rank 0 also writes
`omega_plain/` (the gathered Omega saved by `save_pretrained`, to compare byte for byte).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from transformers import TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the shared tiny models
from conftest import tiny_gpt2  # noqa: E402

from masllm import MASConfig, MASTrainer, Omega, compute_importance  # noqa: E402
from masllm.distributed import exit_process  # noqa: E402
from masllm.distributed.comm import world  # noqa: E402
from masllm.distributed.fsdp import is_fsdp2, local_tensor, shards_of  # noqa: E402
from masllm.distributed.zero import LocalShards, deepspeed_engine  # noqa: E402
from masllm.omega.sharded import load_omega_shards, save_omega_consolidated  # noqa: E402


class ListDataset(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


GLOBAL_BATCH, ACCUM, STEPS, SEQ, N = 8, 2, 4, 8, 16


def task_data(offset: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(offset, offset + 25, (N, SEQ), generator=g)
    return [{"input_ids": x, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": x} for x in ids]


def args_for(out: Path, name: str, save_steps: int | None = None, bf16: bool = False) -> TrainingArguments:
    ws = int(os.environ.get("WORLD_SIZE", "1"))  # the process group does not exist yet
    return TrainingArguments(
        output_dir=str(out / name),
        per_device_train_batch_size=GLOBAL_BATCH // ACCUM // ws,
        gradient_accumulation_steps=ACCUM,
        max_steps=STEPS,
        learning_rate=0.1,
        optim="sgd",  # SGD: Adam would amplify 1e-7 float noise in near-zero gradients
        optim_args="momentum=0.5",  # optimizer state to resume (FSDP2 cannot load a stateless one)
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.5,  # clipping is active: the penalty must be inside the clipped norm
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to=[],
        use_cpu=True,  # without it each CPU rank would silently train alone
        seed=0,
        train_sampling_strategy="sequential",
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=bf16,
    )


def losses(trainer: MASTrainer) -> list[dict]:
    keep = ("step", "loss", "mas_penalty", "grad_norm")
    return [{k: h[k] for k in keep if k in h} for h in trainer.state.log_history if "loss" in h]


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 weights on rank 0 (a collective under ZeRO-3: every rank calls it)."""
    out = {}
    for n, p in model.named_parameters():
        if hasattr(p, "full_tensor"):  # FSDP2: a DTensor shard
            out[n] = p.detach().full_tensor().clone()
        elif hasattr(p, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                out[n] = p.detach().clone()
        else:
            out[n] = p.detach().clone()
    return out


def save_omega(omega: Omega, directory: Path, model: torch.nn.Module) -> None:
    if omega.is_sharded:
        save_omega_consolidated(omega, directory)
        if any(
            hasattr(t, "full_tensor") for t in omega.importance.values()
        ):  # FSDP2: gathered, by one process
            full = {
                k: {n: t.full_tensor() for n, t in d.items()} for k, d in (("o", omega), ("a", omega.anchors))
            }
            plain = Omega(
                full["o"], full["a"], config=omega.config, tasks=omega.tasks, merge_state=omega.merge_state
            )
            if world()[0] == 0:
                plain.save_pretrained(directory.parent / f"{directory.name}_plain")
    elif world()[0] == 0:
        omega.save_pretrained(directory)


def importance_model(trainer: MASTrainer) -> torch.nn.Module:
    return trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume-check", action="store_true")
    parser.add_argument("--load-check", type=Path, nargs="+", default=[])
    parser.add_argument("--lora", action="store_true", help="frozen base + LoRA adapters (peft)")
    parser.add_argument("--bf16", action="store_true", help="bf16 training (ZeRO: bf16 weights, fp32 master)")
    parser.add_argument("--bf16-storage", action="store_true", help='MASConfig(storage_dtype="bfloat16")')
    cli = parser.parse_args()
    out = cli.out
    rank, ws = world()
    out.mkdir(parents=True, exist_ok=True)
    storage = "bfloat16" if cli.bf16_storage else "float32"
    cfg = MASConfig(reg_lambda=50.0, importance_batch_size=3, storage_dtype=storage)
    model = tiny_gpt2(vocab=50)
    if cli.lora:  # only the adapters train: they alone have fp32 master slices, Omega and theta*
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
        model = get_peft_model(model, lora)
    data_a, data_b = task_data(0, 1), task_data(25, 2)

    def unlabeled(d: list[dict]) -> Dataset:  # a map-style dataset: compute_importance splits it by rank
        return ListDataset([{k: v for k, v in x.items() if k != "labels"} for x in d])

    omega = Omega(config=cfg)
    trainer_a = MASTrainer(model, args_for(out, "task_a", bf16=cli.bf16), train_dataset=data_a, omega=omega)
    trainer_a.train()
    rank, ws = world()  # the Trainer may have started the process group
    omega.merge(compute_importance(importance_model(trainer_a), unlabeled(data_a), cfg, task_name="a"))
    save_omega(omega, out / "omega_a", model)

    trainer_b = MASTrainer(
        model, args_for(out, "task_b", save_steps=2, bf16=cli.bf16), train_dataset=data_b, omega=omega
    )
    trainer_b.train()
    weights_b = full_weights(model)
    engine_b = deepspeed_engine(importance_model(trainer_b))
    sharded_b = engine_b if engine_b is not None else (model if is_fsdp2(model) else None)
    # 13 samples: ranks get 6 and 7 (batches 3+3 and 3+3+1), so the shorter one pads in lockstep
    omega.merge(compute_importance(importance_model(trainer_b), unlabeled(data_b[:13]), cfg, task_name="b"))
    save_omega(omega, out / "omega", model)

    held = {
        k: [local_tensor(t) for t in d.values()] for k, d in (("omega", omega), ("anchors", omega.anchors))
    }
    local = {f"{k}_numel": sum(t.numel() for t in ts) for k, ts in held.items()}
    local |= {f"{k}_bytes": sum(t.numel() * t.element_size() for t in ts) for k, ts in held.items()}
    local["dtensor"] = all(hasattr(t, "full_tensor") for t in omega.importance.values())
    local["model_numel"] = sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
    local["trainable_numel"] = sum(
        int(getattr(p, "ds_numel", p.numel())) for p in model.parameters() if p.requires_grad
    )
    local["omega_names"] = sorted(omega.importance)
    local["world_size"], local["sharded"] = ws, omega.is_sharded
    (out / f"rank{rank}.json").write_text(json.dumps(local))
    raw = {f"omega/{n}": local_tensor(t).reshape(-1).contiguous() for n, t in omega.importance.items()}
    raw |= {f"anchor/{n}": local_tensor(t).reshape(-1).contiguous() for n, t in omega.anchors.items()}
    raw |= {f"start/{n}": torch.tensor([s.start]) for n, s in omega.shards.items()}
    save_file(raw, str(out / f"rank{rank}.safetensors"))
    if rank == 0:
        save_file(weights_b, str(out / "weights.safetensors"))
        (out / "losses.json").write_text(json.dumps({"a": losses(trainer_a), "b": losses(trainer_b)}))

    if cli.load_check and sharded_b is not None:  # rank r writes load{r}.json: {saving run: report}
        reports = {d.parent.name: check_load(d, sharded_b, omega, out, rank, data_b) for d in cli.load_check}
        (out / f"load{rank}.json").write_text(json.dumps(reports))
    if cli.resume_check:
        check_resume(model, out, data_b, cfg, trainer_b, weights_b, rank)


def flat(t: torch.Tensor) -> torch.Tensor:
    """This rank's elements of a slice or a DTensor shard, flattened."""
    return local_tensor(t).reshape(-1)


def maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def check_load(directory: Path, sharded, omega: Omega, out: Path, rank: int, data) -> dict:
    """Slices read from a checkpoint saved at another world size (or under another backend) equal the
    file's tensors there, directly and through `MASTrainer(omega=directory)`, which reads them at its
    first step. `sharded`: the DeepSpeed engine, or the FSDP2 model."""
    module = getattr(sharded, "module", sharded)
    params = {n: p for n, p in module.named_parameters() if n in omega.importance}
    shards = shards_of(params) if is_fsdp2(module) else LocalShards(sharded, params).shards
    loaded = load_omega_shards(directory, shards)
    full = load_file(str(directory / "mas_omega.safetensors"))
    anchors = load_file(str(directory / "mas_anchors.safetensors"))
    err = max(
        max(maxabs(loaded[n], s.slice_of(full[n])) for n, s in shards.items()),
        max(maxabs(loaded.anchors[n], s.slice_of(anchors[n])) for n, s in shards.items()),
    )
    own = load_omega_shards(out / "omega", shards)  # our own save, read back into our shards
    own_err = max(maxabs(own[n], flat(omega[n])) for n in omega.importance)
    trainer = MASTrainer(
        module, args_for(out, f"from_{directory.parent.name}"), train_dataset=data, omega=str(directory)
    )
    trainer.train()
    got = trainer.omega
    trainer_err = max(
        max(maxabs(flat(got[n]), s.slice_of(full[n])) for n, s in shards.items()),
        max(maxabs(flat(got.anchors[n]), s.slice_of(anchors[n])) for n, s in shards.items()),
    )
    report = {"max_abs_err": err, "own_roundtrip_err": own_err, "trainer_err": trainer_err}
    report["trainer_sharded"] = got.is_sharded and set(got.shards) == set(shards)
    report["trainer_dtensor"] = all(hasattr(t, "full_tensor") for t in got.importance.values())
    report["trainer_penalty"] = max(h.get("mas_penalty", 0.0) for h in losses(trainer))
    return report


def check_resume(
    model, out: Path, data_b, cfg: MASConfig, trainer_b: MASTrainer, weights_b, rank: int
) -> None:
    """Resume task B from its step-2 checkpoint in a fresh Trainer that starts with an empty Omega."""
    fresh = Omega(config=cfg)
    trainer = MASTrainer(model, args_for(out, "task_b_resumed"), train_dataset=data_b, omega=fresh)
    trainer.train(resume_from_checkpoint=str(out / "task_b" / "checkpoint-2"))
    weights = full_weights(model)
    save_omega(fresh, out / "omega_resumed", model)
    if rank == 0:
        err = max(float((weights[n] - weights_b[n]).abs().max()) for n in weights)
        report = {"weights_max_abs_err": err, "losses": losses(trainer), "uninterrupted": losses(trainer_b)}
        (out / "resume.json").write_text(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
    exit_process()
