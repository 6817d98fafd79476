"""Name -> implementation tables that the rest of masllm fills in as it is imported (as PEFT's tuners do).

- `ESTIMATORS`: importance estimators, `fn(ctx, batches) -> ImportanceSums` (`masllm.importance`);
- `ESTIMATOR_CONFIGS`: the config class of an estimator with options of its own (`EWCConfig`,
  `SIConfig`); the others use `MASConfig`;
- `MERGE_RULES`: how a new task's Omega joins the old one (`masllm.omega.merge`).

This module imports nothing from masllm, so `MASConfig` can validate names against it without an
import cycle; importing `masllm` registers every built-in entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ESTIMATORS: dict[str, Callable[..., Any]] = {}
ESTIMATOR_CONFIGS: dict[str, type] = {}
MERGE_RULES: dict[str, Callable[..., None]] = {}


def register_estimator(*names: str, config_class: type | None = None) -> Callable:
    """Decorator: `fn` estimates importance under each of `names` (`MASConfig.method`)."""

    def register(fn: Callable) -> Callable:
        for name in names:
            ESTIMATORS[name] = fn
            if config_class is not None:
                ESTIMATOR_CONFIGS[name] = config_class
        return fn

    return register


def register_merge(name: str) -> Callable:
    """Decorator: `fn(old, new, state)` folds a task's Omega into the running one (`MASConfig.merge`)."""

    def register(fn: Callable) -> Callable:
        MERGE_RULES[name] = fn
        return fn

    return register


def did_you_mean(value: str, known: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    import difflib

    close = difflib.get_close_matches(str(value), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def looks_like_path(source: str) -> bool:
    """A local path rather than a Hub name (`name` or `org/name`) or a `builtin:` source: it starts with
    `/`, `.` or `~`, has more than one `/`, or ends with a file suffix."""
    if source.startswith("builtin:"):
        return False
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "." in source.rsplit("/", 1)[-1]
