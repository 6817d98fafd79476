"""Trainer checkpoints carry Omega and theta*: resuming restores them and continues the same run."""

from __future__ import annotations

import torch
from conftest import tiny_gpt2
from test_penalty import TokenTask, random_omega
from transformers import TrainingArguments

from masllm import MASConfig, MASTrainer, Omega


def trainer_for(tmp, omega, max_steps=6):
    args = TrainingArguments(
        output_dir=str(tmp),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        learning_rate=0.05,
        save_steps=3,
        save_strategy="steps",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        save_only_model=False,
    )
    return MASTrainer(
        tiny_gpt2(seed=1),
        args,
        train_dataset=TokenTask(n=32),
        mas_config=MASConfig(reg_lambda=3.0),
        omega=omega,
    )


def losses(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def test_resume_restores_omega_and_matches_uninterrupted_run(tmp_path):
    omega = random_omega(tiny_gpt2(seed=1), seed=3)
    full = trainer_for(tmp_path / "full", omega)
    full.train()
    ckpt = tmp_path / "full" / "checkpoint-3"
    assert (ckpt / "mas_omega.safetensors").is_file() and (ckpt / "mas_anchors.safetensors").is_file()

    resumed = trainer_for(
        tmp_path / "resumed", Omega()
    )  # starts with NO Omega: all must come from the checkpoint
    resumed.train(resume_from_checkpoint=str(ckpt))
    for n in omega:
        assert torch.equal(resumed.omega[n], omega[n]) and torch.equal(
            resumed.omega.anchors[n], omega.anchors[n]
        )
    assert resumed.omega.tasks == omega.tasks
    a, b = losses(full), losses(resumed)
    assert all(abs(a[s] - b[s]) < 1e-5 for s in (4, 5, 6)), (a, b)  # steps run after the resume
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, msg=n)
    assert any("mas_penalty" in h for h in resumed.state.log_history)


def test_resume_without_config_takes_the_checkpoints(tmp_path):
    omega = random_omega(tiny_gpt2(seed=1), seed=3)
    omega.config = MASConfig(reg_lambda=3.0)
    full = trainer_for(tmp_path / "full", omega, max_steps=3)
    full.train()
    args = full.args
    args.output_dir = str(tmp_path / "again")
    again = MASTrainer(tiny_gpt2(seed=1), args, train_dataset=TokenTask(n=32))  # neither config nor Omega
    again.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert again.mas_config.reg_lambda == 3.0 and again.penalty_active
