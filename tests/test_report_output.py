"""The report's summary lines use their own metric, and its files have the usual mode (issue 13, case 12)."""

from __future__ import annotations

import os

import pytest

from masllm.continual.report import RunResult, build_report, format_report, write_report


def _rows(ppl, acc):
    return [
        {t: {"perplexity": ppl[i][j], "accuracy": acc[i][j]} for j, t in enumerate("ab")} for i in range(2)
    ]


@pytest.fixture
def report():
    runs = [
        RunResult(
            "finetune", "finetune", None, _rows([[10.0, 50.0], [14.0, 12.0]], [[0.5, 0.1], [0.3, 0.6]])
        ),
        RunResult("mas", "mas", 0.5, _rows([[10.0, 50.0], [11.0, 12.6]], [[0.5, 0.1], [0.45, 0.55]])),
    ]
    return build_report(runs, ["a", "b"], {"perplexity": False, "accuracy": True}, "perplexity")


def test_each_section_sentence_uses_its_metric(report, tmp_path):
    """The accuracy section used to repeat the perplexity figures ("mean accuracy change 116.4 vs 420.4")."""
    assert "(mean perplexity change on earlier tasks 1 vs 4)" in format_report(report, "perplexity")
    accuracy = format_report(report, "accuracy")
    assert "(mean accuracy change on earlier tasks 0.05 vs 0.2)" in accuracy  # 0.5-0.45, 0.5-0.3
    assert "mas forgot 75% less than finetune" in accuracy and "-8.3%" in accuracy  # 0.55 vs 0.6 on b
    write_report(report, tmp_path, plots=False)
    assert "mean accuracy change on earlier tasks 0.05 vs 0.2" in (tmp_path / "report.md").read_text()


def test_report_files_have_the_usual_mode(report, tmp_path):
    """They were created 0600 (the temporary file's mode) while every other file is 0644."""
    umask = os.umask(0)
    os.umask(umask)
    for path in write_report(report, tmp_path, plots=False):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
