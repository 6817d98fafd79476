"""masllm: continual fine-tuning with Memory Aware Synapses (Aljundi et al., ECCV 2018).

Public API:
- `MASConfig`: the conventions of the importance estimate and the penalty;
- `compute_importance(model, data, config) -> Omega`: Eq. 2 over unlabeled data;
- `Omega`: importance + anchors theta*, merged across tasks, saved as safetensors + json;
- `MASTrainer`: a `transformers.Trainer` applying the penalty of Eq. 3.

The method family, same penalty: `MASConfig.method` in `ESTIMATORS` (mas, mas_vector, lmas, spp,
ewc, online_ewc, l2, si), merge rules sum / mean / ema / decay / alpha; `SynapticIntelligence`
(the callback SI needs), `LwFTrainer` (distillation baseline), `mean_imm` / `mode_imm` (IMM
baseline), `DeploymentImportance` (Omega from the inputs a model serves, Sec. 4.4).
"""

__version__ = "0.1.0"

from .config import MASConfig
from .deployment import DeploymentImportance
from .imm import mean_imm, mode_imm
from .importance import ESTIMATORS, compute_importance
from .lwf import LwFTrainer
from .omega import Omega
from .si import SynapticIntelligence
from .trainer import MASTrainer

__all__ = [
    "ESTIMATORS",
    "DeploymentImportance",
    "LwFTrainer",
    "MASConfig",
    "MASTrainer",
    "Omega",
    "SynapticIntelligence",
    "compute_importance",
    "mean_imm",
    "mode_imm",
    "__version__",
]
