"""The method family beyond MAS's own estimators, each with its small config next to it (TRL-style):

- `si`: `SIConfig` + `SynapticIntelligence` (callback) + the 'si' estimator (Zenke et al. 2017);
- `lwf`: `LwFConfig` + `LwFTrainer` (distillation baseline, Li & Hoiem 2016);
- `imm`: `mean_imm`, `mode_imm` (merging task models, Lee et al. 2017);
- `deployment`: `DeploymentImportance` (Omega from the inputs a model serves, MAS Sec. 4.4).
"""

from .deployment import DeploymentImportance
from .imm import mean_imm, mode_imm
from .lwf import LwFConfig, LwFTrainer
from .si import SIConfig, SynapticIntelligence

__all__ = [
    "DeploymentImportance",
    "LwFConfig",
    "LwFTrainer",
    "SIConfig",
    "SynapticIntelligence",
    "mean_imm",
    "mode_imm",
]
