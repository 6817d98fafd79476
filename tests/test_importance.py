"""Eq. 2 against a per-sample autograd loop, on an MLP, a padded tiny GPT-2 and a small convnet."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from conftest import (
    padded_lm_batch,
    tiny_bert_classifier,
    tiny_convnet,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_mlp,
    tiny_vit_classifier,
)
from reference import brute_force_omega, per_sample_grads, split_samples
from torch.utils.data import DataLoader, TensorDataset

from masllm import MASConfig, compute_importance


def assert_close(omega, ref, rtol=1e-4):
    assert set(omega) == set(ref)
    for n in ref:
        torch.testing.assert_close(omega[n], ref[n], rtol=rtol, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def lm_batches(batch, size):
    n = next(iter(batch.values())).shape[0]
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


CASES = {
    "mlp": (tiny_mlp, lambda: torch.randn(7, 6, generator=torch.Generator().manual_seed(0))),
    "gpt2_padded": (tiny_gpt2, padded_lm_batch),
    "convnet": (tiny_convnet, lambda: torch.randn(5, 1, 7, 7, generator=torch.Generator().manual_seed(0))),
    # HF sequence classifier: padded batch, broadcast position ids, token-type embeddings
    "bert_classifier": (tiny_bert_classifier, lambda: padded_lm_batch(n=5, length=9, vocab=40)),
    # Llama: RMSNorm (torch.func path), untied; Gemma 3: a tied embedding scaled by sqrt(d) (fused route)
    "llama_padded": (tiny_llama, padded_lm_batch),
    "gemma3_padded": (tiny_gemma3, padded_lm_batch),
    # HF image classifier: Conv2d patches and ViTEmbeddings' own cls_token / position_embeddings (torch.func path)
    "vit_classifier": (
        tiny_vit_classifier,
        lambda: {"pixel_values": torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_exact_omega_equals_per_sample_loop(case):
    make_model, make_data = CASES[case]
    model, data = make_model(), make_data()
    ref = brute_force_omega(model, split_samples(data))
    batches = lm_batches(data, 4) if isinstance(data, dict) else list(data.split(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the batched path must be used: no fallback
        omega = compute_importance(model, batches, MASConfig(), show_progress=False)
    assert_close(omega, ref)
    assert omega.tasks == [{"name": "task", "num_samples": len(split_samples(data)), "method": "mas"}]


@pytest.mark.parametrize("case", ["gpt2_padded", "gemma3_padded", "mlp"])
def test_exact_omega_with_row_tiles(case, monkeypatch):
    """Weight-sized per-sample products formed a few rows at a time (as a large output layer's
    are): tiles that do not divide the rows, and a tied weight's kept rows cut across tiles."""
    from masllm.importance import layers

    monkeypatch.setattr(layers, "TILE_ELEMENTS", 40)  # 1-5 rows of these tiny layers per tile
    make_model, make_data = CASES[case]
    model, data = make_model(), make_data()
    ref = brute_force_omega(model, split_samples(data))
    batches = lm_batches(data, 4) if isinstance(data, dict) else list(data.split(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert_close(compute_importance(model, batches, MASConfig(), show_progress=False), ref)


def test_untied_gpt2_and_hidden_state_output():
    model, data = tiny_gpt2(tie=False), padded_lm_batch(n=4)
    omega = compute_importance(model, [data], MASConfig(), show_progress=False)
    assert_close(omega, brute_force_omega(model, split_samples(data)))


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_exact_mode_invariant_to_batch_size(batch_size):
    model, x = tiny_mlp(), torch.randn(10, 6)
    loader = DataLoader(TensorDataset(x), batch_size=batch_size)
    omega = compute_importance(model, loader, MASConfig(), show_progress=False)
    assert_close(omega, brute_force_omega(model, split_samples(x)))


def test_micro_batch_mode_is_abs_of_batch_sum():
    model, x = tiny_mlp(), torch.randn(8, 6)
    grads = per_sample_grads(model.eval(), split_samples(x))
    ref = {}
    for n in grads[0]:  # 1/N sum_batches |sum_{k in batch} g_k|, batches of 4
        ref[n] = sum(torch.stack([g[n] for g in grads[i : i + 4]]).sum(0).abs() for i in (0, 4)) / 8
    omega = compute_importance(model, list(x.split(4)), MASConfig(abs_mode="per_batch"), show_progress=False)
    assert_close(omega, ref)
    exact = compute_importance(model, list(x.split(4)), MASConfig(), show_progress=False)
    assert any((exact[n] > omega[n] + 1e-6).any() for n in ref), "|sum| must lose mass against sum |.|"


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_other_norms(norm):
    model, x = tiny_mlp(), torch.randn(6, 6)
    omega = compute_importance(model, list(x.split(3)), MASConfig(norm=norm), show_progress=False)
    assert_close(omega, brute_force_omega(model, split_samples(x), norm=norm))


def test_fallback_for_unattributable_parameter(caplog):
    class UsesChildWeightDirectly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x) + torch.nn.functional.linear(x.tanh(), self.lin.weight)

    torch.manual_seed(0)
    model, x = UsesChildWeightDirectly(), torch.randn(6, 4)
    with caplog.at_level(logging.WARNING, logger="masllm"):
        omega = compute_importance(model, list(x.split(3)), MASConfig(), show_progress=False)
    assert_close(omega, brute_force_omega(model, split_samples(x)))
    # reported once, with its reason and measured cost, in the logs and in the task's record
    lines = [r.getMessage() for r in caplog.records if "importance/fallback" in r.getMessage()]
    assert len(lines) == 1 and "outside its module's forward" in lines[0] and "x)" in lines[0]
    report = omega.tasks[0]["importance/fallback"]
    assert "outside its module's forward" in report["reason"] and report["slowdown"] > 0


def test_dataset_input_mean_over_samples_and_limit():
    model, x = tiny_mlp(), torch.randn(9, 6)
    cfg = MASConfig(importance_batch_size=4, max_importance_samples=7)
    omega = compute_importance(model, TensorDataset(x, torch.zeros(9)), cfg, show_progress=False)
    assert omega.tasks[0]["num_samples"] == 7
    assert_close(omega, brute_force_omega(model, split_samples(x[:7])))


def test_empty_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        compute_importance(tiny_mlp(), TensorDataset(torch.zeros(0, 6)), show_progress=False)
    with pytest.raises(ValueError, match="no samples"):
        compute_importance(tiny_mlp(), [], show_progress=False)


def test_model_mode_and_grads_restored():
    model = tiny_mlp().train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    compute_importance(model, [torch.randn(3, 6)], show_progress=False)
    assert model.training
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))


