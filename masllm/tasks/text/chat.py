"""The `chat` task kind: instruction / chat domains, fine-tuned with TRL's SFTTrainer under MAS.

A domain is a table (local .jsonl / .json / .parquet / .csv, or a `datasets` hub name) with a
`messages` column (a conversation: [{"role", "content"}, ...]) or `prompt` / `completion` columns.
Each step trains with `MASSFTTrainer` (masllm.integrations.trl): the tokenizer's chat template
formats the data, the loss is on the assistant's tokens (`assistant_only_loss` for conversations,
the completion for prompt / completion data), `data_args.block_size` is the longest sequence and
`data_args.packing` packs several per row, padding-free. Omega comes from the domain's unlabeled
*prompts* (each conversation up to its last assistant turn, with the generation prompt): the
inputs the model is asked to answer (MAS: importance from unlabeled data, Sec. 4.1), packed the
same way, so that with packing each prompt is one sample of Eq. 2. Evaluation: the next-token
NLL of the assistant's tokens (the SFT loss, mean over eval batches) and its exp, `perplexity`.

The model is `model.load_causal_lm`'s (GGUF, dtype, attention, one LoRA adapter for the sequence);
trl is imported when a chat sequence is built, not before.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset

from ..base import Task, TaskSequence, config_from_dict
from .domains import _local_files
from .model import load_causal_lm, pretrained_tokenizer


@dataclass
class ChatDomainConfig:
    """One chat / instruction domain: its source and how its train / importance / eval sets are cut."""

    name: str
    source: str
    subset: str | None = None
    train_split: str = "train"
    eval_split: str | None = None  # None: the last `eval_fraction` of the (shuffled) examples
    eval_fraction: float = 0.1
    importance_split: str | None = None  # None: the prompts of the training examples
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    max_importance_examples: int | None = None
    training: dict[str, Any] = field(default_factory=dict)  # TrainingArguments overrides (e.g. max_steps)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"Domain name must be a non-empty string without '/', got {self.name!r}")
        if self.eval_split is None and not 0 < self.eval_fraction < 1:
            raise ValueError(f"Domain {self.name!r} needs an eval_split or eval_fraction in (0, 1)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatDomainConfig:
        return config_from_dict(cls, data, "chat domain")


def load_examples(domain: ChatDomainConfig, split: str, seed: int) -> list[dict[str, Any]]:
    """The rows of a split, shuffled with `seed`, each with `messages` or `prompt` and `completion`."""
    path = Path(domain.source).expanduser()
    if path.exists():
        builder, files = _local_files(path)
        if builder == "text":
            raise ValueError(f"{path}: chat data is a table (.jsonl .json .parquet .csv), not plain text")
        ds = load_dataset(builder, data_files={split: files}, split=split)
    else:
        ds = load_dataset(domain.source, domain.subset, split=split)
    columns = set(ds.column_names)
    if "messages" in columns:
        rows = [{"messages": m} for m in ds["messages"]]
    elif {"prompt", "completion"} <= columns:
        rows = [{"prompt": p, "completion": c} for p, c in zip(ds["prompt"], ds["completion"])]
    else:
        raise ValueError(
            f"Domain {domain.name!r}: {domain.source} needs a 'messages' column or 'prompt' and "
            f"'completion' columns, found {sorted(columns)}"
        )
    random.Random(seed).shuffle(rows)
    return rows


def prompt_ids(example: dict[str, Any], tokenizer: Any, max_length: int) -> list[int]:
    """The tokens of what the model is asked: a conversation up to its last assistant turn (with the
    template's generation prompt), or the prompt of a prompt / completion pair."""
    prompt = example.get("prompt")
    if "messages" in example:
        turns = example["messages"]
        last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=len(turns))
        prompt = turns[:last]
    if isinstance(prompt, list):
        ids = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        ids = ids["input_ids"]
    else:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return list(ids)[:max_length]


def _head(rows: list, limit: int | None) -> list:
    return rows if limit is None else rows[:limit]


