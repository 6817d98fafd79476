"""Tokenise and pack a domain into train / importance / eval blocks, once, cached on disk.

Documents are shuffled (seeded), joined with the EOS token, tokenised and packed into blocks of
`block_size` tokens; the blocks are cut contiguously into train | held-out | validation | eval, and the result is
cached (`save_to_disk`) under a key of everything that shapes it. Without a pretrained tokenizer, a
byte-level BPE tokenizer is trained on the domains (cached too).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, load_from_disk

from .domains import DomainConfig, shuffled_documents, take_chars

EOS = "<|endoftext|>"
CACHE_VERSION = 1


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
            for t in take_chars(shuffled_documents(d, d.train_split, seed), chars_per_domain)
        ]
        tokenizer = train_bpe_tokenizer(texts, vocab_size)
        _atomic_dir(directory, tokenizer.save_pretrained)
    return AutoTokenizer.from_pretrained(directory)


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


def cut_blocks(
    blocks: np.ndarray, eval_fraction: float, heldout_fraction: float, validation_fraction: float = 0.0
) -> dict[str, np.ndarray]:
    """Contiguous train | heldout | validation | eval parts of the packed blocks (no block is in two
    parts; a document may straddle a boundary, as documents are packed back to back)."""
    n = len(blocks)
    sizes = [math.ceil(n * f) for f in (heldout_fraction, validation_fraction, eval_fraction)]
    n_train = n - sum(sizes)
    if n_train < 1:
        raise ValueError(f"Only {n} blocks: too few to cut train / heldout / validation / eval parts")
    bounds = np.cumsum([n_train, *sizes])
    parts = np.split(blocks, bounds[:-1])
    return dict(zip(("train", "heldout", "validation", "eval"), parts))


def _head(blocks: np.ndarray, limit: int | None) -> np.ndarray:
    return blocks if limit is None else blocks[:limit]


def build_domain(domain: DomainConfig, tokenizer: Any, block_size: int, seed: int) -> DatasetDict:
    """Packed `train`, `importance` and `eval` sets of one domain, and `validation` when the domain
    asks for one (not cached; see `load_domain`)."""
    docs = shuffled_documents(domain, domain.train_split, seed)
    if not docs:
        raise ValueError(f"Domain {domain.name!r}: source {domain.source!r} holds no text")
    eval_fraction = 0.0 if domain.eval_split else domain.eval_fraction
    held_fraction = domain.heldout_fraction if domain.importance == "heldout" else 0.0
    try:
        parts = cut_blocks(pack(docs, tokenizer, block_size), eval_fraction, held_fraction, domain.validation)
    except ValueError as e:
        raise ValueError(
            f"Domain {domain.name!r} ({domain.source}), blocks of {block_size} tokens: {e}"
        ) from None
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
    if domain.validation > 0:
        sets["validation"] = _head(parts["validation"], domain.max_validation_blocks)
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
