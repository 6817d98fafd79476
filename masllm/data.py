"""Domains of a continual sequence: where their text comes from, and the tasks the recipe runs.

A *domain* (`DomainConfig`) names a text source and how to cut it into the three sets a MAS step
needs: a training set, an **unlabeled importance set** for Eq. 2 (a slice of the training data,
held-out text, or a separate "deployment" source: the paper's adaptation setting, Sec. 5.2) and an
evaluation set. Sources:

- `builtin:python_stdlib` (the standard library's own source code), `builtin:python_docs` (the
  reference documentation text in `pydoc_data/topics.py`), `builtin:package_licenses` (license
  texts of the installed packages, deduplicated): real text every Python install carries;
- a local file or folder (`.txt .md .py .rst` one document per file, `.json .jsonl .parquet .csv`
  with a `text_field`);
- a `datasets` hub name (with `subset`, `streaming`).

Documents are shuffled (seeded), joined with the EOS token, tokenised and packed into blocks of
`block_size` tokens once; the blocks are cut contiguously into train | held-out | eval, and the
result is cached on disk (`save_to_disk`) under a key of everything that shapes it.

The recipe sees only `Task` and `TaskSequence` (below): that is the whole contract a task *kind*
(`causal_lm` here; `vision` elsewhere) has to meet. Register a kind in `TASK_KINDS`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import random
import shutil
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from torch import nn

EOS = "<|endoftext|>"
CACHE_VERSION = 1
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text")
TABLE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
LICENSE_PREFIXES = ("LICENSE", "LICENCE", "COPYING", "NOTICE")


# ---------------------------------------------------------------------------------------------
# The contract between a task kind and the recipe
# ---------------------------------------------------------------------------------------------
@dataclass
class Task:
    """One step of a sequence: train on `train_dataset`, estimate Omega on `importance_dataset`
    (no labels needed), and be evaluated on `eval_dataset` after every step.

    `evaluate(trainer, task)` returns the metrics that feed R (names listed in the sequence's
    `metrics`); None uses `evaluate_with_trainer` (`Trainer.evaluate` + perplexity).
    """

    name: str
    train_dataset: Any
    importance_dataset: Any
    eval_dataset: Any
    data_collator: Callable | None = None
    evaluate: Callable[[Any, Task], dict[str, float]] | None = None
    training_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskSequence:
    """What a kind builds: the tasks in order and how to make the model.

    `model_init(path)` returns the model, freshly built (`path=None`) or loaded from a directory the
    recipe saved with `Trainer.save_model`. `metrics` maps each reported metric to True when higher
    is better; `primary_metric` is the one the printed table leads with. `trainer_kwargs` go to every
    Trainer (e.g. `compute_metrics`).
    """

    tasks: list[Task]
    model_init: Callable[[str | None], nn.Module]
    metrics: dict[str, bool]
    primary_metric: str
    processing_class: Any = None
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("A task sequence needs at least one task")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"Task names must be unique, got {names}")
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} is not one of {list(self.metrics)}")


# ---------------------------------------------------------------------------------------------
# Domain configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class DomainConfig:
    """One text domain: its source and how its train / importance / eval sets are cut."""

    name: str
    source: str
    subset: str | None = None
    text_field: str = "text"
    train_split: str = "train"
    eval_split: str | None = None  # None: the last `eval_fraction` of the packed blocks
    importance: str = "train"  # "train" (slice of the training blocks), "heldout", or a split name
    importance_source: str | None = None  # a separate unlabeled "deployment" source (its train split)
    eval_fraction: float = 0.1
    heldout_fraction: float = 0.1
    max_chars: int | None = None  # after the seeded shuffle of documents
    max_train_blocks: int | None = None
    max_eval_blocks: int | None = None
    max_importance_blocks: int | None = None
    streaming: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # TrainingArguments overrides (e.g. max_steps)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"Domain name must be a non-empty string without '/', got {self.name!r}")
        for f in ("eval_fraction", "heldout_fraction"):
            if not 0 <= getattr(self, f) < 1:
                raise ValueError(f"Domain {self.name!r}: {f} must be in [0, 1), got {getattr(self, f)}")
        if self.eval_split is None and self.eval_fraction == 0:
            raise ValueError(f"Domain {self.name!r} needs an eval_split or eval_fraction > 0")
        if self.streaming and self.max_chars is None:
            raise ValueError(
                f"Domain {self.name!r}: streaming needs max_chars (how much of the stream to read)"
            )
        if self.importance == "heldout" and self.heldout_fraction == 0:
            raise ValueError(f"Domain {self.name!r}: importance='heldout' needs heldout_fraction > 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DomainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown domain fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def cache_spec(self) -> dict[str, Any]:
        """Everything that shapes the packed data (the training overrides do not)."""
        spec = asdict(self)
        spec.pop("training")
        return spec


# ---------------------------------------------------------------------------------------------
# Sources -> documents
# ---------------------------------------------------------------------------------------------
def _stdlib_source() -> list[str]:
    """The standard library's top-level modules, one document per file, in name order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py"))]