def build_chat_domain(domain: ChatDomainConfig, tokenizer: Any, max_length: int, seed: int) -> dict[str, Any]:
    """`train` and `eval` (raw rows: SFTTrainer formats them) and `importance` (tokenized prompts)."""
    rows = load_examples(domain, domain.train_split, seed)
    if domain.eval_split:
        train, evals = rows, load_examples(domain, domain.eval_split, seed)
    else:
        n_eval = math.ceil(len(rows) * domain.eval_fraction)
        train, evals = rows[: len(rows) - n_eval], rows[len(rows) - n_eval :]
    source = load_examples(domain, domain.importance_split, seed) if domain.importance_split else train
    prompts = [{"input_ids": ids} for r in source if (ids := prompt_ids(r, tokenizer, max_length))]
    sets = {
        "train": _head(train, domain.max_train_examples),
        "eval": _head(evals, domain.max_eval_examples),
        "importance": _head(prompts, domain.max_importance_examples),
    }
    for split, part in sets.items():
        if not part:
            raise ValueError(f"Domain {domain.name!r}: the {split} set is empty")
    return {k: Dataset.from_list(v) for k, v in sets.items()}


def sft_trainer(max_length: int, packing: bool) -> Callable[..., Any]:
    """Builds a step's MASSFTTrainer, called like MASTrainer: the recipe's TrainingArguments become an
    SFTConfig with the kind's fields (TRL builds its collator when the rows are packed)."""

    def make(*, args: Any, train_dataset: Any, data_collator: Any = None, **kwargs: Any) -> Any:
        from trl import SFTConfig

        from ...integrations.trl import MASSFTTrainer

        sft = {"max_length": max_length, "packing": packing}
        sft["assistant_only_loss"] = "messages" in train_dataset.column_names  # else: completion only
        config = SFTConfig(**{**args.to_dict(), "hub_token": args.hub_token, **sft})
        collator = None if packing else data_collator  # padding-free: TRL refuses a collator of ours
        return MASSFTTrainer(args=config, train_dataset=train_dataset, data_collator=collator, **kwargs)

    return make


def evaluate_chat(trainer: Any, task: Task) -> dict[str, float]:
    """Next-token NLL of the assistant's tokens (SFTTrainer's eval loss) and its exp."""
    prefix = f"eval_{task.name}"
    nll = float(trainer.evaluate(task.eval_dataset, metric_key_prefix=prefix)[f"{prefix}_loss"])
    return {"nll": nll, "perplexity": math.exp(min(nll, 50.0))}


def chat_sequence(model_args: Any, data_args: Any, training_args: Any) -> TaskSequence:
    """Chat tasks from `data_args.domains`, trained with MASSFTTrainer (see the module docstring)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    domains = [ChatDomainConfig.from_dict(d) for d in data_args.domains]
    tokenizer = pretrained_tokenizer(model_args)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "The chat kind formats its data with the tokenizer's chat template: give tokenizer_name_or_path "
            "or model_name_or_path of a tokenizer that has one"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with training_args.main_process_first(desc="chat domains"):
        built = [
            build_chat_domain(d, tokenizer, data_args.block_size, data_args.document_seed) for d in domains
        ]
    # the importance prompts' collator, also TRL's for these rows: padded, or padding-free when packing
    collator = DataCollatorForLanguageModeling(
        pad_token_id=tokenizer.pad_token_id, padding_free=data_args.packing
    )
    tasks = [
        Task(
            name=d.name,
            train_dataset=b["train"],
            importance_dataset=b["importance"],
            eval_dataset=b["eval"],
            data_collator=collator,
            evaluate=evaluate_chat,
            training_overrides=d.training,
        )
        for d, b in zip(domains, built)
    ]
    return TaskSequence(
        tasks=tasks,
        model_init=lambda path: load_causal_lm(model_args, training_args, tokenizer, path),
        metrics={"perplexity": False, "nll": False},
        primary_metric="perplexity",
        processing_class=tokenizer,
        trainer_class=sft_trainer(data_args.block_size, data_args.packing),
    )
