"""What a batch is and what a model returns, whatever their form: one place for every module that asks.

A batch is a dict of tensors (transformers style), a tensor, or a tuple/list whose first element is
the input (e.g. `(images, labels)`). Label keys are dropped for the model input (importance needs no
labels). A model output is a tensor, a `ModelOutput`/dict with `logits`, or a tuple.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

LABEL_KEYS = ("labels", "label", "label_ids")
Batch = Any


def is_map_dataset(data: Any) -> bool:
    """A map-style dataset (indexable, sized), as opposed to a list of batches or an iterator."""
    return hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (list, tuple))


def inputs_of(batch: Batch) -> Batch:
    """The model input: label keys and non-tensor fields of a dict dropped; first element of a tuple."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in LABEL_KEYS and isinstance(v, torch.Tensor)}
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def labels_in(batch: Batch) -> torch.Tensor | None:
    """The labels a batch carries: a dict's label key, or the second element of an (x, y) tuple."""
    if isinstance(batch, Mapping):
        return next((batch[k] for k in LABEL_KEYS if isinstance(batch.get(k), torch.Tensor)), None)
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    return None


def batch_size(batch: Batch) -> int:
    x = inputs_of(batch)
    if isinstance(x, Mapping):
        if not x:
            raise ValueError("A batch dict holds no tensors")
        x = next(iter(x.values()))
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError(f"Cannot tell the batch size of a {type(x).__name__}")
    return x.shape[0]


def slice_batch(batch: Batch, start: int, stop: int, labels: bool = False) -> Batch:
    """Samples [start, stop): of the model input, or with `labels` of the whole batch (labels too)."""
    B = batch_size(batch)
    if not labels:
        batch = inputs_of(batch)

    def cut(v: Any) -> Any:
        return v[start:stop] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == B else v

    if isinstance(batch, Mapping):
        return {k: cut(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(cut(v) for v in batch)
    return cut(batch)


def to_device(x: Batch, device: torch.device) -> Batch:
    if isinstance(x, Mapping):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def forward(model: nn.Module, x: Batch, **kwargs: Any) -> Any:
    return model(**x, **kwargs) if isinstance(x, Mapping) else model(x)


def attention_mask(x: Batch, shape: tuple[int, ...] | torch.Size, extra_dims: int = 0) -> torch.Tensor | None:
    """The input's `attention_mask` when it matches the leading (B, T) dims of `shape` and `shape` has
    at least `extra_dims` more (1 for a (B, T, V) output: a classifier's (B, C) is not per position)."""
    mask = x.get("attention_mask") if isinstance(x, Mapping) else None
    if mask is None or len(shape) < mask.dim() + extra_dims:
        return None
    return mask if tuple(shape[: mask.dim()]) == tuple(mask.shape) else None


def masked(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`t` (B, T, ...) with the positions where `mask` (B, T) is 0 zeroed (padding left out)."""
    if mask is None:
        return t
    return t * mask.reshape(*mask.shape, *([1] * (t.dim() - mask.dim()))).to(t.dtype)


def logits_of(outputs: Any) -> torch.Tensor:
    """The pre-softmax outputs of a model call, whatever container it returned them in."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if getattr(outputs, "logits", None) is not None:
        return outputs.logits
    if isinstance(outputs, Mapping) and outputs.get("logits") is not None:
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)) and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise ValueError(f"Cannot find logits in a model output of type {type(outputs).__name__}")


def last_hidden_state_of(outputs: Any) -> torch.Tensor:
    """The last hidden states of a model call (asked for with `output_hidden_states=True`)."""
    if getattr(outputs, "last_hidden_state", None) is not None:
        return outputs.last_hidden_state
    if getattr(outputs, "hidden_states", None) is not None:
        return outputs.hidden_states[-1]
    raise ValueError("output='hidden_states' but the model returned no hidden states")
