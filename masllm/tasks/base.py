"""The contract between a task kind and the continual loop: `Task` and `TaskSequence`.

A kind (`causal_lm`, `vision`, `facts`) is a builder `(model_args, data_args, training_args) ->
TaskSequence`, registered in `masllm.tasks.TASK_KINDS`; the loop (`masllm.continual`) sees nothing
else of it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from torch import nn

from ..registry import did_you_mean

C = TypeVar("C")


@dataclass
class Task:
    """One step of a sequence: train on `train_dataset`, estimate Omega on `importance_dataset`
    (no labels needed), and be evaluated on `eval_dataset` after every step.

    `evaluate(trainer, task)` returns the metrics that feed R (names listed in the sequence's
    `metrics`); None uses `evaluate_with_trainer` (`Trainer.evaluate` + perplexity).
    """

    name: str
    train_dataset: Any
    importance_dataset: Any
    eval_dataset: Any
    data_collator: Callable | None = None
    evaluate: Callable[[Any, Task], dict[str, float]] | None = None
    training_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskSequence:
    """What a kind builds: the tasks in order and how to make the model.

    `model_init(path)` returns the model, freshly built (`path=None`) or loaded from a directory the
    recipe saved with `Trainer.save_model`. `metrics` maps each reported metric to True when higher
    is better; `primary_metric` is the one the printed table leads with. `trainer_kwargs` go to every
    Trainer (e.g. `compute_metrics`). `trainer_class`, when set, builds every step's Trainer (called
    like `MASTrainer`) instead of the method's: the chat kind's MASSFTTrainer with its SFTConfig.
    `unsupported_methods` maps a method the kind cannot run to why (refused before any training).
    `validation_metric` is the metric lambda is chosen on (`masllm.continual.selection`), when the
    tasks hold out validation data.
    """

    tasks: list[Task]
    model_init: Callable[[str | None], nn.Module]
    metrics: dict[str, bool]
    primary_metric: str
    processing_class: Any = None
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    trainer_class: Callable[..., Any] | None = None
    unsupported_methods: dict[str, str] = field(default_factory=dict)
    validation_metric: str | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("A task sequence needs at least one task")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"Task names must be unique, got {names}")
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} is not one of {list(self.metrics)}")
        if self.validation_metric is not None and self.validation_metric not in self.metrics:
            raise ValueError(
                f"validation_metric {self.validation_metric!r} is not one of {list(self.metrics)}"
            )

    def check_method(self, method: str) -> None:
        """ValueError when this kind cannot run `method`, saying why."""
        if method in self.unsupported_methods:
            raise ValueError(
                f"Method {method!r} does not fit this task kind: {self.unsupported_methods[method]}"
            )


def evaluate_with_trainer(trainer: Any, task: Task) -> dict[str, float]:
    """The metrics of the Trainer's `compute_metrics` on the task's eval set (any world size)."""
    prefix = f"eval_{task.name}"
    out = trainer.evaluate(task.eval_dataset, metric_key_prefix=prefix)
    skip = {"loss", "runtime", "samples_per_second", "steps_per_second", "model_preparation_time"}
    metrics = {k.removeprefix(prefix + "_"): v for k, v in out.items() if k.startswith(prefix + "_")}
    return {k: float(v) for k, v in metrics.items() if k not in skip}


def check_validation(configs: list[Any], what: str = "task") -> bool:
    """Every task config (with `name` and a `validation` fraction) holds out validation data, or none
    does: the lambda rule averages the validation metric over all tasks. True when they all do."""
    missing = [c.name for c in configs if not c.validation > 0]
    if missing and len(missing) != len(configs):
        raise ValueError(f"Give every {what} a validation fraction or none: {missing} have none")
    return not missing


def config_from_dict(cls: type[C], data: dict[str, Any], what: str) -> C:
    """`cls(**data)` for one entry of the YAML's `domains:`, refusing (and naming) unknown fields."""
    if not isinstance(data, dict):
        raise ValueError(f"Each {what} entry must be a mapping of fields, got {data!r}")
    known = sorted(f.name for f in fields(cls))
    unknown = sorted(set(data) - set(known))
    if unknown:
        entry = f" {data['name']!r}" if "name" in data else ""
        raise ValueError(
            f"Unknown {what} fields {unknown} in{entry or ' an entry'}{did_you_mean(unknown[0], known)}; "
            f"known fields are {known}"
        )
    return cls(**data)


def check_config_keys(
    model_type: str, config: Mapping[str, Any], allowed: Collection[str] = (), what: str = "model_config"
) -> None:
    """Every key of `config` must be one the transformers config class of `model_type` uses (a field,
    an `attribute_map` alias, or an older name it converts, e.g. `rope_theta`) or be in `allowed`: a
    config class keeps any other keyword as a stray attribute, so a typo (`n_layers` for `n_layer`)
    would silently build the default model."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        known_types = sorted(CONFIG_MAPPING.keys())
        raise ValueError(f"{what}: unknown model_type {model_type!r}{did_you_mean(model_type, known_types)}")
    cls = CONFIG_MAPPING[model_type]
    given = {k: v for k, v in config.items() if k != "model_type" and k not in allowed}
    default = cls().to_dict()
    try:
        built = cls(**given).to_dict()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: {cls.__name__} refuses it: {e}") from None
    unknown = sorted(k for k in given if k in built and k not in default)  # kept as a stray attribute
    if unknown:
        known = sorted({*default, *getattr(cls, "attribute_map", {})})
        raise ValueError(
            f"{what}: {unknown} not a field of {cls.__name__} (model_type {model_type!r})"
            f"{did_you_mean(unknown[0], known)}"
        )
