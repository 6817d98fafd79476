"""masllm: continual fine-tuning with Memory Aware Synapses (Aljundi et al., ECCV 2018).

Public API:
- `MASConfig`: the conventions of the importance estimate and the penalty;
- `compute_importance(model, data, config) -> Omega`: Eq. 2 over unlabeled data;
- `Omega`: importance + anchors theta*, merged across tasks, saved as safetensors + json;
- `MASTrainer` (a `transformers.Trainer`) and `MASMixin` (for any Trainer subclass): the penalty
  of Eq. 3.

The method family, same penalty: `MASConfig.method` in `ESTIMATORS` (mas, mas_vector, lmas, spp,
ewc, online_ewc, l2, si), merge rules sum / mean / ema / decay / alpha; `EWCConfig`, `SIConfig`
(their options), `SynapticIntelligence` (the callback SI needs), `LwFConfig` + `LwFTrainer`
(distillation baseline), `mean_imm` / `mode_imm` (IMM baseline), `DeploymentImportance` (Omega from
the inputs a model serves, Sec. 4.4). The layout: docs/architecture.md.
"""

from ._version import __version__
from .config import MASConfig
from .importance import ESTIMATORS, EWCConfig, compute_importance
from .methods import (
    DeploymentImportance,
    LwFConfig,
    LwFTrainer,
    SIConfig,
    SynapticIntelligence,
    mean_imm,
    mode_imm,
)
from .omega import Omega
from .trainer import DivergenceError, MASMixin, MASTrainer

__all__ = [
    "ESTIMATORS",
    "DivergenceError",
    "DeploymentImportance",
    "EWCConfig",
    "LwFConfig",
    "LwFTrainer",
    "MASConfig",
    "MASMixin",
    "MASTrainer",
    "Omega",
    "SIConfig",
    "SynapticIntelligence",
    "compute_importance",
    "mean_imm",
    "mode_imm",
    "__version__",
]
