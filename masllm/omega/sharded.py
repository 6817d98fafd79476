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

import json
import os
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open

from ..distributed.comm import barrier, world
from ..distributed.fsdp import local_tensor
from ..distributed.shard import Shard
from .checkpoint import config_from_meta
from .container import Omega
from .io import ANCHORS_NAME, OMEGA_NAME, finish_files, load_meta, plan_files, write_meta

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
    path: Path, names: list[str], shards: Mapping[str, Shard], dtype: torch.dtype, full_of: Callable
) -> None:
    """Write a safetensors file tensor by tensor (header first: shapes and dtypes are known)."""
    size = torch.tensor([], dtype=dtype).element_size()
    header: dict = {"__metadata__": {"format": "pt"}}
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
    f = None
    if world()[0] == 0:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        f = os.fdopen(fd, "wb")
        f.write(struct.pack("<Q", len(blob)) + blob)
    try:
        for n in names:
            full = full_of(n)  # collective: every rank calls it
            if f is not None:
                f.write(full.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    finally:
        if f is not None:
            f.close()
    if f is not None:
        os.replace(tmp, path)


def save_omega_consolidated(
    omega: Omega, save_directory: str | Path, max_shard_size: int | str = "5GB"
) -> None:
    """Write a sharded Omega as full `mas_omega` / `mas_anchors` safetensors + `mas_config.json`, in
    the files (and HF-style shards above `max_shard_size`) one process would write."""
    omega.validate()
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    rank0, names = world()[0] == 0, sorted(omega.importance)
    for stem, tensors in ((OMEGA_NAME, omega.importance), (ANCHORS_NAME, omega.anchors)):
        dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
        size = torch.tensor([], dtype=dtype).element_size()
        split = plan_files({n: omega.shards[n].full_numel * size for n in names}, stem, max_shard_size)
        for filename, keys in split.filename_to_tensors.items():  # the same order on every rank
            _stream_safetensors(
                directory / filename,
                keys,
                omega.shards,
                dtype,
                lambda n, t=tensors: _gather_full(t[n], omega.shards[n]),
            )
        if rank0:
            finish_files(directory, stem, split)
    if rank0:
        write_meta(directory, omega.config.to_dict(), omega.tasks, omega.merge_state, "file")
    barrier()  # nobody reads the checkpoint before it is complete


def _files_of(directory: Path, stem: str) -> dict[str, Path]:
    """Tensor name -> file, for a single file or an HF-style sharded index."""
    single, index = directory / f"{stem}.safetensors", directory / f"{stem}.safetensors.index.json"
    if single.is_file():
        with safe_open(single, "pt") as f:
            return dict.fromkeys(f.keys(), single)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {n: directory / file for n, file in weight_map.items()}
    raise FileNotFoundError(f"No {single.name} (or sharded index) in {directory}")


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
    importance, anchors = {}, {}
    stems = [(OMEGA_NAME, importance)]
    if meta["anchors"] == "file":
        stems.append((ANCHORS_NAME, anchors))
    elif meta["anchors"] == "model" and weights is None:
        raise ValueError(f"{directory} stores theta* as the model's weights: pass weights= to load them")
    for stem, out in stems:
        files = _files_of(directory, stem)
        unknown = [n for n in files if n not in shards]
        if unknown:
            raise ValueError(f"{directory}/{stem} has names this model does not train, e.g. {unknown[:3]}")
        for n, path in files.items():
            out[n] = _read_slice(path, n, shards[n])
    if meta["anchors"] == "model":
        anchors = {
            n: weights[n]
            .detach()
            .to(getattr(torch, meta["config"].get("storage_dtype", "float32")), copy=True)
            for n in importance
        }
    omega = Omega(
        importance,
        anchors,
        config=config_from_meta(meta),
        tasks=meta["tasks"],
        merge_state=meta.get("merge_state"),
        shards={n: shards[n] for n in importance},
    )
    omega.validate()
    return omega
