"""The methods the continual loop runs, and what each adds to it (the one place where they differ).

`Method(estimator=name)` is a penalty method: MASTrainer with lambda sum Omega (theta - theta*)^2
(Eq. 3), Omega from that registered estimator. Every key of `ESTIMATORS` is such a method; the
table below lists those that differ (finetune, online EWC, SI, LwF, IMM, l-MAS), with the DeepSpeed
ZeRO stages each runs under and whether it runs under FSDP2, so that an unsupported combination is
refused before any training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainerCallback

from ..config import MASConfig
from ..methods import LwFTrainer, SynapticIntelligence
from ..registry import ESTIMATORS, did_you_mean
from ..trainer import MASTrainer

FINETUNE = "finetune"


@dataclass(frozen=True)
class Method:
    """How a method plugs into the loop. The default, `Method(estimator=name)`, is a penalty method:
    MASTrainer with lambda sum Omega (theta - theta*)^2 (Eq. 3), Omega from that estimator."""

    estimator: str | None  # MASConfig.method of Omega, estimated after each task (None: no Omega)
    trainer_class: type[MASTrainer] = MASTrainer  # for tasks k >= 1 (task 0 has nothing to keep)
    callbacks: Callable[[MASConfig], list[TrainerCallback]] = lambda config: []
    strength: str = "reg_lambda"  # the config field that `--compare name=value` sets (MASConfig or LwFConfig)
    fixed: dict[str, Any] = field(default_factory=dict)  # MASConfig fields the method requires
    imm: Literal["mean", "mode"] | None = None  # row k evaluates the IMM merge of task models 0..k
    records_training: bool = False  # importance recorded while training: never resumed nor shared
    zero_stages: tuple[int, ...] = (0, 1, 2, 3)  # the DeepSpeed ZeRO stages it runs under
    zero_note: str = ""  # why not under the others
    fsdp2: bool = True  # runs under FSDP2 (parameters, Omega and theta* as DTensor shards)
    fsdp2_note: str = ""  # why not


_SUMS_OUTSIDE_BACKWARD = (
    "its sums are built by forward hooks, outside the backward passes that reduce the shards"
)


# Methods that differ from `Method(estimator=name)`; every other key of ESTIMATORS is that.
METHODS: dict[str, Method] = {
    FINETUNE: Method(estimator=None),
    # Online EWC (Schwarz et al. 2018): EWC's Fisher merged by F <- gamma F + F_new, gamma = merge_decay.
    "online_ewc": Method(estimator="online_ewc", fixed={"merge": "decay"}),
    # SI (Zenke et al. 2017): the path integral is recorded by a callback during training (masllm.methods.si).
    "si": Method(
        estimator="si",
        callbacks=lambda config: [SynapticIntelligence(config)],
        records_training=True,
        zero_stages=(),
        zero_note="its callback reads full gradients and weights around each optimizer step (masllm.methods.si)",
        fsdp2=False,
        fsdp2_note="its callback keeps full-size path integrals of the sharded weights (masllm.methods.si)",
    ),
    # LwF (Li & Hoiem 2016): no Omega; distillation to a frozen copy of the model before the task,
    # weight lambda_o = lwf_weight (masllm.methods.lwf).
    "lwf": Method(
        estimator=None,
        trainer_class=LwFTrainer,
        strength="lwf_weight",
        zero_stages=(0, 1, 2),
        zero_note="its teacher, a copy of the model, would hold ZeRO-3's empty parameter placeholders",
        fsdp2=False,
        fsdp2_note="its teacher, a copy of the model, would be a second sharded module (not supported yet)",
    ),
    # IMM (Lee et al. 2017): L2-transfer training (the l2 method), then the task models are merged:
    # mean (Eq. 3) or mode with each task's diagonal Fisher (Eq. 7) (masllm.methods.imm).
    **{
        f"{kind}_imm": Method(
            estimator="l2",
            imm=kind,
            zero_stages=(),
            zero_note="the merge is loaded into the model's full (unpartitioned) parameters",
            fsdp2=False,
            fsdp2_note="the merge is loaded into the model's full (unsharded) parameters",
        )
        for kind in ("mean", "mode")
    },
    # l-MAS (MAS Sec. 4.3): Hebbian products of activations, no backward through the network.
    "lmas": Method(
        estimator="lmas",
        zero_stages=(),
        zero_note=_SUMS_OUTSIDE_BACKWARD,
        fsdp2=False,
        fsdp2_note=_SUMS_OUTSIDE_BACKWARD,
    ),
}


def methods() -> list[str]:
    """Every method the recipe can run: the table above plus each registered importance estimator."""
    extra = [m for m in METHODS if m != FINETUNE and m not in ESTIMATORS]
    return [FINETUNE, *ESTIMATORS, *extra]


def method_of(name: str) -> Method:
    """The wiring of method `name` (ValueError listing every accepted name when unknown)."""
    if name in METHODS:
        return METHODS[name]
    if name in ESTIMATORS:
        return Method(estimator=name)
    raise ValueError(f"Unknown method {name!r}{did_you_mean(name, methods())}; known methods are {methods()}")
