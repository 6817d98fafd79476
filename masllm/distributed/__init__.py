"""Everything that knows about ranks: collectives (`comm`), ZeRO's slices of parameters (`zero`, the
one module that imports deepspeed), FSDP2's DTensor shards (`fsdp`, the one module that knows
DTensor / fully_shard), the slice description (`shard`) and a clean exit (`teardown`).

Nothing here imports the rest of masllm: Omega, importance and the trainer build on it.
"""

from .comm import all_reduce_, all_reduce_max, all_reduce_sum, barrier, world
from .shard import Shard
from .teardown import exit_process

__all__ = ["Shard", "all_reduce_", "all_reduce_max", "all_reduce_sum", "barrier", "exit_process", "world"]
