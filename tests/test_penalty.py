"""Eq. 3's penalty: its gradient against autograd, and its weight inside MASTrainer."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt2
from torch.utils.data import Dataset
from transformers import TrainingArguments

from masllm import MASConfig, MASTrainer, Omega
from masllm.penalty import add_penalty_grad_, penalty_value


@pytest.mark.parametrize("weight", [0.5, 3.0])
def test_penalty_gradient_equals_autograd_of_eq3(weight):
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    params = [torch.randn(s, generator=g, requires_grad=True) for s in shapes]
    omegas = [torch.rand(s, generator=g) for s in shapes]
    anchors = [torch.randn(s, generator=g) for s in shapes]
    penalty = weight * sum((o * (p - a) ** 2).sum() for p, o, a in zip(params, omegas, anchors))  # Eq. 3
    ref = torch.autograd.grad(penalty, params)

    base = [torch.randn(s, generator=g) for s in shapes]
    grads = [b.clone() for b in base]
    add_penalty_grad_([p.detach() for p in params], grads, omegas, anchors, weight, grad_scale=4.0)
    for got, b, r in zip(grads, base, ref):
        torch.testing.assert_close(got, b + 4.0 * r)  # loss-scaled gradient; the value is unscaled
    torch.testing.assert_close(
        penalty_value([p.detach() for p in params], omegas, anchors, weight), penalty.detach()
    )


class TokenTask(Dataset):
    def __init__(self, n: int = 16, length: int = 8, seed: int = 0, vocab: int = 50):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def random_omega(model, scale: float = 1.0, seed: int = 0) -> Omega:
    g = torch.Generator().manual_seed(seed)
    importance = {n: scale * torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    anchors = {n: p.detach() + 0.1 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    return Omega(importance, anchors, tasks=[{"name": "t0", "num_samples": 1, "method": "mas"}])


def one_sgd_step(tmp_path, omega, lam, accumulation, half=False):
    model = tiny_gpt2()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16 // accumulation,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        seed=0,
        dataloader_drop_last=True,
    )
    cfg = MASConfig(reg_lambda=lam, half_penalty=half)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = MASTrainer(model, args, train_dataset=TokenTask(), mas_config=cfg, omega=omega)
    trainer.train()
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return before, delta, trainer


@pytest.mark.parametrize("accumulation", [1, 4])
def test_penalty_weight_is_exactly_lambda(tmp_path, accumulation):
    """SGD: the step with the penalty minus the step without it is -lr * 2 lambda Omega (theta0 - theta*)."""
    lam, lr = 2.5, 0.1
    omega = random_omega(tiny_gpt2())
    before, plain, _ = one_sgd_step(tmp_path / "plain", omega, 0.0, accumulation)
    _, with_penalty, trainer = one_sgd_step(tmp_path / "mas", omega, lam, accumulation)
    for n in before:
        expected = -lr * 2 * lam * omega[n] * (before[n] - omega.anchors[n])
        torch.testing.assert_close(with_penalty[n] - plain[n], expected, rtol=1e-4, atol=1e-6)
    logged = [h["mas_penalty"] for h in trainer.state.log_history if "mas_penalty" in h]
    after = [before[n] + with_penalty[n] for n in before]  # the weights when the step was logged
    ref = lam * sum((omega[n] * (a - omega.anchors[n]) ** 2).sum() for n, a in zip(before, after))  # Eq. 3
    assert logged and logged[0] == pytest.approx(float(ref), rel=1e-5)


def test_half_penalty_halves_the_step(tmp_path):
    omega = random_omega(tiny_gpt2())
    before, plain, _ = one_sgd_step(tmp_path / "plain", omega, 0.0, 1)
    _, half, _ = one_sgd_step(tmp_path / "half", omega, 2.0, 1, half=True)
    n = "transformer.h.0.mlp.c_fc.weight"
    torch.testing.assert_close(
        half[n] - plain[n], -0.1 * 2 * 1.0 * omega[n] * (before[n] - omega.anchors[n]), rtol=1e-4, atol=1e-6
    )


def test_no_penalty_before_the_first_task(tmp_path):
    _, plain, _ = one_sgd_step(tmp_path / "a", Omega(), 0.0, 1)
    _, empty, trainer = one_sgd_step(tmp_path / "b", Omega(), 5.0, 1)
    assert not trainer.penalty_active
    for n in plain:
        torch.testing.assert_close(plain[n], empty[n])


def test_omega_not_matching_the_model_is_refused(tmp_path):
    omega = random_omega(tiny_gpt2())
    omega.importance["not.a.param"] = torch.ones(2)
    omega.anchors["not.a.param"] = torch.ones(2)
    with pytest.raises(ValueError, match="names the model lacks"):
        MASTrainer(
            tiny_gpt2(), TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]), omega=omega
        )


def test_penalty_runs_in_bounded_chunks_with_the_exact_result(monkeypatch):
    """The temporary theta - theta* is cut into chunks (tensors split into views): same gradient and
    value as the unchunked formula, and no chunk larger than its bound."""
    import masllm.penalty as penalty

    g = torch.Generator().manual_seed(0)
    params = [torch.randn(1000, generator=g), torch.randn(37, 11, generator=g), torch.randn(5, generator=g)]
    anchors = [p + 0.1 * torch.randn(p.shape, generator=g) for p in params]
    omegas = [torch.rand(p.shape, generator=g) for p in params]
    sizes = [sum(t.numel() for t in group[0]) for group in penalty.chunked(params, omegas, size=100)]
    assert max(sizes) == 100 and sum(sizes) == sum(p.numel() for p in params) and len(sizes) == 15
    monkeypatch.setattr(penalty, "MIN_CHUNK", 7)  # 1407 elements / 8 -> chunks of 175
    grads = [torch.ones_like(p) for p in params]
    add_penalty_grad_(params, grads, omegas, anchors, weight=0.5)
    for grad, p, o, a in zip(grads, params, omegas, anchors):
        torch.testing.assert_close(grad, 1 + 2 * 0.5 * o * (p - a), rtol=1e-6, atol=1e-7)
    expected = 0.5 * sum((o * (p - a) ** 2).sum() for p, o, a in zip(params, omegas, anchors))
    torch.testing.assert_close(penalty_value(params, omegas, anchors, 0.5), expected.float())


def test_bf16_storage_survives_training_and_the_next_save(tmp_path):
    """Issue 13, case 6: with storage_dtype="bfloat16", Omega and theta* stay bf16 once MASTrainer binds
    the penalty (in memory and in the files saved after training: 2 + 2 bytes per parameter), and the
    step is the fp32 one computed from the bf16 values (the foreach ops promote, nothing is cast in place)."""
    lam, lr = 2.5, 0.1
    omega = random_omega(tiny_gpt2())
    omega.config = MASConfig(storage_dtype="bfloat16")
    omega.importance = {n: t.to(torch.bfloat16) for n, t in omega.importance.items()}
    omega.anchors = {n: t.to(torch.bfloat16) for n, t in omega.anchors.items()}
    stored = {n: (omega[n].clone(), omega.anchors[n].clone()) for n in omega}
    before, plain, _ = one_sgd_step(tmp_path / "plain", omega, 0.0, 1)
    _, with_penalty, trainer = one_sgd_step(tmp_path / "mas", omega, lam, 1)
    assert trainer._penalty is not None
    for n, (importance, anchors) in stored.items():
        assert trainer.omega[n].dtype == torch.bfloat16 and trainer.omega.anchors[n].dtype == torch.bfloat16
        assert trainer._penalty.omegas[list(stored).index(n)].dtype == torch.bfloat16
        expected = -lr * 2 * lam * importance.float() * (before[n] - anchors.float())
        torch.testing.assert_close(with_penalty[n] - plain[n], expected, rtol=1e-4, atol=1e-6)
    trainer.save_model(str(tmp_path / "saved"))
    loaded = Omega.from_pretrained(tmp_path / "saved", model=trainer.model)
    numel = sum(t.numel() for t in loaded.importance.values())
    nbytes = sum(
        t.numel() * t.element_size() for d in (loaded.importance, loaded.anchors) for t in d.values()
    )
    assert nbytes / numel == 4 and all(t.dtype == torch.bfloat16 for t in loaded.anchors.values())
