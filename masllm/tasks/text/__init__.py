"""The text task kinds: `causal_lm` (text domains, `domains`, packed into blocks, `packing`; the
kind and its metrics, `kind`) and `chat` (chat / instruction domains trained with TRL's SFTTrainer,
`chat`); `model` loads their causal LM (GGUF, dtype, attention, one LoRA adapter)."""

from .chat import ChatDomainConfig, chat_sequence
from .domains import BUILTIN_SOURCES, DomainConfig
from .kind import causal_lm_collator, causal_lm_sequence
from .model import load_causal_lm, lora_kwargs
from .packing import load_domain, load_or_train_tokenizer

__all__ = [
    "BUILTIN_SOURCES",
    "ChatDomainConfig",
    "DomainConfig",
    "causal_lm_collator",
    "causal_lm_sequence",
    "chat_sequence",
    "load_causal_lm",
    "load_domain",
    "load_or_train_tokenizer",
    "lora_kwargs",
]
