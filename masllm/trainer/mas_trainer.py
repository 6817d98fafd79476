"""MASTrainer: `transformers.Trainer` with the MAS penalty of Eq. 3 (see `masllm.trainer.mixin`)."""

from __future__ import annotations

from transformers import Trainer

from .mixin import MASMixin


class MASTrainer(MASMixin, Trainer):
    """A Trainer whose optimizer steps follow the gradient of L_n + lambda sum Omega (theta - theta*)^2."""
