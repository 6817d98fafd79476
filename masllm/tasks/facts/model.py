"""The fact model: a vision backbone and an embedding head with three structured outputs S, P, O.

As in the MAS paper's fact learning (Sec. 5.2), every layer is shared by every task, the last one
included: the head forks into Subject, Predicate and Object projections, each to the language
embedding's dimension (384), and the model's output F(x) = [S | P | O] (B, 1152) is an embedding,
not a classifier's logits. It is returned as `logits` so that the importance estimators take it as
F: MAS's Omega is then the sensitivity of ||[S | P | O]||^2 (Eq. 2), no softmax anywhere.

The loss (`fact_loss`) is the distance between the visual and the language embedding of the
fact's units, per unit: sum over S, P, O of ||v_u - e_u||^2 (squared Euclidean, the default) or
||v_u - e_u|| (`distance="euclidean"`), averaged over the batch. The language embeddings of the
400 facts are a buffer of the model (`targets`), so a batch only carries fact indices as `labels`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from ..vision.models import build_backbone

UNITS = ("subject", "predicate", "object")
DISTANCES = ("squared", "euclidean")


def fact_loss(pred: torch.Tensor, target: torch.Tensor, distance: str = "squared") -> torch.Tensor:
    """Mean over the batch of sum_u d(v_u, e_u), u in S, P, O: pred and target (B, 3 * dim)."""
    if pred.shape != target.shape or pred.shape[-1] % 3:
        raise ValueError(f"fact_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} (B, 3*dim)")
    diff = (pred - target).reshape(len(pred), 3, -1)  # (B, 3, dim): one row per unit
    sq = diff.pow(2).sum(-1)
    if distance == "squared":
        per_unit = sq
    elif distance == "euclidean":
        per_unit = (sq + 1e-12).sqrt()
    else:
        raise ValueError(f"Unknown distance {distance!r}; choose one of {DISTANCES}")
    return per_unit.sum(1).mean()


class FactEmbeddingModel(nn.Module):
    """backbone (B, ...) -> (B, D) -> three Linear(D, dim) heads -> [S | P | O] (B, 3 * dim)."""

    def __init__(self, backbone: nn.Module, targets: torch.Tensor, distance: str = "squared"):
        super().__init__()
        if targets.dim() != 2 or targets.shape[1] % 3:
            raise ValueError(f"targets must be (num_facts, 3 * dim), got {tuple(targets.shape)}")
        if distance not in DISTANCES:
            raise ValueError(f"Unknown distance {distance!r}; choose one of {DISTANCES}")
        self.backbone = backbone
        self.dim = targets.shape[1] // 3
        feature_dim = backbone.feature_dim
        self.subject = nn.Linear(feature_dim, self.dim)
        self.predicate = nn.Linear(feature_dim, self.dim)
        self.object = nn.Linear(feature_dim, self.dim)
        self.register_buffer("targets", targets.float().clone())
        self.distance = distance

    @classmethod
    def from_backbone_config(cls, kind: str, targets: torch.Tensor, distance: str = "squared",
                             **config: Any) -> FactEmbeddingModel:  # fmt: skip
        return cls(build_backbone(kind, **config), targets, distance)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.backbone(pixel_values)  # (B, D)
        return torch.cat([self.subject(h), self.predicate(h), self.object(h)], dim=-1)  # (B, 3 * dim)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, task_ids: Any = None
    ) -> ImageClassifierOutput:
        """`labels`: fact indices (B,), looked up in `targets`; `task_ids` is accepted and ignored
        (every layer is shared: there is one head for all tasks)."""
        F = self.embed(pixel_values)
        loss = None
        if labels is not None:
            loss = fact_loss(F, self.targets[labels.to(self.targets.device).long()], self.distance)
        return ImageClassifierOutput(loss=loss, logits=F)
