"""Omega: importance + anchors theta*, merged across tasks, on disk and on the Hub.

- `container`: the `Omega` mapping (merge, anchors, a rank's slices under ZeRO);
- `merge`: the merge rules by name (sum, mean, ema, decay, alpha);
- `validation`: dtype / finiteness / sign / name and shape checks;
- `io`: safetensors + json files (plain dicts), `checkpoint`: `Omega` <-> those files;
- `sharded`: a ZeRO-sharded Omega <-> the same files, one full tensor at a time;
- `hub`: by repo id, `push_to_hub`, the model card section.
"""

from . import merge  # noqa: F401  (registers the merge rules)
from .container import Omega
from .validation import check_against_model, check_tensors

__all__ = ["Omega", "check_against_model", "check_tensors"]