def test_tied_embedding_with_hidden_state_output_stays_batched():
    """output='hidden_states': the tied lm_head use of wte gets no gradient; still exact, no fallback."""
    model, data = tiny_gpt2(), padded_lm_batch(n=4)
    model.eval()
    ref = {}
    for x in split_samples(data):
        h = model(**x, output_hidden_states=True).hidden_states[-1][0][x["attention_mask"][0].bool()]
        gs = torch.autograd.grad((h**2).sum(), list(model.parameters()), allow_unused=True)
        for (n, p), g in zip(model.named_parameters(), gs):
            g = torch.zeros_like(p) if g is None else g
            ref[n] = ref.get(n, 0) + g.abs() / 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        omega = compute_importance(model, [data], MASConfig(output="hidden_states"), show_progress=False)
    assert_close(omega, ref)
    assert "importance/fallback" not in omega.tasks[0]


def test_fused_route_covers_linear_conv1d_embedding_and_the_tie():
    """Linear / Conv1D / Embedding weights (and a tied embedding + output layer) get sum_k |g_k| from
    the fused backward, in place of autograd's gradient; norms stay on the hook path."""
    from masllm.importance.fused import FusedLayers

    for model, hooked in ((tiny_gpt2(), "ln_"), (tiny_gemma3(), "norm")):
        params = dict(model.named_parameters())
        fused = FusedLayers(model, params, torch.abs, replaying=lambda: False, check=True)
        try:
            names = {n for n, p in params.items() if id(p) in fused.covered}
            assert names == {n for n in params if hooked not in n}, sorted(set(params) - names)
        finally:
            fused.remove()
        assert "forward" not in vars(model.get_input_embeddings())  # the class's forward is back
