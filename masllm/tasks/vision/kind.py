"""The `vision` task kind of the sequential recipe: image classification tasks from a YAML list.

Each entry of `domains:` is one task (`VisionTaskConfig`):

    - {name: digits-0-1, source: ../shared/data/mnist, classes: [0, 1]}            # Split MNIST
    - {name: perm-3, source: ../shared/data/mnist, permutation_seed: 3, head: 0}   # Permuted MNIST
    - {name: flowers, source: /data/flowers, format: imagefolder}                   # objrec8

`source` is a directory of the four MNIST-format idx files (`format: idx`) or an image folder with
`train/<class>/*` and `test/<class>/*` (`format: imagefolder`, images resized to the backbone's
`image_size` and normalised with ImageNet statistics, loaded lazily). Every task gets a head of its
own (task-incremental, MAS Sec. 5.1) unless `head` names a shared one (`head: 0` everywhere is the
single-head, domain-incremental Permuted MNIST). Omega is estimated on the task's training images
(`importance: train`), its test images (`test`: unlabeled data met at deployment, MAS Table 3) or
both, optionally on some classes only (`importance_classes`: the adaptation test of MAS Sec. 5.1).
`validation: 0.1` holds out a seeded 10% of the task's training images (`validation_seed`), never
trained on nor used for Omega, and reports their accuracy as the metric `val_accuracy`: what lambda
is chosen on (`masllm.continual.selection`), so the test images never feed that choice.

The model (`model_config`) is `MultiHeadClassifier` with a backbone from `models.build_backbone`
(`backbone: mlp | vit | resnet | convnext` plus that backbone's config), or, with
`model_name_or_path`, a pretrained transformers image model (`backbone` names its kind).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset
from transformers import default_data_collator

from ...registry import did_you_mean
from ..base import Task, TaskSequence, check_config_keys, check_validation, config_from_dict
from .data import TaskDataset, validation_split
from .mnist import load_idx_dataset, permutation, to_float
from .models import HF_BACKBONES, MLPBackbone, MultiHeadClassifier, build_backbone

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMPORTANCE_SOURCES = ("train", "test", "train+test")


def check_image_task(name: str, importance: str, validation: float) -> None:
    """The fields every image task config has (vision and facts kinds), checked before any data is
    read: where Omega is estimated, and the validation fraction held out of the training images."""
    if importance not in IMPORTANCE_SOURCES:
        raise ValueError(f"Task {name!r}: importance must be one of {IMPORTANCE_SOURCES}")
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"Task {name!r}: validation must be a fraction in [0, 1), got {validation}")


@dataclass
class VisionTaskConfig:
    """One image classification task of a sequence."""

    name: str
    source: str
    format: str = "idx"
    classes: list[int] | None = None
    permutation_seed: int | None = None
    head: int | None = None
    importance: str = "train"
    importance_classes: list[int] | None = None
    max_train: int | None = None
    max_eval: int | None = None
    max_importance: int | None = None
    validation: float = 0.0
    validation_seed: int = 0
    checksums: str | None = None
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in ("idx", "imagefolder"):
            raise ValueError(
                f"Task {self.name!r}: format must be 'idx' or 'imagefolder', got {self.format!r}"
            )
        check_image_task(self.name, self.importance, self.validation)
        if self.format == "imagefolder" and self.permutation_seed is not None:
            raise ValueError(f"Task {self.name!r}: permutation_seed applies to idx (MNIST) data only")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionTaskConfig:
        return config_from_dict(cls, data, "vision task")


class ImageFolderSplit(Dataset):
    """`root/<class>/<image>` files, read and resized on access: (C, S, S) float tensors, ImageNet-normalised."""

    def __init__(self, root: Path, image_size: int, class_names: list[str] | None = None):
        self.class_names = class_names or sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.class_names:
            raise ValueError(f"{root}: no class folders")
        self.files = [
            (f, c)
            for c, name in enumerate(self.class_names)
            for f in sorted((root / name).iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.files:
            raise ValueError(f"{root}: no images ({IMAGE_SUFFIXES})")
        self.image_size = image_size
        self.labels = torch.tensor([c for _, c in self.files])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.files[i]
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        return (x - mean) / std, label


def _first(n: int | None, length: int) -> list[int]:
    return list(range(length if n is None else min(n, length)))


def _idx_sets(cfg: VisionTaskConfig, cache: dict[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train, validation (held out of train) and test (x, y) of an idx task: class subset
    renumbered, pixels permuted if asked."""
    key = str(Path(cfg.source).resolve())
    if key not in cache:
        cache[key] = load_idx_dataset(cfg.source, cfg.checksums)
    data = cache[key]
    perm = permutation(cfg.permutation_seed) if cfg.permutation_seed is not None else None
    out = {}
    for split in ("train", "test"):
        x, y = to_float(data[f"{split}_images"]), data[f"{split}_labels"].long()
        if cfg.classes is not None:
            keep = torch.isin(y, torch.tensor(cfg.classes))
            remap = torch.full((10,), -1, dtype=torch.long)
            remap[cfg.classes] = torch.arange(len(cfg.classes))
            x, y = x[keep], remap[y[keep]]
        out[split] = (x[:, perm] if perm is not None else x, y)
    keep, held = validation_split(len(out["train"][1]), cfg.validation, cfg.validation_seed)
    x, y = out["train"]
    out["train"], out["validation"] = (x[keep], y[keep]), (x[held], y[held])
    return out


