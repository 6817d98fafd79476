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

import sys as _sys
from pathlib import Path as _Path

from ._version import __version__

_API = {  # public name -> the part of masllm that defines it
    "ESTIMATORS": "importance",
    "DeploymentImportance": "methods",
    "DivergenceError": "trainer",
    "EWCConfig": "importance",
    "LwFConfig": "methods",
    "LwFTrainer": "methods",
    "MASConfig": "config",
    "MASMixin": "trainer",
    "MASTrainer": "trainer",
    "Omega": "omega",
    "SIConfig": "methods",
    "SynapticIntelligence": "methods",
    "compute_importance": "importance",
    "mean_imm": "methods",
    "mode_imm": "methods",
}
__all__ = [*_API, "__version__"]


def _load_api() -> None:
    """Import the public API (and so register every estimator, merge rule and method)."""
    from . import config, importance, methods, omega, trainer

    parts = {
        "config": config,
        "importance": importance,
        "methods": methods,
        "omega": omega,
        "trainer": trainer,
    }
    globals().update({name: getattr(parts[part], name) for name, part in _API.items()})


def __getattr__(name: str):  # PEP 562: the API on first use when the package was imported lazily
    if name in __all__:
        _load_api()
        return globals()[name]
    raise AttributeError(f"module 'masllm' has no attribute {name!r}")


def _started_as_command() -> bool:
    """The `masllm` command checks its YAML before torch is imported (see masllm.cli): only then is
    the API imported on first use instead of here."""
    argv = getattr(_sys, "orig_argv", [])
    by_module = "-m" in argv and argv[argv.index("-m") + 1 : argv.index("-m") + 2] == ["masllm.cli"]
    return by_module or bool(_sys.argv) and _Path(_sys.argv[0]).name in ("masllm", "masllm.exe")


if not _started_as_command():
    _load_api()
