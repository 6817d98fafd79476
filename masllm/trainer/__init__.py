"""The penalty of Eq. 3 inside a Trainer: `MASMixin` for any `transformers.Trainer` subclass,
`MASTrainer` = MASMixin + Trainer; `zero` holds the DeepSpeed ZeRO path (a rank's slices).
TRL's `SFTTrainer` with the same behaviour: `masllm.integrations.trl.MASSFTTrainer`."""

from .guards import DivergenceError
from .mas_trainer import MASTrainer
from .mixin import MASMixin

__all__ = ["DivergenceError", "MASMixin", "MASTrainer"]
