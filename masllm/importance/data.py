"""Unlabeled data -> micro-batches for the importance pass: a DataLoader for a dataset, a sample cap."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from torch.utils.data import DataLoader, default_collate
from transformers import default_data_collator

from ..batch import Batch, inputs_of, is_map_dataset
from .segments import first_samples, segments_of


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