def _python_docs() -> list[str]:
    """The reference documentation topics shipped with every CPython (`pydoc_data/topics.py`)."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _package_licenses() -> list[str]:
    """License texts of the installed distributions (and CPython's own), deduplicated."""
    seen: set[str] = set()
    docs = []
    python_license = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    candidates = [python_license] if python_license.is_file() else []
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        candidates += [f for f in dist.files or [] if f.name.upper().startswith(LICENSE_PREFIXES)]
    for f in candidates:
        try:
            text = f.read_text(encoding="utf-8") if isinstance(f, Path) else f.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        digest = hashlib.sha256(text.strip().encode()).hexdigest()
        if text and text.strip() and digest not in seen:
            seen.add(digest)
            docs.append(text)
    return docs


BUILTIN_SOURCES: dict[str, Callable[[], list[str]]] = {
    "python_stdlib": _stdlib_source,
    "python_docs": _python_docs,
    "package_licenses": _package_licenses,
}


def _local_files(path: Path) -> tuple[str, list[str]]:
    """(datasets builder, files) for a local file or a folder of files of one kind."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    kinds = {".txt" if p.suffix in TEXT_SUFFIXES else p.suffix for p in files}
    kinds &= {".txt", *TABLE_BUILDERS}
    if len(kinds) != 1:
        raise ValueError(
            f"{path}: expected files of one kind ({TEXT_SUFFIXES} or {sorted(TABLE_BUILDERS)}), found {sorted(kinds) or 'none'}"
        )
    kind = kinds.pop()
    builder = "text" if kind == ".txt" else TABLE_BUILDERS[kind]
    suffixes = (
        TEXT_SUFFIXES if kind == ".txt" else tuple(s for s, b in TABLE_BUILDERS.items() if b == builder)
    )
    return builder, [str(p) for p in files if p.suffix in suffixes]


def load_documents(source: str, split: str, domain: DomainConfig) -> list[str]:
    """The documents of one split of a source, in the source's order."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_SOURCES:
            raise ValueError(f"Unknown builtin source {name!r}; known: {sorted(BUILTIN_SOURCES)}")
        if split != "train":
            raise ValueError(f"Builtin source {source!r} has only a 'train' split, not {split!r}")
        return BUILTIN_SOURCES[name]()
    path = Path(source).expanduser()
    if path.exists():
        builder, files = _local_files(path)
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        ds = load_dataset(builder, data_files={"train": files}, split=split, **kwargs)
    else:
        ds = load_dataset(source, domain.subset, split=split, streaming=domain.streaming)
    if domain.streaming and domain.max_chars is not None:
        return _take_chars((row[domain.text_field] for row in ds), domain.max_chars)
    if domain.text_field not in ds.column_names:
        raise ValueError(f"{source}: no column {domain.text_field!r} (columns: {ds.column_names})")
    return [t for t in ds[domain.text_field] if t]


def _take_chars(texts: Iterable[str], max_chars: int) -> list[str]:
    out, total = [], 0
    for t in texts:
        if total >= max_chars:
            break
        out.append(t[: max_chars - total])
        total += len(out[-1])
    return out


def shuffled_documents(domain: DomainConfig, split: str, seed: int, source: str | None = None) -> list[str]:
    """Documents of a split, shuffled with `seed` (so any slice is a fair sample), cut to max_chars."""
    docs = load_documents(source or domain.source, split, domain)
    random.Random(seed).shuffle(docs)
    return docs if domain.max_chars is None else _take_chars(docs, domain.max_chars)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style, any text encodes) trained here, with EOS = pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def load_or_train_tokenizer(
    domains: list[DomainConfig], vocab_size: int, cache_dir: Path, seed: int, chars_per_domain: int
):
    """Train a BPE tokenizer on up to `chars_per_domain` characters of each domain (cached)."""
    from transformers import AutoTokenizer

    spec = {"v": CACHE_VERSION, "vocab": vocab_size, "seed": seed, "chars": chars_per_domain}
    spec["domains"] = [d.cache_spec() for d in domains]
    directory = cache_dir / f"tokenizer-{_digest(spec)}"
    if not (directory / "tokenizer.json").is_file():
        texts = [
            t
            for d in domains
            for t in _take_chars(shuffled_documents(d, d.train_split, seed), chars_per_domain)
        ]
        tokenizer = train_bpe_tokenizer(texts, vocab_size)
        _atomic_dir(directory, tokenizer.save_pretrained)
    return AutoTokenizer.from_pretrained(directory)


