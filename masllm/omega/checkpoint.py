"""Omega <-> its checkpoint directory (`save_pretrained` / `from_pretrained`), validated both ways.

A mixin of `Omega`: it turns the container into the plain dicts `masllm.omega.io` writes, and back.
Saving validates everything first (so bad input never touches an existing checkpoint), writes the
files as one save (`masllm.omega.commit`: the old checkpoint or the new one, never a mix) and leaves
theta* out when it equals the weights of the `model` saved beside it (`"anchors": "model"`). Loading
checks every file before use: the json's schema, that the files are those of one save, and the
tensors (float dtype, finite, importance >= 0, the shapes of Omega and theta* and of the model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import MASConfig
from .commit import CheckpointWriter, check_files
from .hub import push_to_hub, resolve
from .io import (
    ANCHORS_NAME,
    CONFIG_NAME,
    OMEGA_NAME,
    index_content,
    layout_names,
    load_meta,
    load_tensors,
    plan_files,
    write_safetensors,
)
from .validation import check_against_model

# MASConfig fields of masllm 0.1 that now belong to a method's own config (EWCConfig, SIConfig,
# LwFConfig): a 0.1 checkpoint's json carries them all; those its method does not use are dropped.
LEGACY_CONFIG_KEYS = ("ewc_sampled", "si_xi", "lwf_temperature", "lwf_weight")


def config_from_meta(meta: dict[str, Any], directory: str | Path | None = None) -> MASConfig:
    """The (method-specific) MASConfig of a checkpoint's `mas_config.json` (errors name the file)."""
    data = dict(meta["config"])
    try:
        for key in LEGACY_CONFIG_KEYS:
            if key in data:
                probe = {k: v for k, v in data.items() if k not in LEGACY_CONFIG_KEYS}
                known = MASConfig.from_dict(probe).to_dict()
                data = {k: v for k, v in data.items() if k in known or k not in LEGACY_CONFIG_KEYS}
                break
        return MASConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        where = Path(directory) / CONFIG_NAME if directory is not None else CONFIG_NAME
        raise ValueError(f"{where}: 'config': {e}") from None


def stage_tensors(writer: CheckpointWriter, tensors: dict, name: str, max_shard_size: int | str) -> None:
    """Write `name`'s single file or shards + index as temporaries of `writer`'s save."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    split = plan_files({k: v.numel() * v.element_size() for k, v in tensors.items()}, name, max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        write_safetensors({k: tensors[k] for k in keys}, writer.temporary(filename), writer.save_id)
    if split.is_sharded:
        writer.stage_text(layout_names(name, split)[-1], index_content(split, writer.save_id))


class OmegaCheckpoint:
    """`save_pretrained`, `from_pretrained` and `push_to_hub` for `Omega`."""

    def save_pretrained(
        self, save_directory: str | Path, model: nn.Module | None = None, max_shard_size: int | str = "5GB"
    ) -> None:
        """Write `mas_omega.safetensors` (+ anchors when they differ from `model`) and `mas_config.json`."""
        self.validate(model)
        anchors_in_model = self._anchors_equal(model)
        with CheckpointWriter(Path(save_directory)) as writer:
            stage_tensors(writer, self.importance, OMEGA_NAME, max_shard_size)
            if self.anchors and not anchors_in_model:
                stage_tensors(writer, self.anchors, ANCHORS_NAME, max_shard_size)
            where = "model" if anchors_in_model else ("file" if self.anchors else "none")
            writer.commit(self.config.to_dict(), self.tasks, self.merge_state, where)

    def _anchors_equal(self, model: nn.Module | None) -> bool:
        if model is None or not self.anchors:
            return False
        params = dict(model.named_parameters())
        return all(
            n in params
            and params[n].shape == a.shape
            and torch.equal(params[n].detach().to(a.dtype).cpu(), a.cpu())
            for n, a in self.anchors.items()
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, model: nn.Module | None = None, **hub_kwargs: Any):
        """Load what `save_pretrained` wrote, from a directory or a Hub repo id (only the Omega files
        are fetched; `hub_kwargs`: revision, cache_dir, token, local_files_only). With `model`, names
        and shapes are checked against it; `"anchors": "model"` checkpoints take theta* from it."""
        directory = resolve(name_or_path, **hub_kwargs)
        meta = load_meta(directory)
        config = config_from_meta(meta, directory)
        files = check_files(directory, meta)
        importance = load_tensors(directory, OMEGA_NAME, files)
        omega = cls(importance, config=config, tasks=meta["tasks"], merge_state=meta.get("merge_state"))
        if meta["anchors"] == "file":
            omega.anchors = load_tensors(directory, ANCHORS_NAME, files)
        elif meta["anchors"] == "model":
            if model is None:
                raise ValueError(
                    f"{directory} stores theta* as the model's weights: pass model= to load them"
                )
            check_against_model(importance, model, "Omega")
            omega.set_anchors(model)
        try:
            omega.validate(model)
        except ValueError as e:
            raise ValueError(f"{directory}: {e}") from None
        return omega

    def push_to_hub(self, repo_id: str, model: nn.Module | None = None, **kwargs: Any) -> Any:
        """Upload the files `save_pretrained` writes to a Hub model repo (see `masllm.omega.hub`)."""
        return push_to_hub(self, repo_id, model=model, **kwargs)
