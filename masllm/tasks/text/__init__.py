"""The `causal_lm` task kind: text domains (`domains`), their packed blocks (`packing`) and the
kind itself with its metrics (`kind`)."""

from .domains import BUILTIN_SOURCES, DomainConfig
from .kind import causal_lm_collator, causal_lm_sequence
from .packing import load_domain, load_or_train_tokenizer

__all__ = [
    "BUILTIN_SOURCES",
    "DomainConfig",
    "causal_lm_collator",
    "causal_lm_sequence",
    "load_domain",
    "load_or_train_tokenizer",
]
