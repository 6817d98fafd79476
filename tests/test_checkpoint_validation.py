"""Everything a checkpoint holds is checked before use, with errors naming the file and the key:
tensor dtypes (issue 13, case 4), index entries confined to the directory (case 7), the schema of
mas_config.json and Omega / theta* shapes without a model (case 8)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_mlp
from safetensors.torch import save_file

from masllm import MASConfig, Omega, compute_importance
from masllm.distributed import Shard
from masllm.omega.io import CONFIG_NAME, save_tensors
from masllm.omega.sharded import load_omega_shards


def good_omega(model=None) -> Omega:
    torch.manual_seed(0)
    model = model or tiny_mlp()
    return Omega().merge(compute_importance(model, [torch.randn(4, 6)], show_progress=False))


def write_by_hand(directory, importance, anchors=None, meta=None) -> None:
    """A checkpoint as an older masllm (or another tool) wrote it: no list of files, no save ids."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(importance, directory / "mas_omega.safetensors")
    if anchors is not None:
        save_file(anchors, directory / "mas_anchors.safetensors")
    content = {"format_version": 1, "config": {}, "tasks": [], "anchors": "file" if anchors else "none"}
    (directory / CONFIG_NAME).write_text(json.dumps({**content, **(meta or {})}))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float16])
def test_non_float_omega_is_refused_on_load_and_on_save(tmp_path, dtype):
    """Case 4: an int64 Omega would truncate every merge (1 + 0.5 -> 1) and penalty."""
    write_by_hand(tmp_path / "bad", {"w": torch.ones(3, dtype=dtype)})
    with pytest.raises(ValueError, match=rf"bad: Omega\['w'\] has dtype {dtype}"):
        Omega.from_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match=rf"bad: Omega\['w'\] has dtype {dtype}"):
        load_omega_shards(tmp_path / "bad", {"w": Shard(0, 3, (3,))})
    omega = good_omega()
    omega.save_pretrained(tmp_path / "good")
    before = {p.name: p.read_bytes() for p in (tmp_path / "good").iterdir()}
    name = next(iter(omega))
    omega.importance[name] = omega.importance[name].to(dtype)
    with pytest.raises(ValueError, match="dtype"):
        omega.save_pretrained(tmp_path / "good")
    assert {p.name: p.read_bytes() for p in (tmp_path / "good").iterdir()} == before


@pytest.mark.parametrize("entry", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/x.safetensors"])
def test_index_entries_must_stay_in_the_checkpoint(tmp_path, entry):
    """Case 7: a weight_map entry `../x`, an absolute path or a subfolder is refused, not read."""
    (tmp_path / "ckpt").mkdir()
    save_tensors(
        {"a": torch.ones(300), "b": torch.ones(300)}, tmp_path / "ckpt", "mas_omega", max_shard_size=1000
    )
    save_file({"b": torch.ones(300)}, tmp_path / "outside.safetensors")
    index = tmp_path / "ckpt" / "mas_omega.safetensors.index.json"
    content = json.loads(index.read_text())
    content["weight_map"]["b"] = entry
    index.write_text(json.dumps(content))
    meta = {"format_version": 1, "config": {}, "tasks": [], "anchors": "none"}
    (tmp_path / "ckpt" / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"weight_map'\['b'\]: entry .* is not a file name inside"):
        Omega.from_pretrained(tmp_path / "ckpt")
    shards = {n: Shard(0, 300, (300,)) for n in "ab"}
    with pytest.raises(ValueError, match="is not a file name inside"):
        load_omega_shards(tmp_path / "ckpt", shards)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"anchors": "elsewhere"}, r"'anchors' must be one of \['model', 'file', 'none'\], got 'elsewhere'"),
        ({"anchors": ["file"]}, "'anchors' must be a string"),
        ({"format_version": "2"}, "'format_version' must be an integer, got '2'"),
        ({"tasks": {"name": "a"}}, "'tasks' must be a list"),
        ({"tasks": ["a"]}, r"'tasks'\[0\] must be an object"),
        ({"merge_state": 3}, "'merge_state' must be an object"),
        ({"config": {"reg_lambda": -5}}, "'config': MASConfig.reg_lambda must be a finite number >= 0"),
        ({"config": {"half_penalty": "no"}}, "'config': MASConfig.half_penalty must be bool"),
        ({"anchor": "file"}, "unknown key 'anchor' \\(did you mean 'anchors'\\?\\)"),
    ],
)
def test_config_json_schema(tmp_path, change, message):
    """Case 8: each bad value gives a ValueError naming the file and the key (not KeyError,
    AttributeError or TypeError at step 1)."""
    write_by_hand(tmp_path, {"w": torch.ones(3)}, {"w": torch.ones(3)}, change)
    with pytest.raises(ValueError, match=f"{CONFIG_NAME}: {message}"):
        Omega.from_pretrained(tmp_path)


@pytest.mark.parametrize("missing", ["anchors", "tasks", "config", "format_version"])
def test_config_json_missing_key(tmp_path, missing):
    write_by_hand(tmp_path, {"w": torch.ones(3)})
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    del meta[missing]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{CONFIG_NAME}: missing key '{missing}'"):
        Omega.from_pretrained(tmp_path)


def test_config_json_not_an_object_or_not_json(tmp_path):
    write_by_hand(tmp_path, {"w": torch.ones(3)})
    (tmp_path / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        Omega.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{oops")
    with pytest.raises(ValueError, match="is not valid JSON"):
        Omega.from_pretrained(tmp_path)


def test_corrupt_safetensors_names_the_file(tmp_path):
    write_by_hand(tmp_path, {"w": torch.ones(3)})
    (tmp_path / "mas_omega.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="mas_omega.safetensors is not a readable safetensors file"):
        Omega.from_pretrained(tmp_path)


def test_omega_and_anchor_shapes_are_compared_without_a_model(tmp_path):
    """Case 8: without a model, a theta* of another shape is refused on load, and on save before a
    good checkpoint is overwritten."""
    write_by_hand(tmp_path / "bad", {"w": torch.ones(3)}, {"w": torch.ones(4)})
    with pytest.raises(ValueError, match=r"theta\*\['w'\] has shape \(4,\), Omega \(3,\)"):
        Omega.from_pretrained(tmp_path / "bad")
    omega = good_omega()
    omega.save_pretrained(tmp_path / "good")
    before = {p.name: p.read_bytes() for p in (tmp_path / "good").iterdir()}
    name = next(iter(omega))
    omega.anchors[name] = torch.zeros(7)
    with pytest.raises(ValueError, match="has shape"):
        omega.save_pretrained(tmp_path / "good")
    assert {p.name: p.read_bytes() for p in (tmp_path / "good").iterdir()} == before


def test_trainer_refuses_a_bad_config_json_before_training(tmp_path):
    """Case 8: `"anchors": "elsewhere"` used to load 0 anchors and fail with KeyError at step 1."""
    from transformers import TrainingArguments

    from masllm import MASTrainer

    model = tiny_mlp()
    good_omega(model).save_pretrained(tmp_path / "omega")
    meta = json.loads((tmp_path / "omega" / CONFIG_NAME).read_text())
    (tmp_path / "omega" / CONFIG_NAME).write_text(json.dumps({**meta, "anchors": "elsewhere"}))
    args = TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to=[], max_steps=1)
    with pytest.raises(ValueError, match="'anchors' must be one of"):
        MASTrainer(model=model, args=args, omega=tmp_path / "omega", mas_config=MASConfig())
