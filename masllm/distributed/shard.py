"""A rank's slice of one parameter, in the flat layout ZeRO partitions by (elements [start, start + numel)).

Omega and theta* under ZeRO are kept as exactly these slices, so the penalty needs no
communication; the checkpoint code gathers and re-cuts them by the same description.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    """A rank's slice of one parameter: elements [start, start + numel) of its flattened full tensor."""

    start: int
    numel: int
    shape: tuple[int, ...]

    @property
    def full_numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    def slice_of(self, full: torch.Tensor) -> torch.Tensor:
        """This shard's elements of a full tensor (a view when `full` is contiguous)."""
        return full.reshape(-1).narrow(0, self.start, self.numel)
