"""Omega's files: safetensors + json, PEFT-style, beside the model's own files (plain dicts in and out).

Files (names in one place, below):
- `mas_omega.safetensors`: importance, keyed by the model's parameter names; HF-style shards with
  `mas_omega.safetensors.index.json` when larger than `max_shard_size`.
- `mas_anchors.safetensors` (same sharding): theta*, written only when it differs from the weights
  saved beside it; otherwise `mas_config.json` says `"anchors": "model"`.
- `mas_config.json`: the MASConfig, tasks seen, merge state, format and library version, and the
  list of the save's files (`masllm.omega.commit`: a checkpoint is written as a whole or not at all).

Every file is checked when read: `mas_config.json` against its schema (each error names the file and
the key), index entries must be plain file names inside the checkpoint directory, and a file that
is not readable safetensors is named. Only safetensors and json are ever read: a pickle file is
refused. `masllm.checkpoint` is the old name of this module.
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..registry import did_you_mean

OMEGA_NAME = "mas_omega"
ANCHORS_NAME = "mas_anchors"
CONFIG_NAME = "mas_config.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TMP_PREFIX, TMP_SUFFIX = ".mas-", ".tmp"  # temporaries: found by this pattern and removed by the next save
SAVE_ID = "masllm_save_id"  # in each safetensors header and index: which save wrote the file
ANCHOR_SOURCES = ("model", "file", "none")
JSON_KINDS = {int: "an integer", str: "a string", dict: "an object", list: "a list"}
# mas_config.json: key -> (type, required)
META_SCHEMA: dict[str, tuple[type, bool]] = {
    "format_version": (int, True),
    "masllm_version": (str, False),
    "config": (dict, True),
    "tasks": (list, True),
    "merge_state": (dict, False),
    "anchors": (str, True),
    "save_id": (str, False),
    "files": (dict, False),
}


def new_temporary(directory: Path) -> Path:
    """An empty temporary file in `directory`, with the mode a plain `open()` gives (mkstemp's is 0600)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX, suffix=TMP_SUFFIX)
    os.close(fd)
    usual_mode(Path(tmp))
    return Path(tmp)


def usual_mode(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def sync_file(path: Path) -> None:
    """Flush a written file to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary beside `path`, then rename: a reader sees the old or the new file."""
    tmp = new_temporary(path.parent)
    try:
        tmp.write_text(text)
        sync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, save_id: str | None = None) -> None:
    metadata = {"format": "pt", **({SAVE_ID: save_id} if save_id else {})}
    save_file(dict(tensors), str(path), metadata=metadata)  # a new file: mode 0600 again
    usual_mode(path)
    sync_file(path)


def plan_files(sizes: Mapping[str, int], name: str, max_shard_size: int | str = "5GB") -> StateDictSplit:
    """Which tensor goes to which file (HF's rule), from byte sizes alone: a sharded Omega never holds
    its full tensors, yet must be written in the same files as a single process writes."""
    return split_state_dict_into_shards_factory(
        dict(sizes),
        get_storage_size=lambda nbytes: nbytes,
        filename_pattern=name + "{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )


def index_content(split: StateDictSplit, save_id: str | None = None) -> str:
    metadata = {**split.metadata, **({SAVE_ID: save_id} if save_id else {})}
    return json.dumps(
        {"metadata": metadata, "weight_map": split.tensor_to_filename}, indent=2, sort_keys=True
    )


def layout_names(name: str, split: StateDictSplit) -> list[str]:
    """The files of one layout: its shards (or single file), and the index when sharded."""
    return [*split.filename_to_tensors, *([f"{name}.safetensors.index.json"] if split.is_sharded else [])]


def remove_files(directory: Path, name: str, keep: Collection[str] = ()) -> None:
    """Delete `name`'s single file, shards and index in `directory`, except those in `keep`."""
    single, index = directory / f"{name}.safetensors", directory / f"{name}.safetensors.index.json"
    for path in [*directory.glob(f"{name}-*-of-*.safetensors"), single, index]:
        if path.name not in keep and path.is_file():
            path.unlink()


def save_tensors(
    tensors: Mapping[str, torch.Tensor], directory: Path, name: str, max_shard_size: int | str = "5GB"
) -> list[str]:
    """Write `name.safetensors`, or HF-style shards + index, each file atomically; return the file names.
    (Omega's own files go through `masllm.omega.commit`, which makes the whole save atomic.)"""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    split = plan_files({k: v.numel() * v.element_size() for k, v in tensors.items()}, name, max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        tmp = new_temporary(directory)
        try:
            write_safetensors({k: tensors[k] for k in keys}, tmp)
            os.replace(tmp, directory / filename)
        finally:
            tmp.unlink(missing_ok=True)
    if split.is_sharded:
        atomic_write_text(directory / f"{name}.safetensors.index.json", index_content(split))
    remove_files(directory, name, keep=layout_names(name, split))
    return list(split.filename_to_tensors)


def plain_name(directory: Path, entry: Any, where: str) -> Path:
    """`directory / entry` for a bare file name; anything else (a path, `..`, absolute) is refused."""
    if not isinstance(entry, str) or not entry or Path(entry).name != entry or entry in (".", ".."):
        raise ValueError(
            f"{where}: entry {entry!r} is not a file name inside {directory}; refusing to read it"
        )
    return directory / entry


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None


def read_index(directory: Path, name: str) -> dict[str, Path]:
    """Tensor name -> shard file, from `name.safetensors.index.json` (entries confined to `directory`)."""
    path = directory / f"{name}.safetensors.index.json"
    index = read_json(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{path}: 'weight_map' must be a non-empty mapping of tensor name -> file")
    return {k: plain_name(directory, v, f"{path} 'weight_map'[{k!r}]") for k, v in weight_map.items()}


def reads_index(directory: Path, name: str, files: Collection[str] | None = None) -> bool:
    """Which layout to read: the one `files` (the save's list) names, or what is on disk (older saves)."""
    single, index = f"{name}.safetensors", f"{name}.safetensors.index.json"
    if files is not None:
        if single not in files and index not in files:
            raise FileNotFoundError(f"{directory / CONFIG_NAME} lists no {single} (or sharded index)")
        return index in files
    if (directory / single).is_file():
        return False
    if (directory / index).is_file():
        return True
    pickles = [p.name for p in directory.glob(f"{name}*") if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ValueError(
            f"{directory} holds {pickles}, a pickle format; masllm loads only safetensors (pickle can run code)"
        )
    raise FileNotFoundError(f"No {single} (or sharded index) in {directory}")


def load_tensors(directory: Path, name: str, files: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """Read `name.safetensors` or its sharded form (the layout `files` lists, if given); refuse pickle."""
    directory = Path(directory)
    if not reads_index(directory, name, files):
        return read_safetensors(directory / f"{name}.safetensors")
    weight_map = read_index(directory, name)
    out: dict[str, torch.Tensor] = {}
    for path in sorted(set(weight_map.values())):
        out.update(read_safetensors(path))
    if set(out) != set(weight_map):
        extra, missing = sorted(set(out) - set(weight_map)), sorted(set(weight_map) - set(out))
        raise ValueError(
            f"{directory}/{name}: the shards and the index disagree (missing {missing[:3]}, extra {extra[:3]})"
        )
    return out


def write_meta_text(
    config: dict[str, Any], tasks: list, merge_state: dict[str, Any], anchors: str, save_id: str, files: dict
) -> str:
    """`mas_config.json`: config, tasks, merge state, where theta* is, the save's files, versions."""
    meta = {
        "format_version": FORMAT_VERSION,
        "masllm_version": __version__,
        "config": config,
        "tasks": tasks,
        "merge_state": merge_state,
        "anchors": anchors,
        "save_id": save_id,
        "files": files,
    }
    return json.dumps(meta, indent=2, sort_keys=True) + "\n"


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"No {path.name} in {path.parent}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def load_meta(directory: Path) -> dict[str, Any]:
    """`mas_config.json`, checked against its schema (every error names the file and the key)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {CONFIG_NAME} in {directory}: not an Omega checkpoint")
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}; this masllm reads <= {FORMAT_VERSION}")
    check_schema(path, meta)
    return meta


def check_schema(path: Path, meta: dict[str, Any]) -> None:
    unknown = sorted(set(meta) - set(META_SCHEMA))
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], list(META_SCHEMA))}")
    for key, (kind, required) in META_SCHEMA.items():
        if key not in meta:
            if required:
                raise ValueError(f"{path}: missing key {key!r}")
            continue
        value = meta[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{path}: {key!r} must be {JSON_KINDS[kind]}, got {value!r}")
    if meta["format_version"] < 1:
        raise ValueError(f"{path}: 'format_version' must be >= 1, got {meta['format_version']}")
    if meta["anchors"] not in ANCHOR_SOURCES:
        raise ValueError(f"{path}: 'anchors' must be one of {list(ANCHOR_SOURCES)}, got {meta['anchors']!r}")
    for i, task in enumerate(meta["tasks"]):
        if not isinstance(task, dict) or not isinstance(task.get("name", ""), str):
            raise ValueError(f"{path}: 'tasks'[{i}] must be an object with a string 'name', got {task!r}")
    for name, size in meta.get("files", {}).items():
        plain_name(path.parent, name, f"{path} 'files'")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"{path}: 'files'[{name!r}] must be a byte count, got {size!r}")
