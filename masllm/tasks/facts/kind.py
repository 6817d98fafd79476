"""The `facts` task kind of the sequential recipe: fact learning with an embedding head (MAS Sec. 5.2).

Each entry of `domains:` is one task, a group of facts (`FactTaskConfig`):

    - {name: T1, group: 0, validation: 0.1}
    - {name: T2, group: 1, validation: 0.1}

`group` indexes `data.fact_groups(split, split_seed, num_groups)`; the data fields (`digits`,
`items`, `data_seed`, `train_per_fact`, `test_per_fact`, `split`, `split_seed`, `num_groups`) define
the one data set of the sequence and must agree between entries (give them once, in the first, or
in every one). Omega is estimated on the task's training images (`importance: train`), its test
images (`test`) or both, optionally on the facts of some subjects only (`importance_subjects`: digits,
the adaptation test of the paper's Fig. 7). Metrics: `map` (retrieval MAP over the task's facts and
test images) and, with a `validation` fraction, `val_map` (what lambda is chosen on:
`python -m masllm.continual.selection report.json`).

`model_config`: `backbone` (any of the vision kind's: mlp, vit, resnet, convnext, with its config;
default an MLP 784-400-400) and `distance` (`squared` / `euclidean`, the loss). Methods that need a
likelihood over classes are refused (`UNSUPPORTED`): the output is an embedding, not a distribution.
finetune, mas, mas_vector, lmas, l2, si and mean_imm run unchanged (they need no likelihood); LwF
runs with its softmax distillation applied to the embedding (its KL is 0 only when the student's
[S | P | O] equals the teacher's up to a per-sample shift: an approximate embedding distillation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import default_data_collator

from ..base import Task, TaskSequence, check_validation, config_from_dict
from ..vision.data import TaskDataset
from ..vision.kind import check_backbone_config, check_image_task
from ..vision.models import build_backbone
from .data import DIGITS, ITEMS, RELATIONS, FactsSpec, all_facts, fact_groups, load_facts
from .embeddings import DEFAULT_CACHE, fact_embeddings, unit_embeddings
from .model import FactEmbeddingModel
from .tasks import FactTask, facts_map, make_tasks

_LIKELIHOOD = (
    "its Fisher is of log softmax(output), a likelihood over classes; the facts model outputs an "
    "embedding [S | P | O], which is no distribution"
)
UNSUPPORTED = {
    "ewc": _LIKELIHOOD,
    "online_ewc": _LIKELIHOOD,
    "mode_imm": "its merge weights the task models by EWC's Fisher: " + _LIKELIHOOD,
    "spp": "its importance is the entropy of softmax(output): " + _LIKELIHOOD,
}
DATA_FIELDS = ("digits", "items", "data_seed", "train_per_fact", "test_per_fact", "split", "split_seed",
               "num_groups")  # fmt: skip


@dataclass
class FactTaskConfig:
    """One task of a fact sequence: a group of facts."""

    name: str
    group: int
    importance: str = "train"
    importance_subjects: list[int] | None = None
    max_train: int | None = None
    max_importance: int | None = None
    validation: float = 0.0
    validation_seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    digits: str = "../shared/data/mnist"
    items: str = "../shared/data/fashion-mnist"
    data_seed: int = 0
    train_per_fact: int = 30
    test_per_fact: int = 10
    split: str = "units"
    split_seed: int = 0
    num_groups: int = 4

    def __post_init__(self) -> None:
        check_image_task(self.name, self.importance, self.validation)
        if not 0 <= self.group < self.num_groups:
            raise ValueError(f"Task {self.name!r}: group {self.group} outside 0..{self.num_groups - 1}")
        if self.importance_subjects is not None and not set(self.importance_subjects) <= set(range(10)):
            raise ValueError(f"Task {self.name!r}: importance_subjects are digits 0..9")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactTaskConfig:
        return config_from_dict(cls, data, "facts task")


def _data_fields(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The data fields of the sequence: given once or everywhere alike (else an error)."""
    given: dict[str, Any] = {}
    for e in entries:
        for k in DATA_FIELDS:
            if k in e and given.setdefault(k, e[k]) != e[k]:
                raise ValueError(
                    f"facts: {k!r} differs between tasks ({given[k]!r} vs {e[k]!r}): one data set"
                )
    return given


