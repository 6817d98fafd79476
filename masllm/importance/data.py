"""Unlabeled data -> micro-batches for the importance pass: a DataLoader for a dataset, a sample cap.

A list of per-sample dicts (each value a 1-D sequence or a scalar, as `datasets` rows are) is a
dataset written as a list, not a list of batches: it is batched like one. Samples whose
`attention_mask` is all 0 (nothing but padding) have no output to measure: they are left out of the
batches, so they do not count in Eq. 2's N, and the caller warns (`SkipEmpty.skipped`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from transformers import default_data_collator

from ..batch import Batch, inputs_of, is_map_dataset
from .segments import first_samples, segments_of


class SampleList(Dataset):
    """A list of per-sample dicts as a map-style dataset (split across ranks and batched as one)."""

    def __init__(self, samples: list | tuple) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Any:
        return self.samples[i]


def as_samples(data: Any) -> Any:
    """`SampleList(data)` for a list of per-sample dicts; anything else unchanged. A dict is a sample
    when none of its tensors has two or more dims (a batch of sequences is (B, T))."""
    if not isinstance(data, (list, tuple)) or not data or not all(isinstance(d, Mapping) for d in data):
        return data
    values = [v for v in data[0].values() if isinstance(v, (torch.Tensor, list, int, float))]
    if values and all(not isinstance(v, torch.Tensor) or v.dim() <= 1 for v in values):
        return SampleList(data)
    return data


class SkipEmpty:
    """The batches without their all-padding samples (`attention_mask` all 0); counts what it drops."""

    def __init__(self, batches: Iterable[Batch]) -> None:
        self.batches, self.skipped = batches, 0

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.batches:
            mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
            if not isinstance(mask, torch.Tensor) or mask.dim() == 0:
                yield batch
                continue
            keep = mask.reshape(mask.shape[0], -1).sum(1) > 0
            if bool(keep.all()):
                yield batch
                continue
            self.skipped += int((~keep).sum())
            if bool(keep.any()):
                B = mask.shape[0]
                yield {k: v[keep] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == B else v
                       for k, v in batch.items()}  # fmt: skip


def as_batches(data: Iterable | DataLoader, batch_size: int, collate_fn: Any = None) -> Iterable:
    """A DataLoader, list or other iterable of batches is used as is; a map-style dataset gets a DataLoader."""
    if isinstance(data, DataLoader) or not is_map_dataset(data):
        return data
    if len(data) == 0:
        raise ValueError("The importance dataset is empty: Omega needs at least one sample (Eq. 2)")
    if collate_fn is None:
        collate_fn = default_data_collator if isinstance(data[0], Mapping) else default_collate
    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


def limit_samples(batches: Iterable, max_samples: int | None) -> Iterator[Batch]:
    """Yield batches until `max_samples` samples (sequences, in a packed batch) have been seen; the
    last one is cut to the samples still wanted."""
    if max_samples is None:
        yield from batches
        return
    seen = 0
    for batch in batches:
        if seen >= max_samples:
            return
        seg = segments_of(inputs_of(batch))
        if seen + seg.num_samples > max_samples:
            yield from first_samples(batch, seg, max_samples - seen)
            return
        seen += seg.num_samples
        yield batch
