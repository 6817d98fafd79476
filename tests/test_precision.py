"""Exact importance in bf16 and with activation checkpointing: the batched path, no fallback.

A bf16 model and an autocast forward (accelerate's `mixed_precision="bf16"`, what a Trainer with
`bf16=True` runs) give Omega within 1% of the fp32 model's, tensor by tensor, with no fallback; many
micro-batches of a bf16 model are summed in float32; gradient checkpointing (either kind, in eval or
train mode) gives bit-identical Omega.
"""

from __future__ import annotations

import logging
from types import MethodType

import pytest
import torch
from accelerate.utils import convert_outputs_to_fp32
from conftest import padded_lm_batch, tiny_gemma3, tiny_gpt2, tiny_llama
from transformers import DataCollatorWithFlattening

from masllm import MASConfig, compute_importance

MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "gemma3": tiny_gemma3}


def rel_l1(omega, ref) -> dict[str, float]:
    return {n: float((omega[n] - ref[n]).abs().sum() / ref[n].abs().sum()) for n in ref}


def autocast(model):
    """The model as a Trainer with bf16=True runs it: accelerate's `prepare_model` wraps its forward
    in autocast and the outputs in a cast to fp32 (done here as it does, without an Accelerator,
    whose process-wide state the other tests' Trainers set)."""
    forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward.__func__)
    model.forward = MethodType(convert_outputs_to_fp32(forward), model)
    return model


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("precision", ["bf16_weights", "autocast"])
def test_bf16_stays_batched_and_within_one_percent(arch, precision, caplog):
    data = [padded_lm_batch(n=8, length=12, seed=s) for s in range(3)]
    ref = compute_importance(MODELS[arch](), data, MASConfig(), show_progress=False)
    model = MODELS[arch]().to(torch.bfloat16) if precision == "bf16_weights" else autocast(MODELS[arch]())
    with caplog.at_level(logging.WARNING, logger="masllm"):
        omega = compute_importance(model, data, MASConfig(), show_progress=False)
    assert omega.tasks == [{"name": "task", "num_samples": 24, "method": "mas"}]  # no fallback record
    assert not [r for r in caplog.records if "fallback" in r.getMessage()]
    worst = max(rel_l1(omega, ref).items(), key=lambda kv: kv[1])
    assert worst[1] < 0.01, worst
    assert all(t.dtype == torch.float32 for t in omega.importance.values())


def test_bf16_model_sums_many_micro_batches_in_float32():
    """128 one-sample micro-batches: each adds ~1/128 of the total, below bf16's resolution of a sum
    (2^-8); summed in the bf16 `.grad` they would drift, in float32 they match the fp32 model."""
    data = padded_lm_batch(n=128, length=6, seed=3)
    batches = [{k: v[i : i + 1] for k, v in data.items()} for i in range(128)]
    ref = compute_importance(tiny_gpt2(), batches, MASConfig(), show_progress=False)
    omega = compute_importance(tiny_gpt2().to(torch.bfloat16), batches, MASConfig(), show_progress=False)
    assert max(rel_l1(omega, ref).values()) < 0.01


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("packed", [False, True])
def test_gradient_checkpointing_gives_bit_identical_omega(arch, mode, packed):
    """In train mode the checkpointed blocks really recompute their forward in the backward pass
    (non-reentrant: to refill saved tensors; reentrant: for a nested backward): still no fallback."""
    if packed:
        g = torch.Generator().manual_seed(0)
        seqs = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (5, 3, 7)]
        data = [DataCollatorWithFlattening()([{"input_ids": s} for s in seqs])]
    else:
        data = [padded_lm_batch()]
    cfg = MASConfig(model_mode=mode)
    plain = compute_importance(MODELS[arch](), data, cfg, show_progress=False)
    for reentrant in (False, True):
        model = MODELS[arch]()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        omega = compute_importance(model, data, cfg, show_progress=False)
        assert omega.tasks == plain.tasks and "importance/fallback" not in omega.tasks[0]
        assert all(torch.equal(omega[n], plain[n]) for n in plain), (reentrant, mode)
