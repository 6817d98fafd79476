"""Omega on disk: exact roundtrip, HF-style shards, anchors-in-model, bad input refused with nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_gpt2, tiny_mlp

from masllm import MASConfig, Omega, compute_importance
from masllm.omega.io import CONFIG_NAME


def omega_for(model, seed=0):
    torch.manual_seed(seed)
    return Omega(config=MASConfig(reg_lambda=2.0, merge="mean")).merge(
        compute_importance(model, [torch.randn(4, 6)], task_name="a", show_progress=False)
    )


def assert_same(a: Omega, b: Omega):
    assert set(a) == set(b) and set(a.anchors) == set(b.anchors)
    for n in a:
        assert torch.equal(a[n], b[n]) and torch.equal(a.anchors[n], b.anchors[n])
    assert a.tasks == b.tasks and a.config == b.config and a.merge_state == b.merge_state


def test_roundtrip_is_exact_with_anchors_file(tmp_path):
    model = tiny_mlp()
    omega = omega_for(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # weights now differ from theta*: anchors must be written
    omega.save_pretrained(tmp_path, model=model)
    assert (tmp_path / "mas_anchors.safetensors").is_file()
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["anchors"] == "file"
    assert_same(omega, Omega.from_pretrained(tmp_path))


def test_anchors_taken_from_model_when_equal(tmp_path):
    model = tiny_mlp()
    omega = omega_for(model)
    omega.save_pretrained(tmp_path, model=model)
    assert not (tmp_path / "mas_anchors.safetensors").exists()
    with pytest.raises(ValueError, match="pass model="):
        Omega.from_pretrained(tmp_path)
    assert_same(omega, Omega.from_pretrained(tmp_path, model=model))


def test_sharded_files_with_index(tmp_path):
    model = tiny_gpt2()
    omega = Omega().merge(
        compute_importance(model, [{"input_ids": torch.randint(0, 50, (2, 8))}], show_progress=False)
    )
    omega.save_pretrained(tmp_path, max_shard_size=2000)
    index = json.loads((tmp_path / "mas_omega.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert_same(omega, Omega.from_pretrained(tmp_path, model=model))


def _bad(kind: str, model) -> Omega:
    omega = omega_for(model)
    name = next(iter(omega))
    if kind == "nan":
        omega.importance[name][0] = float("nan")
    elif kind == "inf":
        omega.anchors[name][0] = float("inf")
    elif kind == "negative":
        omega.importance[name][0] = -1.0
    elif kind == "shape":
        omega.importance[name] = torch.zeros(3)
        omega.anchors[name] = torch.zeros(3)
    elif kind == "name":
        omega.importance["ghost.weight"] = torch.zeros(3)
        omega.anchors["ghost.weight"] = torch.zeros(3)
    return omega


def test_resaving_in_the_other_layout_leaves_no_stale_files(tmp_path):
    """Single file -> shards -> single file in one directory: each load reads the latest save."""
    model = tiny_gpt2()
    first = omega_for(tiny_mlp())
    first.save_pretrained(tmp_path)
    omega = Omega().merge(
        compute_importance(model, [{"input_ids": torch.randint(0, 50, (2, 8))}], show_progress=False)
    )
    omega.save_pretrained(tmp_path, max_shard_size=2000)
    assert (
        not (tmp_path / "mas_omega.safetensors").exists()
        and not (tmp_path / "mas_anchors.safetensors").exists()
    )
    assert_same(omega, Omega.from_pretrained(tmp_path, model=model))
    first.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mas_anchors.safetensors", "mas_config.json", "mas_omega.safetensors"
    ]  # fmt: skip
    assert_same(first, Omega.from_pretrained(tmp_path))


@pytest.mark.parametrize(
    "kind,message",
    [
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
        ("negative", "negative"),
        ("shape", "shape"),
        ("name", "lacks"),
    ],
)
def test_bad_omega_is_refused_and_nothing_written(tmp_path, kind, message):
    model = tiny_mlp()
    good = omega_for(model)
    good.save_pretrained(tmp_path, model=model)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=message):
        _bad(kind, model).save_pretrained(tmp_path, model=model)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_loading_checks_names_and_shapes_against_the_model(tmp_path):
    omega_for(tiny_mlp()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="names the model lacks"):
        Omega.from_pretrained(tmp_path, model=tiny_gpt2())


def test_pickle_files_are_refused(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(
        json.dumps({"format_version": 1, "config": {}, "tasks": [], "anchors": "none"})
    )
    torch.save({"w": torch.ones(1)}, tmp_path / "mas_omega.bin")
    with pytest.raises(ValueError, match="pickle"):
        Omega.from_pretrained(tmp_path)


def test_missing_checkpoint_and_future_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an Omega checkpoint"):
        Omega.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        Omega.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "field,value",
    [
        ("reg_lambda", -1.0),
        ("reg_lambda", float("nan")),
        ("norm", "l3"),
        ("abs_mode", "sometimes"),
        ("merge", "max"),
        ("method", "nope"),
        ("importance_batch_size", 0),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        MASConfig(**{field: value})


def test_config_json_roundtrip_and_unknown_field():
    cfg = MASConfig(reg_lambda=0.3, abs_mode="per_batch")
    assert MASConfig.from_dict(json.loads(cfg.to_json_string())) == cfg
    with pytest.raises(ValueError, match="Unknown MASConfig fields"):
        MASConfig.from_dict({"lambda": 1.0})


def test_merge_sum_and_mean_across_tasks():
    model = tiny_mlp()
    a = compute_importance(model, [torch.randn(4, 6)], task_name="a", show_progress=False)
    b = compute_importance(model, [torch.randn(4, 6)], task_name="b", show_progress=False)
    c = compute_importance(model, [torch.randn(4, 6)], task_name="c", show_progress=False)
    total = Omega(config=MASConfig(merge="sum")).merge(a).merge(b).merge(c)
    mean = Omega(config=MASConfig(merge="mean")).merge(a).merge(b).merge(c)
    for n in a:
        torch.testing.assert_close(total[n], a[n] + b[n] + c[n])
        torch.testing.assert_close(mean[n], (a[n] + b[n] + c[n]) / 3)
    assert [t["name"] for t in total.tasks] == ["a", "b", "c"]
    assert sum(t.numel() for t in total.importance.values()) == sum(p.numel() for p in model.parameters())
