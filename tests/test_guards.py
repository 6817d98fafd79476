"""Divergence stops MASTrainer with a clear error before a checkpoint of the diverged step is written,
and plain SGD with an unstable penalty step is warned about once, with the numbers (issue 13, case 5)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import Classifier, TeacherTask, tiny_gpt2
from safetensors.torch import load_file
from test_penalty import TokenTask, random_omega
from transformers import TrainingArguments

from masllm import DivergenceError, MASConfig, MASTrainer, Omega


def sgd_args(out, **overrides) -> TrainingArguments:
    base = dict(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=6, learning_rate=0.1, optim="sgd",
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, report_to=[], save_strategy="steps",
        save_steps=1, use_cpu=True, logging_steps=1, seed=0, disable_tqdm=True,
    )  # fmt: skip
    return TrainingArguments(**{**base, **overrides})


def checkpoints(out) -> list:
    return sorted(out.glob("checkpoint-*"))


def test_huge_lambda_with_sgd_stops_before_nan_weights_are_saved(tmp_path):
    """lambda 1e6, SGD lr 0.1, no clipping: NaN weights within a few steps; used to save them."""
    model = tiny_gpt2()
    omega = random_omega(model)
    trainer = MASTrainer(model, sgd_args(tmp_path), train_dataset=TokenTask(), mas_config=MASConfig(reg_lambda=1e6),
                         omega=omega)  # fmt: skip
    unstable = r"lr \* 2 \* lambda \* max\(Omega\) = 2e\+05 >= 2"
    diverged = "Training diverged at optimizer step \\d+ .*gradient norm"
    with (
        pytest.warns(RuntimeWarning, match=unstable) as caught,
        pytest.raises(DivergenceError, match=diverged),
    ):
        trainer.train()
    assert sum("max(Omega)" in str(w.message) for w in caught) == 1  # once
    diverged = trainer.state.global_step
    assert len(checkpoints(tmp_path)) == diverged - 1  # every step before, none of the diverged one
    for ckpt in checkpoints(tmp_path):
        assert all(torch.isfinite(t).all() for t in load_file(ckpt / "model.safetensors").values())


def test_infinite_gradient_norm_stops_instead_of_stalling(tmp_path):
    """Omega 1e30: the gradient norm is inf every step, clipping zeroed every update without a word."""
    model = tiny_gpt2()
    omega = random_omega(model, scale=1e30)
    trainer = MASTrainer(model, sgd_args(tmp_path, max_grad_norm=1.0, optim="adamw_torch"),
                         train_dataset=TokenTask(), omega=omega)  # fmt: skip
    with pytest.raises(DivergenceError, match="at optimizer step 1 .*gradient norm inf"):
        trainer.train()
    assert not checkpoints(tmp_path)


def test_nan_loss_stops_with_its_value(tmp_path):
    class Broken(TeacherTask):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {**item, "x": item["x"] * float("nan")} if i == 5 else item

    trainer = MASTrainer(Classifier(), sgd_args(tmp_path, optim="adamw_torch"), train_dataset=Broken(0, n=16))
    with pytest.raises(DivergenceError, match="at optimizer step 2 \\(loss nan"):
        trainer.train()
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-1"]


def test_stable_sgd_gets_no_warning(tmp_path):
    model = tiny_gpt2()
    trainer = MASTrainer(model, sgd_args(tmp_path, max_steps=2, save_strategy="no"), train_dataset=TokenTask(),
                         mas_config=MASConfig(reg_lambda=1.0), omega=random_omega(model))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.train()
    assert trainer.state.global_step == 2 and not trainer.omega.is_empty and isinstance(trainer.omega, Omega)
