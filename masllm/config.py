"""MASConfig: every convention of the importance estimate and the penalty, as a named field.

The defaults are the MAS paper's (Aljundi et al., ECCV 2018, Sec. 4.1-4.2): importance is the
mean over samples of |d ||F(x_k)||_2^2 / d theta| taken per sample (Eq. 2), F is the pre-softmax
output, the model is in eval mode, importance is summed across tasks, and the penalty is
`lambda * sum Omega (theta - theta*)^2` with no 1/2 (Eq. 3), so lambda means what it means in the
paper. Every departure is a field, documented in its help text.

Only conventions shared by every estimator live here. An estimator with options of its own has a
subclass registered with it (`EWCConfig` in `masllm.importance.estimators.fisher`, `SIConfig` in
`masllm.methods.si`); `MASConfig.from_dict` returns the registered class for the `method` it reads.
Values are checked, types included, at construction and again on every assignment.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from .registry import ESTIMATOR_CONFIGS, ESTIMATORS, MERGE_RULES, did_you_mean

STORAGE_DTYPES = ("float32", "bfloat16")


@dataclass
class MASConfig:
    """How importance (Omega) is estimated and how strongly changes to important weights are penalised."""

    method: str = field(
        default="mas",
        metadata={"help": "Importance estimator, by registry name (see masllm.ESTIMATORS)."},
    )
    reg_lambda: float = field(
        default=1.0,
        metadata={"help": "lambda of Eq. 3: weight of the penalty sum Omega (theta - theta*)^2. >= 0."},
    )
    output: Literal["logits", "hidden_states", "probs"] = field(
        default="logits",
        metadata={
            "help": "F in Eq. 2: pre-softmax outputs (paper), the last hidden states, or softmax "
            "probabilities. For sequence models only non-padding positions count."
        },
    )
    norm: Literal["l2_squared", "l2", "l1"] = field(
        default="l2_squared",
        metadata={
            "help": "Scalar whose gradient is g_ij(x_k): ||F||_2^2 (paper, Sec. 4.1), ||F||_2 or ||F||_1."
        },
    )
    abs_mode: Literal["per_sample", "per_batch"] = field(
        default="per_sample",
        metadata={
            "help": "Where |.| of Eq. 2 is taken: per sample (exact) or per micro-batch (cheaper; "
            "an approximation in which opposite gradients of samples cancel)."
        },
    )
    normalize: Literal["samples", "batches"] = field(
        default="samples",
        metadata={"help": "Divide the accumulated |g| by the number of samples N (Eq. 2) or of batches."},
    )
    model_mode: Literal["eval", "train"] = field(
        default="eval",
        metadata={
            "help": "Model mode during the importance pass: eval (no dropout, BN stats untouched) or train."
        },
    )
    merge: str = field(
        default="sum",
        metadata={
            "help": "How a new task's Omega joins the old one: sum (paper, Sec. 4.2), running mean over "
            "tasks, ema (d Omega + (1-d) Omega_new), decay (d Omega + Omega_new: old, unused knowledge "
            "fades; online EWC), or alpha (alpha-scaling: every task's Omega summed with weight 1/S_t, "
            "S_t its total, normalised so the weights sum to 1, reg_lambda then being sum_t alpha_t)."
        },
    )
    merge_decay: float = field(
        default=0.9,
        metadata={
            "help": "d of merge='ema' and merge='decay' (online EWC's gamma, Schwarz et al. 2018; "
            "d = 1 with 'decay' is the plain sum). In [0, 1]."
        },
    )
    half_penalty: bool = field(
        default=False,
        metadata={
            "help": "Use (lambda/2) sum Omega (theta - theta*)^2 instead of the paper's form without 1/2."
        },
    )
    importance_batch_size: int = field(
        default=8, metadata={"help": "Micro-batch size of the importance pass when given a Dataset."}
    )
    max_importance_samples: int | None = field(
        default=None, metadata={"help": "Stop the importance pass after this many samples (None: all)."}
    )
    storage_dtype: Literal["float32", "bfloat16"] = field(
        default="float32",
        metadata={
            "help": "dtype in which Omega and theta* are kept: float32 (8 bytes/param) or bfloat16 (4)."
        },
    )
    check_per_sample: bool = field(
        default=True,
        metadata={
            "help": "On the first batch, check that the per-sample gradients add up to the batch gradient "
            "(falls back to one sample per backward pass where they do not)."
        },
    )

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "_ready", True)

    def __setattr__(self, name: str, value: Any) -> None:
        """Re-validate on assignment: `config.reg_lambda = -5` raises and leaves the old value."""
        if not getattr(self, "_ready", False) or name not in _field_names(type(self)):
            return object.__setattr__(self, name, value)
        old = getattr(self, name)
        object.__setattr__(self, name, value)
        try:
            self.validate()
        except (TypeError, ValueError):
            object.__setattr__(self, name, old)
            raise

    def validate(self) -> None:
        """Raise TypeError / ValueError naming the field, the bad value and the accepted ones."""
        check_types(self)
        prefix = type(self).__name__
        for name, allowed in (("method", list(ESTIMATORS)), ("merge", list(MERGE_RULES))):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"{prefix}.{name}={value!r} is not one of {allowed}{did_you_mean(value, allowed)}"
                )
        if not math.isfinite(self.reg_lambda) or self.reg_lambda < 0:
            raise ValueError(f"{prefix}.reg_lambda must be a finite number >= 0, got {self.reg_lambda!r}")
        if not 0.0 <= self.merge_decay <= 1.0:
            raise ValueError(f"{prefix}.merge_decay must be in [0, 1], got {self.merge_decay}")
        if self.importance_batch_size < 1:
            raise ValueError(f"{prefix}.importance_batch_size must be >= 1, got {self.importance_batch_size}")
        if self.max_importance_samples is not None and self.max_importance_samples < 1:
            raise ValueError(
                f"{prefix}.max_importance_samples must be >= 1, got {self.max_importance_samples}"
            )
        if self.method == "online_ewc" and self.merge != "decay":
            raise ValueError(
                f"{prefix}.method='online_ewc' is the Fisher of EWC merged by F <- gamma F + F_new "
                f"(Schwarz et al. 2018): set merge='decay' and merge_decay=gamma (got merge={self.merge!r})"
            )

    @property
    def penalty_weight(self) -> float:
        """The factor in front of sum Omega (theta - theta*)^2 (Eq. 3)."""
        return self.reg_lambda / 2 if self.half_penalty else self.reg_lambda

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MASConfig:
        """The config `to_dict` wrote; on `MASConfig` itself, of the class registered for its method."""
        if not isinstance(data, dict):
            raise TypeError(f"A MASConfig is read from a dict, got {type(data).__name__}")
        target = cls
        registered = ESTIMATOR_CONFIGS.get(data.get("method", "mas"))
        if registered is not None and issubclass(registered, cls):
            target = registered
        known = _field_names(target)
        unknown = sorted(set(data) - known)
        if unknown:
            hints = "".join(did_you_mean(k, sorted(known)) for k in unknown[:1])
            raise ValueError(
                f"Unknown {target.__name__} fields {unknown}{hints}; known fields are {sorted(known)}"
            )
        return target(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def check_types(config: Any) -> None:
    """Each field's value against its annotation: bool is not a number, a str must be a listed literal."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        _check_value(f"{type(config).__name__}.{f.name}", getattr(config, f.name), hints[f.name])


def _check_value(where: str, value: Any, hint: Any) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}={value!r} is not one of {list(args)}{did_you_mean(value, args)}")
        return
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, True)
    if not ok:
        raise TypeError(f"{where} must be {hint.__name__}, got {value!r} ({type(value).__name__})")
