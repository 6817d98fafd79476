"""MAS inside other libraries' trainers, each an optional extra imported only when asked for.

- `masllm.integrations.trl`: `MASSFTTrainer`, TRL's `SFTTrainer` with the MAS penalty
  (`pip install masllm[trl]`).

Importing `masllm` imports none of them.
"""
