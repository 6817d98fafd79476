"""run_manifest.json (issue 13, case 2): a rerun into a used output_dir with a configuration that
changes results is refused, naming the keys; the same configuration resumes; --overwrite_output_dir
starts afresh. It used to read the old results back and report them under the new lambda."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import masllm.continual as recipe
from masllm.continual.manifest import MANIFEST, NEUTRAL, differences

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "recipes" / "configs" / "tiny.yaml")


def _argv(out: Path, *extra: str) -> list[str]:
    cache = ROOT / ".pytest_cache" / "masllm-recipe-data"
    return ["--config", TINY, "--output_dir", str(out), "--cache_dir", str(cache), "--method", "mas", *extra]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest")
    return out, recipe.main(_argv(out))


def test_the_manifest_records_config_hash_and_versions(first):
    out, _ = first
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["config"]["continual"]["reg_lambda"] == 1.0 and manifest["config"]["processes"] == 1
    assert manifest["config"]["model"]["model_config"]["n_layer"] == 2 and len(manifest["hash"]) == 16
    assert set(manifest["versions"]) == {"masllm", "torch", "transformers"} and manifest["runs"] == ["mas"]


@pytest.mark.parametrize(
    "extra,named",
    [
        (["--reg_lambda", "0.1"], "continual.reg_lambda: 1.0 -> 0.1"),
        (["--model_config", "{model_type: gpt2, n_embd: 32, n_layer: 3, n_head: 2, n_positions: 32}"],
         "model.model_config.n_layer: 2 -> 3"),
        (["--learning_rate", "0.01"], "training.learning_rate: 0.003 -> 0.01"),
    ],
)  # fmt: skip
def test_a_rerun_with_another_config_is_refused_naming_the_keys(first, extra, named):
    out, _ = first
    rows = (out / "mas" / "1-code" / "eval_row.json").read_text()
    with pytest.raises(ValueError, match="these keys differ") as caught:
        recipe.main(_argv(out, *extra))
    assert named in str(caught.value) and "--overwrite_output_dir" in str(caught.value)
    assert (out / "mas" / "1-code" / "eval_row.json").read_text() == rows  # nothing touched


def test_the_same_config_resumes_whatever_the_neutral_keys(first):
    out, report = first
    before = (out / "mas" / "1-code" / "model.safetensors").stat().st_mtime_ns
    again = recipe.main(_argv(out, "--logging_steps", "1", "--save_steps", "2", "--plots", "false"))
    assert again["runs"] == report["runs"]
    assert (out / "mas" / "1-code" / "model.safetensors").stat().st_mtime_ns == before  # not trained again


def test_overwrite_output_dir_starts_afresh(first, tmp_path):
    out, report = first
    fresh = recipe.main(_argv(tmp_path, "--reg_lambda", "0.1"))  # the reference: a new directory
    overwritten = recipe.main(_argv(out, "--reg_lambda", "0.1", "--overwrite_output_dir", "true"))
    assert overwritten["runs"] == fresh["runs"] != report["runs"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["config"]["continual"]["reg_lambda"] == 0.1


def test_neutral_keys_do_not_count():
    base = {"training": {"learning_rate": 0.1, "logging_steps": 5, "output_dir": "a"}, "processes": 1}
    changed = {"training": {"learning_rate": 0.1, "logging_steps": 9, "output_dir": "b"}, "processes": 2}
    assert differences(base, changed) == ["processes: 1 -> 2"]
    assert {"logging_steps", "output_dir", "save_steps", "report_to"} <= NEUTRAL and "seed" not in NEUTRAL
