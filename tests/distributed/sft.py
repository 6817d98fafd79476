"""One SGD step of MASSFTTrainer with and without the penalty, and Omega from its packed batches.

Usage:
    python tests/distributed/sft.py --out /tmp/single                       # one process
    accelerate launch --config_file accelerate_configs/cpu_zero3.yaml tests/distributed/sft.py --out /tmp/z3

For each variant (the full model with TRL's padding-free packing; a LoRA adapter without packing),
two fresh trainers take one SGD step on the same global batch, with lambda = 0 and lambda = 2.5;
rank 0 writes `<variant>.safetensors`: the weights before, both steps, Omega and theta*, and the
logged penalty. The full model's run then estimates Omega on the trainer's own padding-free batches
(a sample = a sequence) and writes it to `<variant>_omega/`. The helpers are shared with
tests/test_trl.py; launched by tests/test_trl_distributed.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from trl import SFTConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the shared tiny models
from conftest import tiny_gpt2  # noqa: E402
from distributed.two_tasks import full_weights, save_omega  # noqa: E402

from masllm import MASConfig, Omega, compute_importance  # noqa: E402
from masllm.distributed import exit_process  # noqa: E402
from masllm.distributed.comm import world  # noqa: E402
from masllm.integrations.trl import MASSFTTrainer  # noqa: E402
from masllm.tasks.text.packing import train_bpe_tokenizer  # noqa: E402

TEXTS = [" ".join(f"w{(i * 7 + k) % 23}" for k in range(3 + i % 9)) for i in range(32)]
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}
LAMBDA, LR, GLOBAL_BATCH = 2.5, 0.1, 8
VARIANTS = {"full_packed": (True, False), "lora": (False, True)}  # (packing, peft)


def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)  # 256 bytes + merges: about two tokens per word


def model_for(tok, peft: bool = False):
    model = tiny_gpt2(vocab=len(tok))
    return get_peft_model(model, LoraConfig(**LORA)) if peft else model


def random_omega(model, seed: int = 0) -> Omega:
    g = torch.Generator().manual_seed(seed)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    importance = {n: torch.rand(p.shape, generator=g) for n, p in params.items()}
    anchors = {n: p.detach() + 0.1 * torch.randn(p.shape, generator=g) for n, p in params.items()}
    return Omega(importance, anchors, tasks=[{"name": "t0", "num_samples": 1, "method": "mas"}])


def sft_args(out: Path, accumulation: int, packing: bool, bf16: bool = True) -> SFTConfig:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=GLOBAL_BATCH // accumulation // ws,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=LR,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        max_length=32,
        packing=packing,  # BFD: padding-free rows of several sequences
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        bf16=bf16,  # SFTConfig's default is True (and gradient checkpointing on)
    )


def sft_step(
    out: Path, tok, omega: Omega, lam: float, accumulation: int, packing: bool, peft: bool, bf16=True
):
    """(weights before, weights after minus before, trainer) of one step of a fresh trainer."""
    trainer = MASSFTTrainer(
        model_for(tok),
        args=sft_args(out, accumulation, packing, bf16),
        train_dataset=Dataset.from_dict({"text": TEXTS}),
        processing_class=tok,
        peft_config=LoraConfig(**LORA) if peft else None,
        mas_config=MASConfig(reg_lambda=lam),
        omega=omega,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = full_weights(trainer.model)
    return before, {n: after[n] - before[n] for n in after}, trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    for name, (packing, peft) in VARIANTS.items():
        omega = random_omega(
            model_for(tok, peft)
        )  # each trainer gets its own copy: ZeRO reshards it in place
        before, plain, _ = sft_step(
            out / f"{name}_plain", tok, random_omega(model_for(tok, peft)), 0.0, 2, packing, peft, bf16=False
        )
        given = random_omega(model_for(tok, peft))
        _, penalised, trainer = sft_step(
            out / f"{name}_mas", tok, given, LAMBDA, 2, packing, peft, bf16=False
        )
        logged = [h["mas_penalty"] for h in trainer.state.log_history if "mas_penalty" in h]
        if packing:  # Omega from the trainer's padding-free batches, on the engine under ZeRO
            model = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
            cfg = MASConfig(importance_batch_size=4)
            new = compute_importance(model, trainer.train_dataset, cfg, collate_fn=trainer.data_collator)
            save_omega(new, out / f"{name}_omega", trainer.model)
        if world()[0] == 0:
            tensors = {f"before/{n}": t for n, t in before.items() if n in omega}
            tensors |= {f"plain/{n}": plain[n] for n in omega} | {f"mas/{n}": penalised[n] for n in omega}
            tensors |= {f"omega/{n}": omega[n] for n in omega} | {
                f"anchor/{n}": omega.anchors[n] for n in omega
            }
            frozen = [penalised[n].abs().max() for n in penalised if n not in omega]
            tensors["frozen_max_change"] = torch.stack(frozen).max() if frozen else torch.zeros(())
            tensors["logged_penalty"] = torch.tensor(logged[:1] or [float("nan")], dtype=torch.float64)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.safetensors"))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
    exit_process()
