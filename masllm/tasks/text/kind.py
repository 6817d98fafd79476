"""The `causal_lm` task kind: text domains as next-token prediction tasks, and their metrics.

Reads `model_args.model_name_or_path | model_config`, `tokenizer_name_or_path`, `vocab_size`, and
`data_args.domains`, `block_size`, `cache_dir`, `document_seed`, `tokenizer_chars_per_domain`; the
model (GGUF, dtype, attention, LoRA adapter) is loaded by `model.load_causal_lm`. Domains with a
`validation` fraction add `val_perplexity` and `val_nll` (lower is better) to the metrics.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..base import Task, TaskSequence, check_config_keys, check_validation, evaluate_with_trainer
from .domains import DomainConfig
from .model import load_causal_lm, pretrained_tokenizer
from .packing import load_domain, load_or_train_tokenizer


def causal_lm_collator(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack packed blocks; labels = inputs (the model shifts them). Blocks are full: no padding."""
    input_ids = torch.stack([torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features])
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def token_statistics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample: (sum of next-token NLL, correct next tokens, tokens), instead of (B, T, V) logits.

    Perplexity is computed from these sums, not from `Trainer.evaluate`'s `eval_loss`: that one
    divides by the count of unshifted labels (B*T instead of B*(T-1)) in transformers 5.
    """
    if isinstance(logits, tuple):
        logits = logits[0]
    logits, target = logits[:, :-1].float(), labels[:, 1:]  # prediction at t scores the token at t+1
    mask = target != -100
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
    correct = (logits.argmax(-1) == target) & mask
    return torch.stack([(nll * mask).sum(1), correct.sum(1).float(), mask.sum(1).float()], dim=1)


def token_metrics(eval_pred: Any) -> dict[str, float]:
    """Mean next-token NLL, perplexity = exp(NLL) and token accuracy over all evaluated tokens."""
    nll, correct, count = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, 3).sum(0)
    return {"nll": nll / count, "perplexity": math.exp(min(nll / count, 50.0)), "accuracy": correct / count}


def evaluate_text(trainer: Any, task: Task, validation: Any = None) -> dict[str, float]:
    """The eval set's metrics and, with a validation set, its perplexity and NLL (`val_perplexity`,
    `val_nll`: lambda is chosen on the mean NLL, `masllm.continual.selection`)."""
    metrics = evaluate_with_trainer(trainer, task)
    if validation is not None:
        prefix = f"val_{task.name}"
        out = trainer.evaluate(validation, metric_key_prefix=prefix)
        metrics |= {f"val_{k}": float(out[f"{prefix}_{k}"]) for k in ("perplexity", "nll")}
    return metrics


def check_model_config(model_config: Any) -> None:
    """Before any data work: a dict with a known `model_type` whose keys its config class has."""
    if not model_config:
        raise ValueError("Give model_name_or_path or model_config (a dict with model_type)")
    if not isinstance(model_config, dict) or "model_type" not in model_config:
        raise ValueError(
            f"model_config must be a mapping with a model_type (e.g. gpt2), got {model_config!r}"
        )
    check_config_keys(model_config["model_type"], model_config)


def causal_lm_sequence(model_args: Any, data_args: Any, training_args: Any) -> TaskSequence:
    """Tasks from `data_args.domains`, a causal LM from `model_args` (hub name / path, or a config).

    Reads `model_args.model_name_or_path | model_config`, `tokenizer_name_or_path`, `vocab_size`,
    and `data_args.domains`, `block_size`, `cache_dir`, `document_seed`, `tokenizer_chars_per_domain`.
    """
    domains = [DomainConfig.from_dict(d) for d in data_args.domains]
    validated = check_validation(domains, what="domain")
    if not model_args.model_name_or_path:
        check_model_config(model_args.model_config)
    cache_dir = Path(data_args.cache_dir)
    with training_args.main_process_first(desc="tokenizer and packed domains"):
        tokenizer = pretrained_tokenizer(model_args)
        if tokenizer is None:
            tokenizer = load_or_train_tokenizer(
                domains,
                model_args.vocab_size,
                cache_dir,
                data_args.document_seed,
                data_args.tokenizer_chars_per_domain,
            )
        packed = [
            load_domain(d, tokenizer, data_args.block_size, cache_dir, data_args.document_seed)
            for d in domains
        ]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def model_init(path: str | None) -> nn.Module:
        return load_causal_lm(model_args, training_args, tokenizer, path)

    tasks = [
        Task(
            name=d.name,
            train_dataset=p["train"],
            importance_dataset=p["importance"],
            eval_dataset=p["eval"],
            data_collator=causal_lm_collator,
            evaluate=partial(evaluate_text, validation=p["validation"]) if validated else None,
            training_overrides=d.training,
        )
        for d, p in zip(domains, packed)
    ]
    return TaskSequence(
        tasks=tasks,
        model_init=model_init,
        metrics={
            "perplexity": False,
            "accuracy": True,
            "nll": False,
            **({"val_perplexity": False, "val_nll": False} if validated else {}),
        },
        primary_metric="perplexity",
        validation_metric="val_nll" if validated else None,  # why NLL: masllm.continual.selection
        processing_class=tokenizer,
        trainer_kwargs={"compute_metrics": token_metrics, "preprocess_logits_for_metrics": token_statistics},
    )
