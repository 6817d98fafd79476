"""A sharded Omega (DeepSpeed ZeRO, FSDP2) <-> the ordinary checkpoint format of `masllm.omega.io`.

Saving: every rank takes part; for one parameter at a time the ranks' slices are summed into a full
tensor on rank 0 (each rank puts its slice into zeros: slices do not overlap, so the sum is exact),
and rank 0 streams it into the safetensors file. No rank ever holds more than one full tensor, and
the files are exactly those a single process writes, so they load at any world size. Anchors are
always written (under ZeRO the weights saved beside them are not at hand to compare with).

Loading: each rank reads only the rows of each tensor that cover its slice (`safe_open` slices), so
resharding to any world size or ZeRO stage never materialises the whole Omega either.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open

from ..distributed.comm import barrier, world
from ..distributed.fsdp import local_tensor
from ..distributed.shard import Shard
from .checkpoint import config_from_meta
from .commit import CheckpointWriter, check_files
from .container import Omega
from .io import (
    ANCHORS_NAME,
    OMEGA_NAME,
    SAVE_ID,
    index_content,
    layout_names,
    load_meta,
    plan_files,
    read_index,
    reads_index,
    sync_file,
)

SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
}


def _gather_full(local: torch.Tensor, shard: Shard) -> torch.Tensor | None:
    """The full tensor on rank 0 (None elsewhere), from every rank's slice (FSDP2: its DTensor shard)."""
    local = local_tensor(local)
    full = torch.zeros(shard.full_numel, dtype=torch.float32, device=local.device)
    full.narrow(0, shard.start, shard.numel).copy_(local.reshape(-1))
    if world()[1] > 1:
        dist.reduce(full, dst=0)  # slices are disjoint: the sum is the concatenation
    return full.view(shard.shape).to(local.dtype).cpu() if world()[0] == 0 else None


def _stream_safetensors(
    path: Path | None,
    names: list[str],
    shards: Mapping[str, Shard],
    dtype: torch.dtype,
    full_of: Callable,
    save_id: str | None,
) -> None:
    """Write a safetensors file tensor by tensor (header first: shapes and dtypes are known); every
    rank takes part in the gathers, rank 0 (the one with a `path`) writes."""
    size = torch.tensor([], dtype=dtype).element_size()
    header: dict = {"__metadata__": {"format": "pt", SAVE_ID: save_id}}
    offset = 0
    for n in names:
        nbytes = shards[n].full_numel * size
        header[n] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shards[n].shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") if path is not None else contextlib.nullcontext() as f:
        if f is not None:
            f.write(struct.pack("<Q", len(blob)) + blob)
        for n in names:
            full = full_of(n)  # collective: every rank calls it
            if f is not None:
                f.write(full.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if path is not None:
        sync_file(path)


def save_omega_consolidated(
    omega: Omega, save_directory: str | Path, max_shard_size: int | str = "5GB"
) -> None:
    """Write a sharded Omega as full `mas_omega` / `mas_anchors` safetensors + `mas_config.json`, in
    the files (and HF-style shards above `max_shard_size`) one process would write, as one save
    (`masllm.omega.commit`: rank 0 stages every file, then commits)."""
    omega.validate()
    rank0, names = world()[0] == 0, sorted(omega.importance)
    with CheckpointWriter(Path(save_directory)) if rank0 else contextlib.nullcontext() as writer:
        for stem, tensors in ((OMEGA_NAME, omega.importance), (ANCHORS_NAME, omega.anchors)):
            dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
            size = torch.tensor([], dtype=dtype).element_size()
            split = plan_files({n: omega.shards[n].full_numel * size for n in names}, stem, max_shard_size)
            for filename, keys in split.filename_to_tensors.items():  # the same order on every rank
                _stream_safetensors(
                    writer.temporary(filename) if rank0 else None,
                    keys,
                    omega.shards,
                    dtype,
                    lambda n, t=tensors: _gather_full(t[n], omega.shards[n]),
                    writer.save_id if rank0 else None,
                )
            if rank0 and split.is_sharded:
                writer.stage_text(layout_names(stem, split)[-1], index_content(split, writer.save_id))
        if rank0:
            writer.commit(omega.config.to_dict(), omega.tasks, omega.merge_state, "file")
    barrier()  # nobody reads the checkpoint before it is complete


def _files_of(directory: Path, stem: str, files: list[str] | None) -> dict[str, Path]:
    """Tensor name -> file, for a single file or an HF-style sharded index (confined to `directory`)."""
    if reads_index(directory, stem, files):
        return read_index(directory, stem)
    single = directory / f"{stem}.safetensors"
    try:
        with safe_open(single, "pt") as f:
            return dict.fromkeys(f.keys(), single)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{single} is not a readable safetensors file ({e})") from None


def _read_slice(path: Path, name: str, shard: Shard) -> torch.Tensor:
    """Elements [start, start + numel) of the flattened tensor, reading only the rows that hold them."""
    with safe_open(path, "pt") as f:
        sl = f.get_slice(name)
        shape = tuple(sl.get_shape())
        if shape != tuple(shard.shape):
            raise ValueError(f"{path.name}[{name!r}] has shape {shape}, the model's parameter {shard.shape}")
        if shard.numel == 0:
            return (sl[0:0] if shape else f.get_tensor(name)).reshape(-1)[:0]
        if len(shape) <= 1:
            return f.get_tensor(name).reshape(-1).narrow(0, shard.start, shard.numel).clone()
        row = int(torch.Size(shape[1:]).numel())
        r0, r1 = shard.start // row, -(-(shard.start + shard.numel) // row)
        rows = sl[r0:r1].reshape(-1)
        return rows.narrow(0, shard.start - r0 * row, shard.numel).clone()


def load_omega_shards(
    directory: str | Path, shards: Mapping[str, Shard], weights: Mapping[str, torch.Tensor] | None = None
) -> Omega:
    """This rank's slices of a saved Omega (saved at any world size), for the given `shards`.

    `weights`: this rank's slices of the model's weights, the anchors of a checkpoint saved with
    `"anchors": "model"` (theta* = the weights saved beside it, now loaded into the model).
    """
    directory = Path(directory)
    meta = load_meta(directory)
    config = config_from_meta(meta, directory)
    files = check_files(directory, meta)
    importance, anchors = {}, {}
    stems = [(OMEGA_NAME, importance)]
    if meta["anchors"] == "file":
        stems.append((ANCHORS_NAME, anchors))
    elif meta["anchors"] == "model" and weights is None:
        raise ValueError(f"{directory} stores theta* as the model's weights: pass weights= to load them")
    for stem, out in stems:
        located = _files_of(directory, stem, files)
        unknown = [n for n in located if n not in shards]
        if unknown:
            raise ValueError(f"{directory}/{stem} has names this model does not train, e.g. {unknown[:3]}")
        for n, path in located.items():
            out[n] = _read_slice(path, n, shards[n])
    if meta["anchors"] == "model":
        anchors = {
            n: weights[n].detach().to(getattr(torch, config.storage_dtype), copy=True) for n in importance
        }
    omega = Omega(
        importance,
        anchors,
        config=config,
        tasks=meta["tasks"],
        merge_state=meta.get("merge_state"),
        shards={n: shards[n] for n in importance},
    )
    try:
        omega.validate()
    except ValueError as e:
        raise ValueError(f"{directory}: {e}") from None
    return omega