def _importance_idx(cfg: VisionTaskConfig, sets: dict, head: int) -> TaskDataset:
    parts = {"train": [sets["train"]], "test": [sets["test"]], "train+test": [sets["train"], sets["test"]]}
    x = torch.cat([p[0] for p in parts[cfg.importance]])
    y = torch.cat([p[1] for p in parts[cfg.importance]])
    if cfg.importance_classes is not None:  # labels only pick the subset; Omega itself never sees them
        keep = torch.isin(y, torch.tensor(cfg.importance_classes))
        x, y = x[keep], y[keep]
    n = len(_first(cfg.max_importance, len(x)))
    return TaskDataset(x[:n], None, head)


def _build_idx_task(cfg: VisionTaskConfig, head: int, cache: dict) -> tuple[Task, int]:
    sets = _idx_sets(cfg, cache)
    (xtr, ytr), (xte, yte) = sets["train"], sets["test"]
    ntr, nte = len(_first(cfg.max_train, len(xtr))), len(_first(cfg.max_eval, len(xte)))
    xva, yva = sets["validation"]
    task = Task(
        name=cfg.name,
        train_dataset=TaskDataset(xtr[:ntr], ytr[:ntr], head),
        importance_dataset=_importance_idx(cfg, sets, head),
        eval_dataset=TaskDataset(xte[:nte], yte[:nte], head),
        data_collator=default_data_collator,
        evaluate=partial(evaluate_accuracy, validation=TaskDataset(xva, yva, head) if len(yva) else None),
        training_overrides=cfg.training,
    )
    return task, int(ytr.max()) + 1


def _build_folder_task(cfg: VisionTaskConfig, head: int, image_size: int) -> tuple[Task, int]:
    root = Path(cfg.source)
    images = ImageFolderSplit(root / "train", image_size)
    test = ImageFolderSplit(root / "test", image_size, images.class_names)
    keep, held = validation_split(len(images), cfg.validation, cfg.validation_seed)
    train = _LabeledSubset(images, keep)
    pools = {"train": [train], "test": [test], "train+test": [train, test]}[cfg.importance]
    if cfg.importance_classes is not None:
        pools = [
            Subset(
                p, torch.nonzero(torch.isin(p.labels, torch.tensor(cfg.importance_classes)))[:, 0].tolist()
            )
            for p in pools
        ]
    imp = ConcatDataset(pools)
    task = Task(
        name=cfg.name,
        train_dataset=TaskDataset(Subset(train, _first(cfg.max_train, len(train))), True, head),
        importance_dataset=TaskDataset(Subset(imp, _first(cfg.max_importance, len(imp))), None, head),
        eval_dataset=TaskDataset(Subset(test, _first(cfg.max_eval, len(test))), True, head),
        data_collator=default_data_collator,
        evaluate=partial(
            evaluate_accuracy,
            validation=TaskDataset(Subset(images, held.tolist()), True, head) if len(held) else None,
        ),
        training_overrides=cfg.training,
    )
    return task, len(images.class_names)