def _importance(cfg: FactTaskConfig, t: FactTask) -> TaskDataset:
    parts = {"train": [(t.x_train, t.f_train)], "test": [(t.x_test, t.f_test)],
             "train+test": [(t.x_train, t.f_train), (t.x_test, t.f_test)]}[cfg.importance]  # fmt: skip
    x, f = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if cfg.importance_subjects is not None:  # facts pick the subset; Omega itself never sees them
        keep = torch.isin(all_facts()[f, 0], torch.tensor(cfg.importance_subjects))
        x = x[keep]
    return TaskDataset(x[: cfg.max_importance], None, 0)


def evaluate_map(trainer: Any, task: Task, fact_task: FactTask, validate: bool) -> dict[str, float]:
    """MAP over the task's facts from the Trainer's predictions (gathered over ranks)."""

    def one(x: torch.Tensor, f: torch.Tensor) -> float:
        pred = trainer.predict(TaskDataset(x, f, 0), metric_key_prefix="facts").predictions
        return facts_map(torch.as_tensor(pred), f, trainer.model.targets.detach().cpu(), fact_task.facts)

    out = {"map": one(fact_task.x_test, fact_task.f_test)}
    if validate:
        out["val_map"] = one(fact_task.x_val, fact_task.f_val)
    return out


def facts_sequence(model_args: Any, data_args: Any, training_args: Any) -> TaskSequence:
    """The `facts` kind: tasks from `data_args.domains`, a `FactEmbeddingModel` from `model_args`."""
    entries = [dict(d) for d in data_args.domains]
    shared = _data_fields(entries)
    configs = [FactTaskConfig.from_dict({**e, **shared}) for e in entries]
    c0 = configs[0]
    model_config = dict(model_args.model_config or {})
    kind = model_config.pop("backbone", "mlp")
    distance = model_config.pop("distance", "squared")
    if kind == "mlp":
        model_config.setdefault("in_features", 784)
    check_backbone_config(kind, model_config)
    validated = check_validation(configs, what="facts task")
    cache = Path(data_args.cache_dir or DEFAULT_CACHE).expanduser()
    spec = FactsSpec(c0.digits, c0.items, c0.data_seed, c0.train_per_fact, c0.test_per_fact)
    data = load_facts(spec, cache)
    groups = fact_groups(c0.split, c0.split_seed, c0.num_groups)
    names = [list(DIGITS), list(RELATIONS), list(ITEMS)]
    units = [unit_embeddings(n, cache)[0] for n in names]
    targets = fact_embeddings(data.facts, *units)
    tasks = []
    for cfg in configs:
        (t,) = make_tasks(data, [groups[cfg.group]], [cfg.name], cfg.validation, cfg.validation_seed)
        task = Task(
            name=cfg.name,
            train_dataset=TaskDataset(t.x_train[: cfg.max_train], t.f_train[: cfg.max_train], 0),
            importance_dataset=_importance(cfg, t),
            eval_dataset=TaskDataset(t.x_test, t.f_test, 0),
            data_collator=default_data_collator,
            evaluate=partial(evaluate_map, fact_task=t, validate=validated),
            training_overrides=cfg.training,
        )
        tasks.append(task)

    def model_init(path: str | None) -> FactEmbeddingModel:
        torch.manual_seed(training_args.seed)
        backbone = build_backbone(kind, pretrained=model_args.model_name_or_path, **dict(model_config))
        model = FactEmbeddingModel(backbone, targets, distance)
        if path is not None:  # Trainer.save_model writes a plain nn.Module's state dict here
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(Path(path) / "model.safetensors")))
        return model

    return TaskSequence(
        tasks=tasks,
        model_init=model_init,
        metrics={"map": True, **({"val_map": True} if validated else {})},
        primary_metric="map",
        unsupported_methods=dict(UNSUPPORTED),
    )
