"""IMM inside the loop (Lee et al. 2017): row k of R evaluates the merge of task models 0..k."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from ..config import MASConfig
from ..importance import compute_importance
from ..methods import mean_imm, mode_imm
from ..omega.io import load_tensors, save_tensors
from ..tasks import TaskSequence
from ..trainer import MASTrainer

IMM_DIR = "imm"  # <k>-<task>/imm/: IMM's merged model of tasks 0..k (the task's own model is <k>-<task>/)
IMM_FISHER = "imm_fisher"  # <k>-<task>/imm_fisher.safetensors: task k's diagonal Fisher (mode-IMM)


@contextlib.contextmanager
def imm_merged(
    trainer: MASTrainer,
    seq: TaskSequence,
    run_dir: Path,
    k: int,
    config: MASConfig,
    kind: Literal["mean", "mode"],
) -> Iterator[None]:
    """IMM (Lee et al. 2017): the model holds the merge of task models 0..k while the block runs
    (mean-IMM Eq. 3, mode-IMM Eq. 7 with each task's diagonal Fisher, alpha_t = 1/(k+1)); the merge
    is then saved under <k>-<task>/imm/ and task k's own weights are put back: the next task starts
    from them (IMM's transfer) and later merges read them from <k>-<task>/."""
    model, task = trainer.model, seq.tasks[k]
    step_dirs = [run_dir / f"{t}-{seq.tasks[t].name}" for t in range(k + 1)]
    own = _trainable_state(model)
    states = [_trainable_state(seq.model_init(str(d))) for d in step_dirs[:k]] + [own]
    if kind == "mode":
        fisher = compute_importance(
            model,
            task.importance_dataset,
            dataclasses.replace(config, method="ewc"),
            task_name=task.name,
            collate_fn=task.data_collator,
            show_progress=trainer.is_world_process_zero(),
        )
        fisher_k = {n: fisher[n] for n in own}
        if trainer.is_world_process_zero():
            save_tensors(fisher_k, step_dirs[k], IMM_FISHER)
        fishers = [load_tensors(d, IMM_FISHER) for d in step_dirs[:k]] + [fisher_k]
        merged = mode_imm(states, fishers) if k > 0 else own  # one model: itself, unrounded
    else:
        merged = mean_imm(states)
    _copy_into(model, merged)
    try:
        yield
        trainer.save_model(str(step_dirs[k] / IMM_DIR))
    finally:
        _copy_into(model, own)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters (what IMM merges; tied weights once)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _copy_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])
