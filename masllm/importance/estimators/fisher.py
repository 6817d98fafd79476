"""EWC and online EWC: the diagonal Fisher information as importance (Kirkpatrick et al. 2017).

    F_ij = 1/N sum_k ( d log p(y_k | x_k) / d theta_ij )^2

taken per sample (one backward pass per micro-batch, `PerSampleAbsGrad` with a square transform),
not as the square of a batch gradient (which many libraries use and which underestimates F).
- empirical Fisher (default, `EWCConfig(ewc_sampled=False)`): y_k are the data's labels, as in the MAS
  paper's EWC baseline (Table 1: EWC needs labels). Labels come from a dict batch's `labels`,
  the second element of a `(x, y)` tuple, or, for a causal LM without labels, the input ids
  (next-token targets; HF's shift by one).
- true Fisher (`EWCConfig(ewc_sampled=True)`): y_k is sampled from the model's own prediction p(.|x_k);
  no labels needed (Kirkpatrick et al.'s definition; usable on unlabeled deployment data).
For sequence models a sample is a sequence: log p(y_k|x_k) sums over its non-padding positions.

Penalty: the shared lambda sum F (theta - theta*)^2 (Eq. 3 of MAS). EWC writes it with lambda/2
(`half_penalty=True` gives exactly that form). There is no universal default strength: EWC tunes
lambda per benchmark (FACIL's default lamb=5000 with the 1/2 form, i.e. reg_lambda=2500 here
without it, for image classifiers trained with plain cross-entropy).

Online EWC (Schwarz et al. 2018): the same Fisher, merged by F <- gamma F + F_new (MASConfig
`merge='decay'`, `merge_decay=gamma`; `method='online_ewc'` requires it). The MAS paper's EWC uses
a running sum (gamma = 1: `method='ewc'` with the default `merge='sum'`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ...batch import Batch, attention_mask, forward, inputs_of, labels_in, logits_of, masked, to_device
from ...config import MASConfig
from ...registry import register_estimator
from ..accumulate import accumulate_per_sample
from ..context import ImportanceContext, ImportanceSums
from ..segments import Segments, forward_kwargs


@dataclass
class EWCConfig(MASConfig):
    """MASConfig for EWC / online EWC: which Fisher (empirical, or sampled from the model)."""

    method: str = field(default="ewc", metadata={"help": "'ewc' or 'online_ewc' (merge='decay')."})
    ewc_sampled: bool = field(
        default=False,
        metadata={
            "help": "EWC / online EWC Fisher: log-likelihood of labels sampled from the model's own "
            "predictions (true Fisher; no labels needed) instead of the data's labels (empirical Fisher)."
        },
    )


def _causal_lm_classes() -> set[str]:
    names: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(v if isinstance(v, (tuple, list)) else [v])
    return names


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers causal LM (PEFT-wrapped or not): logits at t predict the token at t+1. The MRO is
    searched: FSDP2's `fully_shard` turns the model's class into a subclass (`FSDPGPT2LMHeadModel`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = _causal_lm_classes()
    return any(cls.__name__ in names for cls in type(base).__mro__)


def labels_of(batch: Batch, x: Batch, model: nn.Module, seg: Segments | None = None) -> torch.Tensor:
    labels = labels_in(batch)
    if labels is not None:
        return labels
    if isinstance(batch, Mapping) and is_causal_lm(model) and "input_ids" in x:
        if seg is None or not seg.packed:
            return x["input_ids"]
        labels = x[
            "input_ids"
        ].clone()  # a packed sequence's first token is not predicted from the one before
        labels.view(-1)[torch.tensor([a for a, _ in seg.bounds], device=labels.device)] = -100
        return labels
    raise ValueError(
        "The empirical Fisher (EWC) needs labels: a 'labels' key, an (x, y) tuple, or a causal LM's "
        "input ids; use EWCConfig(ewc_sampled=True) to sample them from the model instead"
    )


def sampled_log_likelihood(logits: torch.Tensor, x: Batch) -> torch.Tensor:
    """log p(y|x) per sample, y ~ p(.|x) drawn at every (non-padding) position: (B,)."""
    logp = logits.float().log_softmax(-1)  # (B, [T,] C)
    with torch.no_grad():
        y = torch.multinomial(logp.exp().reshape(-1, logp.shape[-1]), 1).reshape(logp.shape[:-1])
    ll = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (B, [T])
    ll = masked(ll, attention_mask(x, ll.shape))
    return ll.reshape(ll.shape[0], -1).sum(1)


def empirical_log_likelihood(
    logits: torch.Tensor, labels: torch.Tensor, x: Batch, causal: bool
) -> torch.Tensor:
    """log p(y_data|x) per sample: (B,). Positions labelled -100 or padded do not count."""
    labels = labels.to(logits.device)
    keep = labels != -100
    mask = attention_mask(x, labels.shape)
    if mask is not None:
        keep = keep & mask.bool()
    if causal and logits.dim() == 3:  # logits at t predict token t+1
        logits, labels, keep = logits[:, :-1], labels[:, 1:], keep[:, 1:]
    logp = logits.float().log_softmax(-1)
    ll = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep.to(logp.dtype)
    return ll.reshape(ll.shape[0], -1).sum(1)


@register_estimator("ewc", "online_ewc", config_class=EWCConfig)  # online: merge='decay' (MASConfig checks)
def fisher_importance(ctx: ImportanceContext, batches: Iterable[Batch]) -> ImportanceSums:
    """sum_k (d log p(y_k|x_k) / d theta)^2 over the samples: the diagonal Fisher before 1/N."""
    sampled = isinstance(ctx.config, EWCConfig) and ctx.config.ewc_sampled
    causal = is_causal_lm(ctx.model)

    def loss(batch: Any, seg: Segments) -> torch.Tensor:
        x = to_device(inputs_of(batch), ctx.device)
        logits = logits_of(forward(ctx.model, x, **forward_kwargs(ctx.model, seg)))  # p = softmax(logits)
        if sampled:
            return -sampled_log_likelihood(logits, x).sum()
        return -empirical_log_likelihood(logits, labels_of(batch, x, ctx.model, seg), x, causal).sum()

    return accumulate_per_sample(ctx, batches, loss, torch.square)
