"""Omega and the Hub: loading by repo id from a Hub cache laid out as huggingface_hub writes it
(offline), the upload's contents, and the model card section (also through MASTrainer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import padded_lm_batch, tiny_gpt2, tiny_mlp
from huggingface_hub import ModelCard
from huggingface_hub.errors import LocalEntryNotFoundError
from test_checkpoint import assert_same, omega_for
from transformers import TrainingArguments

from masllm import MASConfig, MASTrainer, Omega, compute_importance
from masllm.omega import hub

REPO = "someone/tiny-omega"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(tmp_path, omega: Omega):
    """A cache in huggingface_hub's layout: models--<org>--<name>/{refs/main, snapshots/<commit>/}."""
    cache = tmp_path / "cache"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    omega.save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def test_from_pretrained_by_repo_id_reads_the_hub_cache(tmp_path):
    omega = omega_for(tiny_mlp())
    cache = hub_cache(tmp_path, omega)
    assert_same(omega, Omega.from_pretrained(REPO, cache_dir=cache, local_files_only=True))


def test_from_pretrained_unknown_repo_offline_and_file_path_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="Hub repo 'someone/absent' could not be fetched") as caught:
        Omega.from_pretrained("someone/absent", cache_dir=tmp_path, local_files_only=True)
    assert isinstance(caught.value.__cause__, LocalEntryNotFoundError)
    (tmp_path / "mas_config.json").write_text("{}")
    with pytest.raises(NotADirectoryError, match="directory"):
        Omega.from_pretrained(tmp_path / "mas_config.json")


class RecordingApi:
    """Stands in for HfApi (no network here): records the calls and what the folder held."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        self.calls.append(("upload_folder", repo_id, files, Omega.from_pretrained(folder_path)))
        return "commit-info"


def test_push_to_hub_uploads_the_saved_files(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    RecordingApi.calls = []
    model = tiny_mlp()
    omega = omega_for(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # theta* != weights: the anchors travel with Omega
    assert omega.push_to_hub(REPO, private=True) == "commit-info"
    (_, repo, kwargs), (_, repo2, files, uploaded) = RecordingApi.calls
    assert repo == repo2 == REPO and kwargs == {"private": True, "exist_ok": True}
    assert files == ["mas_anchors.safetensors", "mas_config.json", "mas_omega.safetensors"]
    assert_same(omega, uploaded)


def test_model_card_section_is_added_once_and_keeps_the_card(tmp_path):
    ModelCard("---\ntags:\n- mine\n---\n# My model\n\nSome text.\n").save(tmp_path / "README.md")
    omega = omega_for(tiny_mlp())
    hub.update_model_card(tmp_path, omega)
    hub.update_model_card(tmp_path, omega)  # idempotent: replaced, not appended twice
    card = ModelCard.load(tmp_path / "README.md")
    assert card.text.count(hub.CARD_START) == 1 and "Some text." in card.text
    assert "| 0 | a | 4 |" in card.text and "lambda = 2.0" in card.text
    assert card.data.tags == ["mine", *hub.TAGS]


def test_trainer_model_card_describes_omega(tmp_path):
    model, batch = tiny_gpt2(), padded_lm_batch(n=4)
    omega = Omega(config=MASConfig(reg_lambda=1.0)).merge(
        compute_importance(model, [batch], task_name="domain-1", show_progress=False)
    )
    data = [
        {"input_ids": x, "attention_mask": m, "labels": x}
        for x, m in zip(batch["input_ids"], batch["attention_mask"])
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True, disable_tqdm=True
    )
    trainer = MASTrainer(model, args, train_dataset=data, omega=omega)
    trainer.train()
    trainer.create_model_card(model_name="tiny")
    card = ModelCard.load(tmp_path / "README.md")
    assert "| 0 | domain-1 | 4 |" in card.text and set(hub.TAGS) <= set(card.data.tags)