# ---------------------------------------------------------------------------------------------
# Tokenise + pack, cut, cache
# ---------------------------------------------------------------------------------------------
def pack(docs: list[str], tokenizer: Any, block_size: int) -> np.ndarray:
    """Documents joined by EOS and cut into full blocks: (num_blocks, block_size) int32."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for start in range(0, len(docs), 256):  # batched: fast tokenizers encode in parallel
        for seq in tokenizer(docs[start : start + 256], add_special_tokens=False)["input_ids"]:
            ids.extend(seq)
            ids.append(eos)
    n = len(ids) // block_size
    return np.asarray(ids[: n * block_size], dtype=np.int32).reshape(n, block_size)


def cut_blocks(blocks: np.ndarray, eval_fraction: float, heldout_fraction: float) -> dict[str, np.ndarray]:
    """Contiguous train | heldout | eval parts of the packed blocks (no block is in two parts)."""
    n = len(blocks)
    n_eval, n_held = math.ceil(n * eval_fraction), math.ceil(n * heldout_fraction)
    n_train = n - n_eval - n_held
    if n_train < 1:
        raise ValueError(f"Only {n} blocks: too few to cut train / heldout / eval parts")
    return {
        "train": blocks[:n_train],
        "heldout": blocks[n_train : n_train + n_held],
        "eval": blocks[n_train + n_held :],
    }


def _head(blocks: np.ndarray, limit: int | None) -> np.ndarray:
    return blocks if limit is None else blocks[:limit]


def build_domain(domain: DomainConfig, tokenizer: Any, block_size: int, seed: int) -> DatasetDict:
    """Packed `train`, `importance` and `eval` sets of one domain (not cached; see `load_domain`)."""
    docs = shuffled_documents(domain, domain.train_split, seed)
    eval_fraction = 0.0 if domain.eval_split else domain.eval_fraction
    held_fraction = domain.heldout_fraction if domain.importance == "heldout" else 0.0
    parts = cut_blocks(pack(docs, tokenizer, block_size), eval_fraction, held_fraction)
    if domain.eval_split:
        parts["eval"] = pack(shuffled_documents(domain, domain.eval_split, seed), tokenizer, block_size)
    if domain.importance_source:
        importance = pack(
            shuffled_documents(domain, "train", seed, domain.importance_source), tokenizer, block_size
        )
    elif domain.importance in ("train", "heldout"):
        importance = parts[domain.importance]
    else:
        importance = pack(shuffled_documents(domain, domain.importance, seed), tokenizer, block_size)
    sets = {
        "train": _head(parts["train"], domain.max_train_blocks),
        "importance": _head(importance, domain.max_importance_blocks),
        "eval": _head(parts["eval"], domain.max_eval_blocks),
    }
    for split, blocks in sets.items():
        if len(blocks) == 0:
            raise ValueError(f"Domain {domain.name!r}: the {split} set is empty (too little text?)")
    return DatasetDict({k: Dataset.from_dict({"input_ids": v.tolist()}) for k, v in sets.items()})


def load_domain(
    domain: DomainConfig, tokenizer: Any, block_size: int, cache_dir: Path, seed: int
) -> DatasetDict:
    """`build_domain`, done once and cached under a key of the domain, tokenizer, size and seed."""
    spec = {"v": CACHE_VERSION, "domain": domain.cache_spec(), "block": block_size, "seed": seed}
    spec["tokenizer"] = tokenizer_fingerprint(tokenizer)
    directory = cache_dir / f"{domain.name}-{_digest(spec)}"
    if not (directory / "dataset_dict.json").is_file():
        data = build_domain(domain, tokenizer, block_size, seed)
        _atomic_dir(directory, data.save_to_disk)
    data = load_from_disk(str(directory))
    data.set_format("torch")
    return data


def _digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _atomic_dir(directory: Path, write: Callable[[str], Any]) -> None:
    """Write into a temporary sibling folder, then rename: a reader never sees half a cache."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    write(str(tmp))
    if directory.exists():  # another process finished first: keep its copy
        shutil.rmtree(tmp)
        return
    tmp.rename(directory)