class _LabeledSubset(Subset):
    """A `Subset` of an `ImageFolderSplit` that keeps its `labels` (what `importance_classes` picks by)."""

    def __init__(self, dataset: ImageFolderSplit, indices: torch.Tensor):
        super().__init__(dataset, indices.tolist())
        self.labels = dataset.labels[indices]


def evaluate_accuracy(trainer: Any, task: Task, validation: Dataset | None = None) -> dict[str, float]:
    """Top-1 accuracy (%) and mean loss of the task's own head on its eval set, via `Trainer.evaluate`;
    with a validation set, its accuracy too (`val_accuracy`)."""
    out = trainer.evaluate(task.eval_dataset, metric_key_prefix="eval")
    metrics = {"accuracy": float(out["eval_accuracy"]), "loss": float(out["eval_loss"])}
    if validation is not None:
        metrics["val_accuracy"] = float(trainer.evaluate(validation, metric_key_prefix="val")["val_accuracy"])
    return metrics


def accuracy_metric(eval_pred: Any) -> dict[str, float]:
    preds, labels = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
    return {"accuracy": 100.0 * float((preds.argmax(-1) == labels).mean())}


def check_backbone_config(kind: str, config: dict[str, Any]) -> None:
    """Before any data work: the keys of `model_config` are arguments of the backbone (MLP) or fields
    of its transformers config class (ViT / ResNet / ConvNeXt), with a "did you mean"."""
    if kind in HF_BACKBONES:
        check_config_keys(kind, config, allowed=("image_shape", "add_pooling_layer", "image_size"))
    elif kind == "mlp":
        known = [p for p in inspect.signature(MLPBackbone.__init__).parameters if p != "self"]
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(
                f"model_config: {unknown} not an argument of the mlp backbone {known}{did_you_mean(unknown[0], known)}"
            )
    else:
        kinds = ["mlp", *HF_BACKBONES]
        raise ValueError(
            f"model_config: unknown backbone {kind!r}{did_you_mean(kind, kinds)}; choose one of {kinds}"
        )


def vision_sequence(model_args: Any, data_args: Any, training_args: Any) -> TaskSequence:
    """The `vision` kind: tasks from `data_args.domains`, a multi-head model from `model_args`."""
    configs = [VisionTaskConfig.from_dict(dict(d)) for d in data_args.domains]
    model_config = dict(model_args.model_config or {"backbone": "mlp"})
    kind = model_config.pop("backbone", "mlp")
    check_backbone_config(kind, model_config)
    image_size = int(model_config.get("image_size", 224))
    cache: dict[str, Any] = {}
    tasks, head_sizes = [], {}
    for k, cfg in enumerate(configs):
        head = k if cfg.head is None else cfg.head
        build = (
            _build_idx_task(cfg, head, cache)
            if cfg.format == "idx"
            else _build_folder_task(cfg, head, image_size)
        )
        task, num_classes = build
        if head_sizes.setdefault(head, num_classes) != num_classes:
            raise ValueError(
                f"Task {cfg.name!r} has {num_classes} classes but shares head {head} ({head_sizes[head]})"
            )
        tasks.append(task)
    if sorted(head_sizes) != list(range(len(head_sizes))):
        raise ValueError(f"Heads must be numbered 0..n-1, got {sorted(head_sizes)}")
    validated = check_validation(configs)

    def model_init(path: str | None) -> MultiHeadClassifier:
        torch.manual_seed(training_args.seed)
        backbone = build_backbone(kind, pretrained=model_args.model_name_or_path, **dict(model_config))
        model = MultiHeadClassifier(backbone, head_sizes=[head_sizes[h] for h in range(len(head_sizes))])
        if path is not None:  # Trainer.save_model writes a plain nn.Module's state dict here
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(Path(path) / "model.safetensors")))
        return model

    return TaskSequence(
        tasks=tasks,
        model_init=model_init,
        metrics={"accuracy": True, "loss": False, **({"val_accuracy": True} if validated else {})},
        primary_metric="accuracy",
        trainer_kwargs={"compute_metrics": accuracy_metric},
    )
