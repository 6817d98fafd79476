"""Task kinds of the continual loop: each turns the recipe's arguments into a `TaskSequence`.

`TASK_KINDS[kind](model_args, data_args, training_args) -> TaskSequence`; the contract (`Task`,
`TaskSequence`) is in `base`. Kinds: `causal_lm` (text domains, `text/`), `chat` (chat / instruction
domains trained with TRL's SFTTrainer, `text/chat.py`), `vision` (image classification, one head
per task, `vision/`), `facts` (fact learning: an embedding head with S, P, O outputs, MAP
retrieval, `facts/`).
"""

from collections.abc import Callable
from typing import Any

from .base import Task, TaskSequence, evaluate_with_trainer
from .facts.kind import facts_sequence
from .text.chat import chat_sequence
from .text.kind import causal_lm_sequence
from .vision.kind import vision_sequence

KindBuilder = Callable[[Any, Any, Any], TaskSequence]
TASK_KINDS: dict[str, KindBuilder] = {
    "causal_lm": causal_lm_sequence,
    "chat": chat_sequence,
    "facts": facts_sequence,
    "vision": vision_sequence,
}

__all__ = ["TASK_KINDS", "Task", "TaskSequence", "evaluate_with_trainer"]
