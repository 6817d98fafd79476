"""`run_manifest.json`: what a recipe run's results were computed with, so that a rerun never mixes them.

The recipe resumes by reading back finished tasks from `output_dir`; that is right only when they were
computed with the same configuration. So `output_dir/run_manifest.json` records the resolved
configuration (every argument of every section, the number of processes), a hash of the part that
shapes results, the runs, and the masllm / torch / transformers versions. A rerun into the same
`output_dir` then:

- with the same result-shaping configuration: resumes (finished tasks are reused, as before);
- with a different one: refuses before any work, naming each differing key with both values; the way
  out is `--overwrite_output_dir true` (the runs' folders and the report are deleted and everything is
  computed afresh) or another `--output_dir`.

Keys that do not change results (`NEUTRAL`, left out of the hash): where outputs go and how they are
reported (`output_dir`, `cache_dir`: the data cache is keyed by content, `plots`, `overwrite_output_dir`),
logging and progress display, how often checkpoints are saved (a resumed task equals an uninterrupted
one), Hub uploads, data-loader worker mechanics, and which runs are listed (`method`, `compare`: each
run has its own folder, and its own settings are in the hash). Versions are recorded, not compared: a
different version only warns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .._version import __version__
from ..omega.io import atomic_write_text

MANIFEST = "run_manifest.json"
NEUTRAL = frozenset(
    {
        "output_dir", "overwrite_output_dir", "cache_dir", "plots",  # where results go, how they are shown
        "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter", "log_level",
        "log_level_replica", "log_on_each_node", "report_to", "run_name", "project", "disable_tqdm",
        "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id", "skip_memory_metrics",
        "save_strategy", "save_steps", "save_total_limit", "save_on_each_node", "save_only_model",
        "resume_from_checkpoint", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token",
        "hub_private_repo", "hub_always_push", "hub_revision", "dataloader_num_workers",
        "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context", "ddp_timeout", "local_rank", "method", "compare",
    }
)  # fmt: skip
REPORT_FILES = ("report.json", "report.md", "forgetting_*.png", "curves_*.png", "omega_hist_*.png")
logger = logging.getLogger(__name__)


def resolved_config(model_args: Any, data_args: Any, cl_args: Any, training_args: Any) -> dict[str, Any]:
    """Every argument of the run, by section, and the number of processes (the global batch)."""
    return {
        "model": dataclasses.asdict(model_args),
        "data": dataclasses.asdict(data_args),
        "continual": dataclasses.asdict(cl_args),
        "training": training_args.to_dict(),
        "processes": training_args.world_size,
    }


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """`{"data.domains[0].source": ...}`: one entry per leaf, so that differences name their key."""
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return {path: value}
    out: dict[str, Any] = {}
    for key, v in items:
        out.update(flatten(v, key))
    return out or {path: value}


def result_shaping(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened keys that change results: every section's keys but the `NEUTRAL` ones."""
    out = {}
    for section, values in config.items():
        if isinstance(values, dict):
            values = {k: v for k, v in values.items() if k not in NEUTRAL}
        out.update(flatten(json.loads(json.dumps(values, default=str)), section))
    return out


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(result_shaping(config), sort_keys=True).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"masllm": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = result_shaping(old), result_shaping(new)
    return [
        f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def check_output_dir(output_dir: Path, config: dict[str, Any], runs: list[str], overwrite: bool) -> str:
    """Compare with the manifest already in `output_dir` (every rank may call this: it only reads).
    Returns what to do: "new", "resume" or "overwrite"; raises ValueError on a conflicting config."""
    path = output_dir / MANIFEST
    if not path.is_file():
        used = [r for r in runs if (output_dir / r).is_dir()]
        if used and not overwrite:
            logger.warning(
                "%s has results of %s but no %s (an older masllm?): finished tasks are reused as they are",
                output_dir,
                used,
                MANIFEST,
            )
        return "overwrite" if used and overwrite else "new"
    old = json.loads(path.read_text())
    if overwrite:
        return "overwrite"
    changed = differences(old["config"], config)
    if changed:
        listing = "\n  ".join(changed[:20]) + (
            f"\n  ... ({len(changed) - 20} more)" if len(changed) > 20 else ""
        )
        raise ValueError(
            f"{output_dir} holds results of another configuration ({path}); these keys differ:\n  {listing}\n"
            "Reusing them would report the old results under the new settings. Rerun with "
            "--overwrite_output_dir true to delete them and start afresh, or give another --output_dir."
        )
    if old.get("versions") != versions():
        logger.warning(
            "%s was started with %s, this run uses %s", output_dir, old.get("versions"), versions()
        )
    return "resume"


def prepare_output_dir(output_dir: Path, config: dict[str, Any], runs: list[str], action: str) -> None:
    """On the main process: delete the old results when overwriting, then write the manifest."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / MANIFEST
    old = json.loads(path.read_text()) if path.is_file() else {}
    if action == "overwrite":
        for name in {*old.get("runs", []), *runs}:
            shutil.rmtree(output_dir / name, ignore_errors=True)
        for pattern in REPORT_FILES:
            for p in output_dir.glob(pattern):
                p.unlink()
        old = {}
    manifest = {
        "config": config,
        "hash": config_hash(config),
        "neutral_keys": sorted(NEUTRAL),
        "runs": sorted({*old.get("runs", []), *runs}),
        "versions": old.get("versions", versions()),
    }
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
