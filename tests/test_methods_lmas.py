"""l-MAS (Sec. 4.3, Eq. 4-7) against autograd of each layer's local squared l2 norm (Eq. 4-5)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import padded_lm_batch, tiny_gemma3, tiny_gpt2, tiny_llama, tiny_mlp
from torch import nn

from masllm import MASConfig, compute_importance


def relu_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(inplace=True), nn.Linear(8, 4)
    )


def local_norm_reference(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """1/N sum_k |d ||sigma(W y^{l-1}_k + b)||^2 / d theta| / 2 per layer, the input y^{l-1} held fixed."""
    model.eval()
    layers = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    out = {f"{i}.{n}": torch.zeros_like(p) for i in layers for n, p in model[i].named_parameters()}
    for k in range(x.shape[0]):
        h = x[k : k + 1]
        for i, m in enumerate(model):
            if not isinstance(m, nn.Linear):
                continue
            y = m(h.detach())
            act = model[i + 1] if i + 1 < len(model) else None
            y = act(y.clone()) if act is not None else y
            grads = torch.autograd.grad(y.pow(2).sum(), [m.weight, m.bias])  # Eq. 4-5
            for n, g in zip(("weight", "bias"), grads):
                out[f"{i}.{n}"] += g.abs() / 2  # factor 2 dropped (Eq. 7)
            h = y.detach()
    return {n: t / x.shape[0] for n, t in out.items()}


def lmas(model, batches):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the batched path, not the fallback
        return compute_importance(model, batches, MASConfig(method="lmas"), show_progress=False)


def lmas_of_each_sequence(model, batch) -> dict[str, torch.Tensor]:
    """The mean over sequences of l-MAS on each sequence alone, its padding cut off."""
    n = len(batch["input_ids"])
    total: dict[str, torch.Tensor] = {}
    for k in range(n):
        keep = batch["attention_mask"][k].bool()
        one = {
            "input_ids": batch["input_ids"][k][keep][None],
            "attention_mask": torch.ones(1, int(keep.sum())),
        }
        for name, t in lmas(model, [one]).items():
            total[name] = total.get(name, 0) + t / n
    return total


def test_lmas_equals_local_norm_gradient_on_relu_mlp():
    model, x = relu_mlp(), torch.randn(9, 6, generator=torch.Generator().manual_seed(0))
    omega = lmas(model, list(x.split(4)))
    ref = local_norm_reference(model, x)
    for n in ref:
        torch.testing.assert_close(omega[n], ref[n], rtol=1e-5, atol=1e-7)
    # Eq. 7 literally between two ReLU layers (inputs and outputs >= 0): mean_k y_i^k y_j^k
    y0 = torch.relu(model[0](x))
    y1 = torch.relu(model[2](y0))
    torch.testing.assert_close(omega["2.weight"], (y1[:, :, None] * y0[:, None, :]).mean(0))
    torch.testing.assert_close(omega["2.bias"], y1.mean(0))


def test_lmas_with_tanh_activation_and_linear_output():
    model, x = tiny_mlp(), torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    omega = lmas(model, [x])
    ref = local_norm_reference(model, x)
    for n in ref:
        torch.testing.assert_close(omega[n], ref[n], rtol=1e-5, atol=1e-7)


def test_lmas_gpt2_padding_does_not_count():
    """A padded batch gives the same Omega as each sequence alone, unpadded (causal attention)."""
    model, batch = tiny_gpt2(), padded_lm_batch(n=4)
    omega = lmas(model, [batch])
    alone = lmas_of_each_sequence(model, batch)
    assert set(omega) == {n for n, p in model.named_parameters()}
    for n in omega:
        torch.testing.assert_close(omega[n], alone[n], rtol=1e-4, atol=1e-6)
    assert all((t >= 0).all() and t.sum() > 0 for t in omega.values())


def test_lmas_runs_no_backward_through_the_network():
    """Each layer's gradient stops at its input: a layer's Omega is unchanged by the layers above it."""
    model, x = relu_mlp(), torch.randn(4, 6)
    a = lmas(model, [x])
    with torch.no_grad():
        model[4].weight.mul_(10.0)
    b = lmas(model, [x])
    for n in ("0.weight", "0.bias", "2.weight", "2.bias"):
        torch.testing.assert_close(a[n], b[n])
    assert not torch.allclose(a["4.weight"], b["4.weight"])


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_lmas_on_rmsnorm_models_stays_batched_and_exact(make_model):
    """RMSNorm (no fast path: its per-sample gradient is replayed under torch.func) must not be cut
    by l-MAS during that replay: the batched pass takes no fallback and equals each sequence alone,
    unpadded (Gemma 3's q / k norms see per-head (B, heads, T, d) tensors: their padding is masked)."""
    model, batch = make_model(), padded_lm_batch(n=4)
    omega = lmas(model, [batch])
    assert "importance/fallback" not in omega.tasks[0]
    alone = lmas_of_each_sequence(model, batch)  # a batch of one is exact whatever the path
    norms = [n for n in omega if "norm" in n]
    assert norms and all(omega[n].sum() > 0 for n in norms)
    for n in omega:
        torch.testing.assert_close(omega[n], alone[n], rtol=1e-4, atol=1e-6)
