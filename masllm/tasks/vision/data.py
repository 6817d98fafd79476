"""A task's images as the dict batches `MultiHeadClassifier` takes (`pixel_values`, `labels`, `task_ids`),
and the validation split carved from a task's training set (what lambda is chosen on)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset


class TaskDataset(Dataset):
    """A task's images with its head id, as a map-style dataset of dicts.

    `x`: a tensor of images (N, ...) with `y` a tensor of labels or None (unlabeled: Omega's data),
    or a dataset of `(image, label)` items (an image folder) with `y` True (labels from the items) or
    None. Works with `transformers.default_data_collator`, `MASTrainer` and `compute_importance`.
    """

    def __init__(self, x: Any, y: torch.Tensor | bool | None, head: int):
        self.items = not isinstance(x, torch.Tensor)
        if isinstance(y, torch.Tensor) and (self.items or len(x) != len(y)):
            raise ValueError(
                f"{len(x)} inputs but {len(y)} labels" if not self.items else "labels come from the items"
            )
        self.x, self.y, self.head = x, y, head

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, label = self.x[i] if self.items else (self.x[i], None)
        item = {"pixel_values": image, "task_ids": torch.tensor(self.head)}
        if isinstance(self.y, torch.Tensor):
            item["labels"] = self.y[i]
        elif self.y is True:
            item["labels"] = torch.tensor(label)
        return item


def batches(
    x: torch.Tensor,
    y: torch.Tensor | None,
    head: int | torch.Tensor,
    batch_size: int,
    perm: torch.Tensor | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Dict batches by slicing whole tensors (no per-sample Python): for training, importance, evaluation.

    `head`: one task index for all samples, or a (N,) tensor of them (joint training on mixed tasks).
    """
    order = perm if perm is not None else torch.arange(len(x))
    heads = head if isinstance(head, torch.Tensor) else None
    out = []
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        ids = heads[idx] if heads is not None else torch.full((len(idx),), int(head), dtype=torch.long)
        b = {"pixel_values": x[idx], "task_ids": ids}
        if y is not None:
            b["labels"] = y[idx]
        out.append(b)
    return out


def validation_split(n: int, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices of a training set of `n` samples: a seeded random `fraction` held
    out, so that hyper-parameters (lambda) are chosen without ever looking at the test set.

    The same `n`, `fraction` and `seed` give the same split (Permuted MNIST's tasks, which permute
    the same images, hold out the same ones). `fraction` 0 holds out nothing.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    k = round(n * fraction)
    if fraction > 0 and not 0 < k < n:
        raise ValueError(f"validation fraction {fraction} of {n} samples leaves an empty split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[k:].sort().values, order[:k].sort().values
