"""`MASSFTTrainer`: TRL's `SFTTrainer` with the MAS penalty of Eq. 3 (`pip install masllm[trl]`).

    from masllm.integrations.trl import MASSFTTrainer
    trainer = MASSFTTrainer(model, args=SFTConfig(...), train_dataset=task, peft_config=lora,
                            mas_config=MASConfig(reg_lambda=1.0), omega=omega)
    trainer.train()                                                       # logs `mas_penalty`
    omega.merge(compute_importance(trainer.model, trainer.train_dataset, omega.config,
                                   collate_fn=trainer.data_collator, task_name="task"))

Everything `MASMixin` does for a `transformers.Trainer` holds here (masllm.trainer.mixin): the
penalty's gradient after the last micro-batch's backward and before clipping, inside the ZeRO
optimizer's step under DeepSpeed, Omega in checkpoints and resume, the model card, the logs. What
SFT adds, and what it means for Omega:

- `peft_config=LoraConfig(...)`: SFTTrainer wraps the model in a `PeftModel`; only the adapter
  trains, so Omega, theta* and the penalty cover the adapter parameters alone (the frozen base needs
  none). Keep the same adapter for the whole sequence: after the first task pass `trainer.model` (the
  `PeftModel`) and no `peft_config` -- TRL refuses both, and a new adapter per task would leave the
  protected one untrained, with nothing left to penalise.
- packing / `padding_free=True`: the collator puts several sequences in one row; importance
  (`compute_importance` on its batches) takes each sequence as a sample of Eq. 2, not the row
  (masllm.importance.segments).
- `bf16=True` (SFTConfig's default): the forward runs under autocast; importance stays on the exact
  batched path, its sums in float32.
- `gradient_checkpointing=True` (SFTConfig's default): Omega is the same, bit for bit.
"""

from __future__ import annotations

from trl import SFTTrainer

from ..trainer import MASMixin

__all__ = ["MASSFTTrainer"]


class MASSFTTrainer(MASMixin, SFTTrainer):
    """An SFTTrainer whose optimizer steps follow the gradient of L_n + lambda sum Omega (theta - theta*)^2.

    Takes `mas_config` and `omega` (an `Omega`, or a directory it was saved in) besides SFTTrainer's
    arguments. With `peft_config` the Omega given must name the `PeftModel`'s adapter parameters."""
