"""Task-incremental image classification: a shared backbone and one head per task (MAS, Sec. 5.1).

    model = MultiHeadClassifier.from_backbone_config("mlp", in_features=784, hidden_sizes=(400, 400))
    head = model.add_head(num_classes=2)             # a new task gets a fresh, unregularised head
    out = model(pixel_values, labels=y, task_ids=head)  # the oracle task id picks the head

The MAS paper's object-recognition setup (Sec. 5.1) shares every layer but the classifier, and an
oracle names the task at test time. Backbones are built from config -- transformers' ViT, ResNet or
ConvNeXt (`AutoModel.from_config`, or `from_pretrained` for an ImageNet start where weights exist
locally), or a plain MLP for the MNIST benchmarks. With a single head shared by every task the same
model is the domain-incremental setting of Permuted MNIST.

How heads meet Omega: `compute_importance` on task t's data reaches only head t, so the other heads
get Omega = 0 from that task and keep what their own task gave them (`Omega.merge` sums, and lets
parameters join later); a head added after the last merge is not in Omega at all and trains freely.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import ImageClassifierOutput

HF_BACKBONES = ("vit", "resnet", "convnext")


class MLPBackbone(nn.Module):
    """Flatten, then Linear + ReLU layers (the MLPs of the Split/Permuted MNIST literature)."""

    def __init__(
        self, in_features: int = 784, hidden_sizes: Sequence[int] = (400, 400), dropout: float = 0.0
    ):
        super().__init__()
        if not hidden_sizes:
            raise ValueError("MLPBackbone needs at least one hidden layer")
        layers: list[nn.Module] = []
        for d_in, d_out in zip((in_features, *hidden_sizes[:-1]), hidden_sizes):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.feature_dim = hidden_sizes[-1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values.reshape(len(pixel_values), -1))  # (B, D)


class HFImageBackbone(nn.Module):
    """A transformers image model (no classification head) as a feature extractor: (B, C, H, W) -> (B, D)."""

    def __init__(self, model: nn.Module, image_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.model = model
        self.image_shape = image_shape  # lets flattened inputs (B, C*H*W) be used too
        cfg = model.config
        sizes = getattr(cfg, "hidden_sizes", None)
        self.feature_dim = sizes[-1] if sizes else cfg.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() == 2 and self.image_shape is not None:
            pixel_values = pixel_values.reshape(len(pixel_values), *self.image_shape)
        out = self.model(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:  # ViT without pooling layer: the [CLS] token
            pooled = out.last_hidden_state[:, 0]
        return pooled.reshape(len(pooled), -1)  # ResNet pools to (B, C, 1, 1)


def build_backbone(kind: str, pretrained: str | None = None, **config: Any) -> nn.Module:
    """An MLP, or a transformers ViT / ResNet / ConvNeXt from config (or from a local pretrained path)."""
    if kind == "mlp":
        return MLPBackbone(**config)
    if kind not in HF_BACKBONES:
        raise ValueError(f"Unknown backbone {kind!r}; choose one of {['mlp', *HF_BACKBONES]}")
    from transformers import AutoConfig, AutoModel

    image_shape = config.pop("image_shape", None)
    if pretrained is not None:  # e.g. the ImageNet start of the objrec8 recipe
        model = AutoModel.from_pretrained(pretrained, **config)
    else:
        if kind == "vit":
            config.setdefault("add_pooling_layer", False)
        pooling = {"add_pooling_layer": config.pop("add_pooling_layer")} if kind == "vit" else {}
        model = AutoModel.from_config(AutoConfig.for_model(kind, **config), **pooling)
    return HFImageBackbone(model, tuple(image_shape) if image_shape else None)


class MultiHeadClassifier(nn.Module):
    """A shared backbone and a `ModuleDict` of linear heads, one per task ("0", "1", ...)."""

    def __init__(self, backbone: nn.Module, feature_dim: int | None = None, head_sizes: Sequence[int] = ()):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim or backbone.feature_dim
        self.heads = nn.ModuleDict()
        self.active_task = 0  # the head used when a batch carries no task_ids
        for n in head_sizes:
            self.add_head(n)

    @classmethod
    def from_backbone_config(
        cls, kind: str, head_sizes: Sequence[int] = (), **config: Any
    ) -> MultiHeadClassifier:
        return cls(build_backbone(kind, **config), head_sizes=head_sizes)

    def add_head(self, num_classes: int) -> int:
        """Append a fresh head; returns its task index. It joins Omega only after its task (Omega = 0)."""
        if num_classes < 1:
            raise ValueError(f"A head needs at least one class, got {num_classes}")
        ref = next(self.backbone.parameters())
        head = nn.Linear(self.feature_dim, num_classes).to(device=ref.device, dtype=ref.dtype)
        self.heads[str(len(self.heads))] = head
        return len(self.heads) - 1

    def _task_ids(self, task_ids: torch.Tensor | int | None, B: int) -> torch.Tensor:
        if task_ids is None:
            task_ids = self.active_task
        ids = torch.as_tensor(task_ids, dtype=torch.long).reshape(-1).cpu()
        ids = ids.expand(B) if ids.numel() == 1 else ids
        if ids.numel() != B:
            raise ValueError(f"task_ids has {ids.numel()} entries for a batch of {B}")
        if int(ids.min()) < 0 or int(ids.max()) >= len(self.heads):
            raise ValueError(f"task_ids {ids.unique().tolist()} outside the {len(self.heads)} heads")
        return ids

    def route(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Each sample's features through its task's head: (B, D) -> (B, C)."""
        tasks = ids.unique().tolist()
        if len(tasks) == 1:  # the usual case: the whole batch through one head (per-sample MAS exact)
            return self.heads[str(tasks[0])](features)
        sizes = {self.heads[str(t)].out_features for t in tasks}
        if len(sizes) > 1:
            raise ValueError(f"A batch mixes tasks {tasks} whose heads differ in size {sorted(sizes)}")
        logits = features.new_empty(len(features), sizes.pop())
        for t in tasks:
            mask = (ids == t).to(features.device)
            logits[mask] = self.heads[str(t)](features[mask])
        return logits

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        task_ids: torch.Tensor | int | None = None,
    ) -> ImageClassifierOutput:
        if not len(self.heads):
            raise ValueError("The model has no head yet: call add_head(num_classes) first")
        ids = self._task_ids(task_ids, len(pixel_values))
        logits = self.route(self.backbone(pixel_values), ids)  # (B, C)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)
