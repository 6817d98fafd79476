"""What `compute_importance` is handed (issue 13, case 10): a list of per-sample dicts is a dataset,
not a list of batches, and all-padding samples are left out of N with a warning."""

from __future__ import annotations

import pytest
import torch
from conftest import padded_lm_batch, tiny_gpt2
from reference import brute_force_omega, split_samples

from masllm import MASConfig, compute_importance


def assert_same(a, b):
    assert set(a) == set(b)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-7)


def test_a_list_of_per_sample_dicts_is_a_dataset():
    """It used to be taken as a list of batches (IndexError deep inside GPT-2)."""
    model = tiny_gpt2()
    batch = padded_lm_batch(n=6)
    samples = [{k: v[i] for k, v in batch.items()} for i in range(6)]
    config = MASConfig(importance_batch_size=4)
    omega = compute_importance(model, samples, config, show_progress=False)
    assert omega.tasks[0]["num_samples"] == 6
    assert_same(omega, brute_force_omega(model, split_samples(batch)))
    as_lists = [{k: v.tolist() for k, v in s.items()} for s in samples]  # as `datasets` rows are
    assert_same(compute_importance(model, as_lists, config, show_progress=False), omega)


def test_all_padding_samples_are_not_counted():
    """4 real + 4 empty sequences used to give half the Omega of the 4 real ones, silently."""
    model = tiny_gpt2()
    real = padded_lm_batch(n=4)
    empty = {
        "input_ids": torch.zeros(4, 10, dtype=torch.long),
        "attention_mask": torch.zeros(4, 10, dtype=torch.long),
    }
    mixed = {k: torch.cat([real[k], empty[k]]) for k in real}
    reference = compute_importance(model, [real], show_progress=False)
    with pytest.warns(UserWarning, match="4 samples are all padding .* do not count in N"):
        omega = compute_importance(model, [mixed], show_progress=False)
    assert omega.tasks[0]["num_samples"] == 4
    assert_same(omega, reference)
    with pytest.warns(UserWarning, match="all padding"), pytest.raises(ValueError, match="no samples"):
        compute_importance(model, [empty], show_progress=False)
