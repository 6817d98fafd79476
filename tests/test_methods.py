"""The method family (L2, l-MAS, vector MAS, SPP, EWC, online EWC): each against an independent reference."""

from __future__ import annotations

import pytest
import torch
from conftest import padded_lm_batch, tiny_convnet, tiny_gpt2, tiny_mlp

from masllm import EWCConfig, MASConfig, compute_importance


def test_l2_is_uniform_omega_one():
    model = tiny_mlp()
    model[0].bias.requires_grad_(False)  # frozen: no Omega
    for normalize in ("samples", "batches"):
        cfg = MASConfig(method="l2", normalize=normalize)
        omega = compute_importance(model, [torch.randn(4, 6), torch.randn(3, 6)], cfg, show_progress=False)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert set(omega) == trainable
        for n, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(omega[n], torch.ones_like(p))
        assert omega.tasks[0]["num_samples"] == 7


# ---- EWC: diagonal Fisher, per sample --------------------------------------------------------------


def fisher_loop(model, samples, log_lik):
    """1/N sum_k (d log p(y_k|x_k) / d theta)^2, one sample at a time with plain autograd."""
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for s in samples:
        grads = torch.autograd.grad(log_lik(s), list(params.values()), allow_unused=True)
        for (n, _), g in zip(params.items(), grads):
            if g is not None:
                total[n] += g.pow(2)
    return {n: t / len(samples) for n, t in total.items()}


def assert_close(omega, ref, rtol=1e-4, atol=1e-7):
    assert set(omega) == set(ref)
    for n in ref:
        torch.testing.assert_close(omega[n], ref[n], rtol=rtol, atol=atol, msg=lambda m, n=n: f"{n}: {m}")


def test_ewc_empirical_fisher_equals_per_sample_loop_mlp():
    model = tiny_mlp()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 6, generator=g), torch.randint(0, 4, (7,), generator=g)
    ref = fisher_loop(model, range(7), lambda k: model(x[k : k + 1]).log_softmax(-1)[0, y[k]])
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    omega = compute_importance(model, batches, MASConfig(method="ewc"), show_progress=False)
    assert_close(omega, ref)


def test_ewc_causal_lm_uses_shifted_input_ids_and_skips_padding():
    model, batch = tiny_gpt2(), padded_lm_batch(n=5)

    def log_lik(k):
        ids, mask = batch["input_ids"][k], batch["attention_mask"][k].bool()
        logp = (
            model(input_ids=ids[None], attention_mask=batch["attention_mask"][k : k + 1])
            .logits[0]
            .log_softmax(-1)
        )
        keep = mask[1:]  # position t predicts token t+1; both must be real tokens
        return logp[:-1][keep].gather(-1, ids[1:][keep][:, None]).sum()

    ref = fisher_loop(model, range(5), log_lik)
    batches = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    omega = compute_importance(model, batches, MASConfig(method="ewc"), show_progress=False)
    assert_close(omega, ref, rtol=2e-4)


def test_ewc_sampled_fisher_uses_model_predictions(monkeypatch):
    """Sampling replaced by argmax (deterministic): the Fisher must be that of the model's own labels."""
    model = tiny_mlp()
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(torch, "multinomial", lambda p, n: p.argmax(-1, keepdim=True))
    ref = fisher_loop(model, range(6), lambda k: model(x[k : k + 1]).log_softmax(-1).max())
    omega = compute_importance(model, [x[:4], x[4:]], EWCConfig(ewc_sampled=True), show_progress=False)
    assert_close(omega, ref)


def test_ewc_without_labels_says_how_to_fix():
    with pytest.raises(ValueError, match="ewc_sampled"):
        compute_importance(tiny_mlp(), [torch.randn(3, 6)], MASConfig(method="ewc"), show_progress=False)


# ---- MAS vector output (Sec. 5.1) ------------------------------------------------------------------


def test_vector_output_equals_per_sample_per_output_loop():
    for make, x in (
        (tiny_mlp, torch.randn(5, 6, generator=torch.Generator().manual_seed(2))),
        (tiny_convnet, torch.randn(4, 1, 7, 7, generator=torch.Generator().manual_seed(2))),
    ):
        model = make()
        model.eval()
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        ref = {n: torch.zeros_like(p) for n, p in params.items()}
        for k in range(x.shape[0]):
            F = model(x[k : k + 1]).flatten()
            for d in range(F.numel()):
                grads = torch.autograd.grad(F[d], list(params.values()), retain_graph=True)
                for n, g in zip(params, grads):
                    ref[n] += g.abs() / x.shape[0]
        omega = compute_importance(
            model, list(x.split(3)), MASConfig(method="mas_vector"), show_progress=False
        )
        assert_close(omega, ref)


# ---- SPP (Peng et al. 2018, Sec. 3.1-3.2) -----------------------------------------------------------


def spp_loop(model, samples, logits_of_sample):
    """Eq. 2-3 with dW = -W from per-sample autograd: max(0, -mean_k dH_k/dW W + 1/2 mean_k g_k^2 W^2)."""
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    dH = {n: torch.zeros_like(p) for n, p in params.items()}
    F = {n: torch.zeros_like(p) for n, p in params.items()}
    for s in samples:
        logp = logits_of_sample(s).log_softmax(-1)  # (positions, C)
        H = -(logp.exp() * logp).sum()
        ll = logp.max(-1).values.sum()  # labels: the model's argmax (sampling patched in the test)
        for n, g in zip(params, torch.autograd.grad(H, list(params.values()), retain_graph=True)):
            dH[n] += g / len(samples)
        for n, g in zip(params, torch.autograd.grad(ll, list(params.values()))):
            F[n] += g.pow(2) / len(samples)
    return {n: (-dH[n] * p + 0.5 * F[n] * p.pow(2)).clamp(min=0).detach() for n, p in params.items()}


def test_spp_equals_per_sample_reference(monkeypatch):
    monkeypatch.setattr(torch, "multinomial", lambda p, n: p.argmax(-1, keepdim=True))
    model = tiny_mlp()
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(4))
    ref = spp_loop(model, range(7), lambda k: model(x[k : k + 1]))
    omega = compute_importance(model, list(x.split(4)), MASConfig(method="spp"), show_progress=False)
    assert_close(omega, ref)
    assert any((t == 0).any() for t in omega.values()) and all((t >= 0).all() for t in omega.values())

    gpt2, batch = tiny_gpt2(), padded_lm_batch(n=4)

    def lm_logits(k):
        keep = batch["attention_mask"][k].bool()
        return gpt2(input_ids=batch["input_ids"][k][keep][None]).logits[0]

    ref = spp_loop(gpt2, range(4), lm_logits)
    omega = compute_importance(gpt2, [batch], MASConfig(method="spp"), show_progress=False)
    assert_close(omega, ref, rtol=2e-4, atol=1e-6)
