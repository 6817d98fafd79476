"""MASConfig: every convention of the importance estimate and the penalty, as a named field.

The defaults are the MAS paper's (Aljundi et al., ECCV 2018, Sec. 4.1-4.2): importance is the
mean over samples of |d ||F(x_k)||_2^2 / d theta| taken per sample (Eq. 2), F is the pre-softmax
output, the model is in eval mode, importance is summed across tasks, and the penalty is
`lambda * sum Omega (theta - theta*)^2` with no 1/2 (Eq. 3), so lambda means what it means in the
paper. Every departure is a field, documented in its help text.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

OUTPUTS = ("logits", "hidden_states", "probs")
NORMS = ("l2_squared", "l2", "l1")
ABS_MODES = ("per_sample", "per_batch")
NORMALIZATIONS = ("samples", "batches")
MODEL_MODES = ("eval", "train")
STORAGE_DTYPES = ("float32", "bfloat16")


@dataclass
class MASConfig:
    """How importance (Omega) is estimated and how strongly changes to important weights are penalised."""

    method: str = field(
        default="mas",
        metadata={"help": "Importance estimator, by registry name (see masllm.importance.ESTIMATORS)."},
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
    merge: Literal["sum", "mean", "ema", "decay", "alpha"] = field(
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
    ewc_sampled: bool = field(
        default=False,
        metadata={
            "help": "EWC / online EWC Fisher: log-likelihood of labels sampled from the model's own "
            "predictions (true Fisher; no labels needed) instead of the data's labels (empirical Fisher)."
        },
    )
    si_xi: float = field(
        default=0.1,
        metadata={
            "help": "SI damping xi in Omega = sum_k w_k / ((Delta theta)^2 + xi) (Zenke et al. 2017, Eq. 5; "
            "FACIL's default 0.1). > 0."
        },
    )
    lwf_temperature: float = field(
        default=2.0,
        metadata={"help": "LwF distillation temperature T (Li & Hoiem 2016 use T = 2). > 0."},
    )
    lwf_weight: float = field(
        default=1.0,
        metadata={"help": "LwF weight lambda_o of the distillation loss (Li & Hoiem 2016: 1). >= 0."},
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

    def validate(self) -> None:
        """Raise ValueError naming the field, the bad value and the accepted ones."""
        choices = {
            "method": self._estimators(),
            "output": OUTPUTS,
            "norm": NORMS,
            "abs_mode": ABS_MODES,
            "normalize": NORMALIZATIONS,
            "model_mode": MODEL_MODES,
            "merge": self._merge_rules(),
            "storage_dtype": STORAGE_DTYPES,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"MASConfig.{name}={value!r} is not one of {list(allowed)}")
        if not isinstance(self.reg_lambda, (int, float)) or not math.isfinite(self.reg_lambda):
            raise ValueError(f"MASConfig.reg_lambda must be a finite number, got {self.reg_lambda!r}")
        if self.reg_lambda < 0:
            raise ValueError(f"MASConfig.reg_lambda must be >= 0, got {self.reg_lambda}")
        self._validate_method_fields()
        if self.importance_batch_size < 1:
            raise ValueError(
                f"MASConfig.importance_batch_size must be >= 1, got {self.importance_batch_size}"
            )
        if self.max_importance_samples is not None and self.max_importance_samples < 1:
            raise ValueError(
                f"MASConfig.max_importance_samples must be >= 1, got {self.max_importance_samples}"
            )

    def _validate_method_fields(self) -> None:
        """The hyper-parameters of the other methods (masllm.importance, si, lwf) and merge rules."""
        if not 0.0 <= self.merge_decay <= 1.0:
            raise ValueError(f"MASConfig.merge_decay must be in [0, 1], got {self.merge_decay}")
        for name in ("si_xi", "lwf_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MASConfig.{name} must be > 0, got {getattr(self, name)}")
        if not self.lwf_weight >= 0:
            raise ValueError(f"MASConfig.lwf_weight must be >= 0, got {self.lwf_weight}")
        if self.method == "online_ewc" and self.merge != "decay":
            raise ValueError(
                "MASConfig.method='online_ewc' is the Fisher of EWC merged by F <- gamma F + F_new "
                f"(Schwarz et al. 2018): set merge='decay' and merge_decay=gamma (got merge={self.merge!r})"
            )

    @staticmethod
    def _estimators() -> tuple[str, ...]:
        from .importance import ESTIMATORS

        return tuple(ESTIMATORS)

    @staticmethod
    def _merge_rules() -> tuple[str, ...]:
        from .omega import MERGE_FUNCTIONS

        return tuple(MERGE_FUNCTIONS)

    @property
    def penalty_weight(self) -> float:
        """The factor in front of sum Omega (theta - theta*)^2 (Eq. 3)."""
        return self.reg_lambda / 2 if self.half_penalty else self.reg_lambda

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MASConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown MASConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