# ---------------------------------------------------------------------------------------------
# The causal_lm kind
# ---------------------------------------------------------------------------------------------
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


def evaluate_with_trainer(trainer: Any, task: Task) -> dict[str, float]:
    """The metrics of the Trainer's `compute_metrics` on the task's eval set (any world size)."""
    prefix = f"eval_{task.name}"
    out = trainer.evaluate(task.eval_dataset, metric_key_prefix=prefix)
    skip = {"loss", "runtime", "samples_per_second", "steps_per_second", "model_preparation_time"}
    metrics = {k.removeprefix(prefix + "_"): v for k, v in out.items() if k.startswith(prefix + "_")}
    return {k: float(v) for k, v in metrics.items() if k not in skip}


def causal_lm_sequence(model_args: Any, data_args: Any, training_args: Any) -> TaskSequence:
    """Tasks from `data_args.domains`, a causal LM from `model_args` (hub name / path, or a config).

    Reads `model_args.model_name_or_path | model_config`, `tokenizer_name_or_path`, `vocab_size`,
    and `data_args.domains`, `block_size`, `cache_dir`, `document_seed`, `tokenizer_chars_per_domain`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    domains = [DomainConfig.from_dict(d) for d in data_args.domains]
    cache_dir = Path(data_args.cache_dir)
    source = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    with training_args.main_process_first(desc="tokenizer and packed domains"):
        if source:
            tokenizer = AutoTokenizer.from_pretrained(source)
        else:
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
        if path is not None or model_args.model_name_or_path:
            return AutoModelForCausalLM.from_pretrained(path or model_args.model_name_or_path)
        if not model_args.model_config:
            raise ValueError("Give model_name_or_path or model_config (a dict with model_type)")
        config = dict(model_args.model_config)
        config.setdefault("vocab_size", len(tokenizer))
        config.update(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        config = AutoConfig.for_model(**config)
        torch.manual_seed(training_args.seed)
        # The class itself, not `from_config`: under ZeRO-3 that initialises inside zero.Init, whose
        # partitioned random init differs from one process's (the engine partitions the model later).
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)

    tasks = [
        Task(
            name=d.name,
            train_dataset=p["train"],
            importance_dataset=p["importance"],
            eval_dataset=p["eval"],
            data_collator=causal_lm_collator,
            training_overrides=d.training,
        )
        for d, p in zip(domains, packed)
    ]
    return TaskSequence(
        tasks=tasks,
        model_init=model_init,
        metrics={"perplexity": False, "accuracy": True, "nll": False},
        primary_metric="perplexity",
        processing_class=tokenizer,
        trainer_kwargs={"compute_metrics": token_metrics, "preprocess_logits_for_metrics": token_statistics},
    )


def vision_sequence(model_args: Any, data_args: Any, training_args: Any) -> TaskSequence:
    """The `vision` kind (image classification, one head per task): see `masllm.vision_tasks`."""
    from .vision_tasks import vision_sequence as build  # imported on use: it imports this module

    return build(model_args, data_args, training_args)


KindBuilder = Callable[[Any, Any, Any], TaskSequence]
TASK_KINDS: dict[str, KindBuilder] = {"causal_lm": causal_lm_sequence, "vision": vision_sequence}


__all__ = [
    "BUILTIN_SOURCES",
    "DomainConfig",
    "TASK_KINDS",
    "Task",
    "TaskSequence",
    "causal_lm_collator",
    "causal_lm_sequence",
    "load_domain",
    "load_or_train_tokenizer",
]
