"""ACC / BWT / FWT / forgetting (SPP paper Eq. 6-8) against hand-computed values, and the report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from masllm.continual.metrics import acc, bwt, diagonal, forgetting_per_task, fwt, summarize
from masllm.continual.report import RunResult, build_report, format_report, layer_type, write_report

# Accuracy (higher is better), 3 tasks: R[i][j] after training task i, evaluated on task j.
R_ACC = [
    [0.9, 0.1, 0.2],
    [0.7, 0.8, 0.3],
    [0.6, 0.5, 0.95],
]


def test_hand_computed_accuracy_matrix():
    assert acc(R_ACC) == pytest.approx((0.6 + 0.5 + 0.95) / 3)  # Eq. 6
    assert bwt(R_ACC) == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)  # Eq. 8 = -0.3
    assert fwt(R_ACC, [0.85, 0.9, 0.9]) == pytest.approx(((0.9 - 0.85) + (0.8 - 0.9)) / 2)  # Eq. 7
    assert forgetting_per_task(R_ACC, higher_is_better=True) == pytest.approx([0.3, 0.3])
    assert diagonal(R_ACC) == [0.9, 0.8, 0.95]


def test_perplexity_forgetting_is_the_increase():
    R = [[10.0, 50.0], [14.0, 12.0]]
    s = summarize(R, higher_is_better=False)
    assert s.acc == pytest.approx(13.0)
    assert s.bwt == pytest.approx(4.0)
    assert s.forgetting == pytest.approx(4.0)  # perplexity on task 0 rose from 10 to 14
    assert s.fwt is None


def test_single_task_has_no_transfer():
    s = summarize([[3.0]], higher_is_better=False, reference=[2.0])
    assert (s.acc, s.bwt, s.fwt, s.forgetting, s.forgetting_per_task) == (3.0, 0.0, 0.0, 0.0, [])


@pytest.mark.parametrize(
    "R, message",
    [([], "empty"), ([[1.0, 2.0]], "square"), ([[1.0, math.nan], [1.0, 2.0]], "finite")],
)
def test_bad_matrices_raise(R, message):
    with pytest.raises(ValueError, match=message):
        acc(R)


def test_reference_length_checked():
    with pytest.raises(ValueError, match="reference"):
        fwt(R_ACC, [1.0])


def _rows(R):
    tasks = ["a", "b"]
    return [{t: {"perplexity": R[i][j]} for j, t in enumerate(tasks)} for i in range(2)]


def test_report_compares_with_finetune(tmp_path):
    runs = [
        RunResult("finetune", "finetune", None, _rows([[10.0, 50.0], [14.0, 12.0]])),
        RunResult("mas", "mas", 0.5, _rows([[10.0, 50.0], [11.0, 12.6]])),
    ]
    report = build_report(runs, ["a", "b"], {"perplexity": False}, "perplexity")
    c = report["comparison"]["mas"]
    assert c["forgetting"] == pytest.approx(1.0) and c["baseline_forgetting"] == pytest.approx(4.0)
    assert c["forgetting_reduction"] == pytest.approx(0.75)
    assert c["new_task_relative_change"] == pytest.approx(0.05)  # 12.6 vs 12 on task b
    assert report["runs"]["mas"]["summary"]["perplexity"]["fwt"] == pytest.approx(
        0.0
    )  # vs finetune's diagonal
    text = format_report(report)
    assert "mas forgot 75% less than finetune" in text and "+5.0%" in text

    omega = {"transformer.h.0.attn.c_attn.weight": torch.rand(4, 4) + 0.1, "lm_head.weight": torch.rand(3)}
    written = write_report(report, tmp_path, {"mas": omega})
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    for name in ("forgetting_perplexity.png", "curves_perplexity.png", "omega_hist_mas.png"):
        assert (tmp_path / name).stat().st_size > 1000 and tmp_path / name in written


@pytest.mark.parametrize(
    "name, kind",
    [
        ("transformer.wte.weight", "embedding"),
        ("transformer.h.1.ln_1.weight", "norm"),
        ("model.layers.0.input_layernorm.weight", "norm"),
        ("transformer.h.0.attn.c_proj.weight", "attention"),
        ("model.layers.0.self_attn.q_proj.weight", "attention"),
        ("transformer.h.0.mlp.c_fc.bias", "mlp"),
        ("lm_head.weight", "head"),
        ("scale", "other"),
    ],
)
def test_layer_types(name, kind):
    assert layer_type(name) == kind
