"""MASSFTTrainer (MASMixin + TRL's SFTTrainer): the penalty's weight is exactly lambda.

SGD, one optimizer step: the step with the penalty minus the step without it must be
-lr * 2 lambda Omega (theta0 - theta*), under gradient accumulation 1 and 4, with and without packing
(TRL's padding-free BFD packing), with SFTConfig's defaults (bf16 autocast, gradient checkpointing),
and with `peft_config=LoraConfig(...)`, where Omega covers the adapter parameters only.
"""

from __future__ import annotations

import sys

import pytest
import torch

from masllm import MASConfig, Omega, compute_importance

pytest.importorskip("trl")
from distributed.sft import TEXTS, model_for, random_omega, sft_step, tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


CASES = [
    (1, False, False),
    (4, False, False),
    (1, True, False),
    (4, True, False),
    (1, False, True),
    (4, True, True),
]


@pytest.mark.parametrize("accumulation,packing,peft", CASES)
def test_penalty_weight_is_exactly_lambda_in_sft(tmp_path, tok, accumulation, packing, peft):
    lam, lr = 2.5, 0.1
    omega = random_omega(model_for(tok, peft))
    before, plain, _ = sft_step(tmp_path / "plain", tok, omega, 0.0, accumulation, packing, peft)
    _, with_penalty, trainer = sft_step(tmp_path / "mas", tok, omega, lam, accumulation, packing, peft)
    assert trainer.args.bf16 and trainer.args.gradient_checkpointing
    if packing:  # really padding-free: one row holding several sequences, position ids restarting
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        assert "attention_mask" not in batch and (batch["position_ids"] == 0).sum() > 2
    assert any(plain[n].abs().max() > 0 for n in omega)  # the task loss moved the weights too
    for n in omega:
        expected = -lr * 2 * lam * omega[n] * (before[n] - omega.anchors[n])
        torch.testing.assert_close(with_penalty[n] - plain[n], expected, rtol=1e-4, atol=1e-6)
    frozen = [n for n in before if n not in omega]
    assert all(torch.equal(with_penalty[n], torch.zeros_like(with_penalty[n])) for n in frozen)
    assert bool(frozen) == peft and (not peft or all("lora_" in n for n in omega))
    logged = [h["mas_penalty"] for h in trainer.state.log_history if "mas_penalty" in h]
    ref = lam * sum((omega[n] * (before[n] + with_penalty[n] - omega.anchors[n]) ** 2).sum() for n in omega)
    assert logged and logged[0] == pytest.approx(float(ref), rel=1e-5)


def test_omega_after_sft_counts_sequences_and_covers_the_adapter(tmp_path, tok):
    """Omega from the trainer's own (packed, padding-free) batches: N = sequences, adapter names only."""
    _, _, trainer = sft_step(tmp_path, tok, Omega(), 0.0, 1, True, True)
    omega = compute_importance(
        trainer.model,
        trainer.train_dataset,
        MASConfig(),
        collate_fn=trainer.data_collator,
        show_progress=False,
    )
    assert len(trainer.train_dataset) < len(TEXTS) == omega.tasks[0]["num_samples"]
    assert "importance/fallback" not in omega.tasks[0]
    assert set(omega) == {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in omega)


def test_importing_masllm_does_not_import_trl():
    import subprocess

    code = "import sys, masllm, masllm.continual; assert 'trl' not in sys.modules, 'trl imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
