"""What a recipe run prints (issue 13, case 12): one line per method / task phase, the training and
importance progress bars, none of the third-party noise; `--log_level info` shows everything."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import transformers

from masllm.continual import command

ROOT = Path(__file__).resolve().parents[1]
NOISE = (
    "Writing model shards",  # transformers, every save
    "Loading weights",  # transformers, every load
    "Generating train split",  # datasets, local files
    "Saving the dataset",  # datasets, the packed cache
    "`loss_type=None`",  # transformers: the default loss is the right one
    "Repo card metadata block was not found",  # huggingface_hub, twice per task
    "missing keys",  # the tied lm_head.weight of the shared task 0
    "PAD/BOS/EOS",  # transformers aligning the tokenizer's tokens
)


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> str:
    """Two local folders of text files (the datasets path that printed progress bars per file)."""
    root = tmp_path_factory.mktemp("local_domains")
    from pydoc_data.topics import topics

    for name, keys in (("docs", sorted(topics)[:40]), ("code", sorted(topics)[40:80])):
        (root / name).mkdir()
        for i, k in enumerate(keys):
            (root / name / f"{i}.txt").write_text(topics[k])
    entries = [{"name": n, "source": str(root / n), "max_train_blocks": 64, "max_eval_blocks": 16,
                "max_importance_blocks": 16} for n in ("docs", "code")]  # fmt: skip
    return json.dumps(entries)


def run(tmp_path: Path, capfd, domains: str, *extra: str) -> str:
    argv = ["--config", str(ROOT / "recipes/configs/tiny.yaml"), "--output_dir", str(tmp_path / "out"),
            "--cache_dir", str(tmp_path / "cache"), "--domains", domains, "--disable_tqdm", "false", *extra]  # fmt: skip
    with warnings.catch_warnings():
        assert command(argv) == 0
    captured = capfd.readouterr()
    return captured.out + captured.err


def test_one_line_per_phase_and_no_noise(tmp_path, capfd, domains):
    text = run(tmp_path, capfd, domains)
    lines = text.splitlines()
    for method in ("finetune", "mas"):
        for k, task in enumerate(("docs", "code")):
            prefix = f"masllm: [{method}] task {k + 1}/2 '{task}': "
            phases = ["train", "evaluate on 2 tasks", "save to"] + (
                ["importance (mas) on 16 samples"] if method == "mas" else []
            )
            for phase in phases:
                assert sum(line.startswith(prefix + phase) for line in lines) == 1, (
                    prefix + phase,
                    text[-3000:],
                )
    assert "masllm: [mas] task 1/2 'docs': train (resuming" in text  # the shared task 0
    for noise in NOISE:
        assert noise not in text, noise
    assert "6/6" in text and "importance (mas, code)" in text  # the long phases keep their bars
    assert "eval_docs_perplexity" not in text  # evaluation metrics are in the report, not printed as dicts


def test_log_level_info_shows_everything(tmp_path, capfd, domains):
    try:
        text = run(tmp_path, capfd, domains, "--log_level", "info", "--method", "finetune")
    finally:
        transformers.utils.logging.set_verbosity_warning()
    assert (
        "Writing model shards" in text and "Generating train split" not in text
    )  # text files: read directly
