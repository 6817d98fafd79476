"""Omega's files: safetensors + json, PEFT-style, beside the model's own files (plain dicts in and out).

Files (names in one place, below):
- `mas_omega.safetensors`: importance, keyed by the model's parameter names; HF-style shards with
  `mas_omega.safetensors.index.json` when larger than `max_shard_size`.
- `mas_anchors.safetensors` (same sharding): theta*, written only when it differs from the weights
  saved beside it; otherwise `mas_config.json` says `"anchors": "model"`.
- `mas_config.json`: the MASConfig, tasks seen, merge state, format and library version.

Each file is written to a temporary name and renamed; `masllm.omega.checkpoint` validates before the
first byte is written, so bad input leaves an existing checkpoint untouched. Only safetensors and
json are ever read: a pickle file is refused. `masllm.checkpoint` is the old name of this module.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_state_dict_into_shards_factory
from huggingface_hub.serialization import StateDictSplit
from safetensors.torch import load_file, save_file

from .._version import __version__

OMEGA_NAME = "mas_omega"
ANCHORS_NAME = "mas_anchors"
CONFIG_NAME = "mas_config.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def atomic_write_text(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plan_files(sizes: Mapping[str, int], name: str, max_shard_size: int | str = "5GB") -> StateDictSplit:
    """Which tensor goes to which file (HF's rule), from byte sizes alone: a sharded Omega never holds
    its full tensors, yet must be written in the same files as a single process writes."""
    return split_state_dict_into_shards_factory(
        dict(sizes),
        get_storage_size=lambda nbytes: nbytes,
        filename_pattern=name + "{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )


def finish_files(directory: Path, name: str, split: StateDictSplit) -> None:
    """Write the index of a sharded layout, then delete what an earlier save of `name` left in the
    other layout (a stale single file would otherwise be read in preference to the new shards)."""
    index = directory / f"{name}.safetensors.index.json"
    if split.is_sharded:
        content = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        atomic_write_text(index, json.dumps(content, indent=2, sort_keys=True))
    remove_files(
        directory, name, keep=set(split.filename_to_tensors) | ({index.name} if split.is_sharded else set())
    )


def remove_files(directory: Path, name: str, keep: Collection[str] = ()) -> None:
    """Delete `name`'s single file, shards and index in `directory`, except those in `keep`."""
    single, index = directory / f"{name}.safetensors", directory / f"{name}.safetensors.index.json"
    for path in [*directory.glob(f"{name}-*-of-*.safetensors"), single, index]:
        if path.name not in keep and path.is_file():
            path.unlink()


def save_tensors(
    tensors: Mapping[str, torch.Tensor], directory: Path, name: str, max_shard_size: int | str = "5GB"
) -> list[str]:
    """Write `name.safetensors`, or HF-style shards + `name.safetensors.index.json`; return file names."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    split = plan_files({k: v.numel() * v.element_size() for k, v in tensors.items()}, name, max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        _atomic_save_file({k: tensors[k] for k in keys}, directory / filename)
    finish_files(directory, name, split)
    return list(split.filename_to_tensors)


def load_tensors(directory: Path, name: str) -> dict[str, torch.Tensor]:
    """Read `name.safetensors` or its sharded form; refuse pickle files."""
    single, index = directory / f"{name}.safetensors", directory / f"{name}.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        out: dict[str, torch.Tensor] = {}
        for filename in sorted(set(weight_map.values())):
            out.update(load_file(directory / filename))
        return out
    pickles = [p.name for p in directory.glob(f"{name}*") if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ValueError(
            f"{directory} holds {pickles}, a pickle format; masllm loads only safetensors (pickle can run code)"
        )
    raise FileNotFoundError(f"No {single.name} (or sharded index) in {directory}")


def write_meta(
    directory: Path, config: dict[str, Any], tasks: list, merge_state: dict[str, Any], anchors: str
) -> None:
    """`mas_config.json`: config, tasks, merge state, where theta* is, format and library version."""
    meta = {
        "format_version": FORMAT_VERSION,
        "masllm_version": __version__,
        "config": config,
        "tasks": tasks,
        "merge_state": merge_state,
        "anchors": anchors,
    }
    atomic_write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_meta(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {CONFIG_NAME} in {directory}: not an Omega checkpoint")
    meta = json.loads(path.read_text())
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {meta['format_version']}; this masllm reads <= {FORMAT_VERSION}"
        )
    return meta
