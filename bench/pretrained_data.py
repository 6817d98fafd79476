"""The data of bench/pretrained_llm.py: general text the model knew, new domains, disjoint-document splits.

General text (Pride and Prejudice by chapter, Shakespeare in chunks of speeches) is never trained
on: its `importance` split is task 0's unlabeled data (Omega of the pretrained model, as MAS
Sec. 4.4 uses test-time data), `validation` enters the lambda rule, `test` the reported forgetting.
A new domain has `train` (its first blocks are also its importance set, as the recipe's default
`importance: train`), `validation` and `test`. Splits never share a document: the documents are
shuffled (seeded) and dealt to test, then validation, then the rest, each document cut to
`max_doc_chars` so that one long file cannot fill a split alone. A block is BOS + seq - 1 tokens.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import torch

from masllm.tasks.text.domains import DomainConfig, load_documents
from masllm.tasks.text.packing import pack


def general_documents(text_dir: Path) -> list[str]:
    """Pride and Prejudice by chapter and Shakespeare in ~3000-character chunks of speeches."""
    austen = (text_dir / "pg1342-pride-and-prejudice.txt").read_text(encoding="utf-8")
    docs = [c.strip() for c in re.split(r"\n\s*Chapter [0-9IVXLC]+\.?\s*\n", austen) if len(c.strip()) > 500]
    speeches = (text_dir / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    chunk: list[str] = []
    for s in speeches:
        chunk.append(s)
        if sum(map(len, chunk)) > 3000:
            docs.append("\n\n".join(chunk))
            chunk = []
    return docs


def split_blocks(
    docs: list[str], tokenizer: Any, seq: int, needs: dict[str, int], seed: int, max_doc_chars: int
) -> dict[str, torch.Tensor]:
    """Blocks of `seq` tokens per split (`needs`: split -> blocks, in dealing order), no document in two."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    out, pos = {}, 0
    for split, n in needs.items():
        taken: list[str] = []
        blocks = torch.zeros(0, seq, dtype=torch.long)
        while len(blocks) < n:
            if pos >= len(order):
                raise ValueError(f"Not enough documents for {n} {split} blocks of {seq} tokens")
            batch = [docs[i][:max_doc_chars] for i in order[pos : pos + max(4, n // 2)]]
            pos += len(batch)
            taken += batch
            blocks = torch.as_tensor(pack(taken, tokenizer, seq - 1), dtype=torch.long)
        out[split] = with_bos(blocks[:n], tokenizer)
    return out


def with_bos(blocks: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """Each block led by the tokenizer's BOS, as the model was pretrained (Gemma without it: Pride and
    Prejudice perplexity ~360 instead of ~30, and LoRA training at lr 2e-3 diverged)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return torch.cat([torch.full((len(blocks), 1), bos, dtype=torch.long), blocks], dim=1)


def domain_documents(spec: dict[str, Any]) -> list[str]:
    """A domain's documents through the recipe's sources (builtin:..., a local file or folder)."""
    domain = DomainConfig.from_dict({k: v for k, v in spec.items() if k in ("name", "source", "text_field")})
    return load_documents(domain.source, domain.train_split, domain)


def build_data(
    domains: list[dict[str, Any]],
    text_dir: Path,
    tokenizer: Any,
    seq: int,
    sizes: dict[str, int],
    seed: int,
    max_doc_chars: int = 4000,
) -> dict[str, dict[str, torch.Tensor]]:
    """{"general": importance/validation/test, <domain>: train/validation/test} as (n, seq) id tensors."""
    e = sizes["eval_blocks"]
    data = {
        "general": split_blocks(
            general_documents(text_dir),
            tokenizer,
            seq,
            {"test": e, "validation": e, "importance": sizes["general_importance_blocks"]},
            seed,
            max_doc_chars,
        )
    }
    for spec in domains:
        needs = {"test": e, "validation": e, "train": max(sizes["train_blocks"], sizes["importance_blocks"])}
        data[spec["name"]] = split_blocks(domain_documents(spec), tokenizer, seq, needs, seed, max_doc_chars)
    return data


def as_dataset(blocks: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": b} for b in blocks]
