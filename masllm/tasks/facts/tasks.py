"""The fact tasks as whole tensors: each group of facts with its train / validation / test images,
and their MAP -- what the recipe's kind and the lean benchmark loop share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..vision.data import batches, validation_split
from ..vision.mnist import to_float
from .data import FactsData
from .metrics import retrieval_map


@dataclass
class FactTask:
    """One task: its facts (indices into the 400) and their images, float (N, 784) in [0, 1], with
    the fact index of each image; the validation images are held out of the task's training images."""

    name: str
    facts: torch.Tensor
    x_train: torch.Tensor
    f_train: torch.Tensor
    x_val: torch.Tensor
    f_val: torch.Tensor
    x_test: torch.Tensor
    f_test: torch.Tensor


def make_tasks(
    data: FactsData,
    groups: list[torch.Tensor],
    names: list[str] | None = None,
    validation: float = 0.1,
    validation_seed: int = 0,
) -> list[FactTask]:
    """One `FactTask` per group; `validation` of each task's training images held out (seeded)."""
    names = names or [f"T{k + 1}" for k in range(len(groups))]
    if len(names) != len(groups):
        raise ValueError(f"{len(names)} task names for {len(groups)} fact groups")
    out = []
    for name, facts in zip(names, groups):
        tr = torch.nonzero(torch.isin(data.f_train, facts))[:, 0]
        te = torch.nonzero(torch.isin(data.f_test, facts))[:, 0]
        keep, held = validation_split(len(tr), validation, validation_seed)
        x, f = to_float(data.x_train[tr]), data.f_train[tr]
        out.append(
            FactTask(
                name, facts, x[keep], f[keep], x[held], f[held], to_float(data.x_test[te]), data.f_test[te]
            )
        )
    return out


@torch.no_grad()
def embed_all(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """The model's [S | P | O] of every image, in eval mode: (N, 3 * dim)."""
    was = model.training
    model.eval()
    out = torch.cat([model(b["pixel_values"]).logits for b in batches(x, None, 0, batch_size)])
    model.train(was)
    return out


def task_map(
    model: nn.Module, task: FactTask, split: str = "test", facts: torch.Tensor | None = None
) -> float:
    """MAP of the task's facts (or of `facts`, a subset of them) over its `split` images (test / val).
    With a subset, the images are those of the subset's facts only (retrieval within the subset).
    Facts without an image in the split (possible in a random validation split) are no query."""
    x, f = (task.x_test, task.f_test) if split == "test" else (task.x_val, task.f_val)
    if facts is not None:
        keep = torch.isin(f, facts)
        x, f = x[keep], f[keep]
    return facts_map(embed_all(model, x), f, model.targets, task.facts if facts is None else facts)


def facts_map(
    embeddings: torch.Tensor, image_facts: torch.Tensor, targets: torch.Tensor, facts: torch.Tensor
) -> float:
    """Retrieval MAP of `facts` over these images; a fact with no image among them is no query."""
    return retrieval_map(embeddings, image_facts, targets, facts[torch.isin(facts, image_facts)])


def overall_map(model: nn.Module, tasks: list[FactTask]) -> float:
    """MAP over every fact of every task, ranking all the tasks' test images (the paper's 'all')."""
    x = torch.cat([t.x_test for t in tasks])
    f = torch.cat([t.f_test for t in tasks])
    return retrieval_map(embed_all(model, x), f, model.targets, torch.cat([t.facts for t in tasks]))
