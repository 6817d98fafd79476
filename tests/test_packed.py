"""Eq. 2 on packed (padding-free) batches: a sample is a sequence, also when several share a row.

The reference is Eq. 2 computed one sequence at a time by plain autograd (`brute_force_omega`), and
the same sequences padded into one row each; the packed rows come from transformers'
`DataCollatorWithFlattening` and TRL's padding-free collator, as a fine-tuner's Trainer gets them.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gemma3, tiny_gpt2, tiny_llama, tiny_qwen2
from reference import brute_force_omega
from transformers import DataCollatorWithFlattening

from masllm import EWCConfig, MASConfig, compute_importance
from masllm.importance.segments import first_samples, segments_of

LENGTHS = (5, 3, 7, 1, 4, 6)
MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "qwen2": tiny_qwen2, "gemma3": tiny_gemma3}


def sequences() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, 50, (n,), generator=g).tolist() for n in LENGTHS]


def padded(seqs: list[list[int]]) -> dict[str, torch.Tensor]:
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    return {"input_ids": ids, "attention_mask": mask}


def collators() -> dict:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return {
        "flattening": DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True),
        "trl": DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True),
    }


def packed_batches(collator, seqs: list[list[int]], per_row: int = 3) -> list[dict]:
    return [collator([{"input_ids": s} for s in seqs[i : i + per_row]]) for i in range(0, len(seqs), per_row)]


def alone(seqs: list[list[int]]) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": torch.tensor([s])} for s in seqs]


def max_rel_err(omega, ref) -> float:
    return max(float((omega[n] - ref[n]).abs().max() / ref[n].abs().max()) for n in ref)


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("collator", ["flattening", "trl"])
def test_packed_omega_equals_unpacked_and_padded(arch, collator):
    """Two rows of three packed sequences each: the same Omega, to 1e-5, as the six sequences one at
    a time and as the six padded into rows, and N = 6 (sequences), not 2 (rows)."""
    model, seqs = MODELS[arch](), sequences()
    batches = packed_batches(collators()[collator], seqs)
    assert batches[0]["input_ids"].shape == (1, sum(LENGTHS[:3]))  # really one row of three sequences
    omega = compute_importance(model, batches, MASConfig(), show_progress=False)
    pad = compute_importance(model, [padded(seqs[:3]), padded(seqs[3:])], MASConfig(), show_progress=False)
    assert max_rel_err(omega, brute_force_omega(model, alone(seqs))) < 1e-5
    assert max_rel_err(omega, pad) < 1e-5
    assert omega.tasks == pad.tasks == [{"name": "task", "num_samples": 6, "method": "mas"}]  # no fallback


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_packed_norms_are_per_sequence(norm):
    model, seqs = tiny_gpt2(), sequences()
    batches = packed_batches(collators()["flattening"], seqs)
    omega = compute_importance(model, batches, MASConfig(norm=norm), show_progress=False)
    assert max_rel_err(omega, brute_force_omega(model, alone(seqs), norm=norm)) < 1e-5


def test_empty_and_all_padding_segments_do_not_count():
    model, (a, b, *_) = tiny_gpt2(), sequences()
    empty = {  # cu_seq_lens with an empty entry: two sequences, not three
        "input_ids": torch.tensor([a + b]),
        "position_ids": torch.tensor([[*range(len(a)), *range(len(b))]]),
        "cu_seq_lens_q": torch.tensor([0, len(a), len(a), len(a) + len(b)], dtype=torch.int32),
    }
    omega = compute_importance(model, [empty], MASConfig(), show_progress=False)
    assert omega.tasks[0]["num_samples"] == 2
    assert max_rel_err(omega, brute_force_omega(model, alone([a, b]))) < 1e-5
    padding = {  # a packed row whose second segment is padding only: one sequence
        "input_ids": torch.tensor([a + [0, 0, 0]]),
        "attention_mask": torch.tensor([[1] * len(a) + [0] * 3]),
        "cu_seq_lens_q": torch.tensor([0, len(a), len(a) + 3], dtype=torch.int32),
    }
    omega = compute_importance(model, [padding], MASConfig(), show_progress=False)
    assert omega.tasks[0]["num_samples"] == 1
    assert max_rel_err(omega, brute_force_omega(model, alone([a]))) < 1e-5


def test_segments_of_reads_each_packing_key_and_refuses_disagreement():
    x = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True)(
        [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}]
    )
    for keys in (
        ["position_ids"],
        ["cu_seq_lens_q"],
        ["seq_idx"],
        ["position_ids", "cu_seq_lens_q", "seq_idx"],
    ):
        seg = segments_of({"input_ids": x["input_ids"], **{k: x[k] for k in keys}})
        assert seg.packed and seg.bounds == [(0, 3), (3, 5)], keys
    assert not segments_of({"input_ids": x["input_ids"]}).packed  # nothing says it is packed: one row
    # with an attention mask, restarting position ids alone do not separate sequences (transformers
    # does not either), so the row is one sample
    masked = {
        "input_ids": x["input_ids"],
        "position_ids": x["position_ids"],
        "attention_mask": torch.ones(1, 5),
    }
    assert not segments_of(masked).packed
    bad = {**x, "seq_idx": torch.tensor([[0, 0, 1, 1, 1]])}
    with pytest.raises(ValueError, match="disagree"):
        segments_of(bad)


def test_sample_cap_cuts_a_packed_row_between_sequences():
    model, seqs = tiny_llama(), sequences()
    batches = packed_batches(collators()["trl"], seqs)
    cfg = MASConfig(max_importance_samples=4)  # the whole first row and the first sequence of the second
    omega = compute_importance(model, batches, cfg, show_progress=False)
    assert omega.tasks[0]["num_samples"] == 4
    assert max_rel_err(omega, brute_force_omega(model, alone(seqs[:4]))) < 1e-5
    two_rows = {
        k: torch.cat([v, v]) if k in ("input_ids", "position_ids") else v for k, v in batches[0].items()
    }
    two_rows = {k: v for k, v in two_rows.items() if k in ("input_ids", "position_ids")}
    parts = first_samples(two_rows, segments_of(two_rows), 4)  # a full row, then part of the next
    assert [p["input_ids"].shape for p in parts] == [(1, 15), (1, 5)]


@pytest.mark.parametrize("method", ["ewc", "mas_vector", "lmas", "spp"])
def test_other_estimators_take_sequences_as_samples(method):
    """Each estimator's per-sample transform is per sequence, N counts sequences, and the result is
    that of the same sequences padded (spp samples its labels: only its count is compared)."""
    model, seqs = tiny_gpt2(), sequences()
    cfg = EWCConfig() if method == "ewc" else MASConfig(method=method)
    if method == "mas_vector":  # one backward per output (position x dimension): hidden states, short
        seqs, cfg = [s[:3] for s in seqs[:3]], MASConfig(method=method, output="hidden_states")
    n = len(seqs)
    omega = compute_importance(
        model, packed_batches(collators()["flattening"], seqs), cfg, show_progress=False
    )
    assert omega.tasks == [{"name": "task", "num_samples": n, "method": method}]
    if method != "spp":
        rows = [padded(seqs[i : i + 3]) for i in range(0, n, 3)]
        pad = compute_importance(model, rows, cfg, show_progress=False)
        assert max_rel_err(omega, pad) < 1e-5
