"""Text domains: where their documents come from (`DomainConfig`, sources).

A *domain* names a text source and how to cut it into the three sets a MAS step needs: a training
set, an **unlabeled importance set** for Eq. 2 (a slice of the training data, held-out text, or a
separate "deployment" source: the paper's adaptation setting, Sec. 5.2) and an evaluation set; and,
with `validation: 0.05`, a validation set (never trained on nor used for Omega, reported as
`val_perplexity` / `val_nll`) on which `masllm.continual.selection` chooses lambda.
Sources:

- `builtin:python_stdlib` (the standard library's own source code), `builtin:python_docs` (the
  reference documentation text in `pydoc_data/topics.py`), `builtin:package_licenses` (license
  texts of the installed packages, deduplicated): real text every Python install carries;
  `builtin:man_pages` (the English manual pages of a Debian-like system, roff source, sections
  1-8 of /usr/share/man): a text domain the operating system carries;
- a local file or folder (`.txt .md .py .rst` one document per file, `.json .jsonl .parquet .csv`
  with a `text_field`);
- a `datasets` hub name (with `subset`, `streaming`).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import random
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datasets import load_dataset

from ...registry import looks_like_path
from ..base import config_from_dict

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text")
TABLE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
LICENSE_PREFIXES = ("LICENSE", "LICENCE", "COPYING", "NOTICE")


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
    validation: float = 0.0  # a fraction of the blocks, cut before eval: what lambda is chosen on
    max_chars: int | None = None  # after the seeded shuffle of documents
    max_train_blocks: int | None = None
    max_eval_blocks: int | None = None
    max_importance_blocks: int | None = None
    max_validation_blocks: int | None = None
    streaming: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # TrainingArguments overrides (e.g. max_steps)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"Domain name must be a non-empty string without '/', got {self.name!r}")
        for f in ("eval_fraction", "heldout_fraction", "validation"):
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
        return config_from_dict(cls, data, "domain")

    def cache_spec(self) -> dict[str, Any]:
        """Everything that shapes the packed data (the training overrides do not)."""
        spec = asdict(self)
        spec.pop("training")
        return spec


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


MAN_ROOT = Path("/usr/share/man")


def _man_pages() -> list[str]:
    """The English manual pages (roff source, one document per page; `.so` redirects left out)."""
    docs = []
    for f in sorted(MAN_ROOT.glob("man[1-8]/*")):
        try:
            raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError, gzip.BadGzipFile):
            continue
        if text.strip() and not text.lstrip().startswith(".so "):
            docs.append(text)
    if not docs:
        raise FileNotFoundError(f"builtin:man_pages: no manual pages under {MAN_ROOT}/man[1-8]")
    return docs


BUILTIN_SOURCES: dict[str, Callable[[], list[str]]] = {
    "python_stdlib": _stdlib_source,
    "python_docs": _python_docs,
    "package_licenses": _package_licenses,
    "man_pages": _man_pages,
}


def _local_files(path: Path) -> tuple[str, list[str]]:
    """(datasets builder, files) for a local file or a folder of files of one kind."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    kinds = {".txt" if p.suffix in TEXT_SUFFIXES else p.suffix for p in files}
    kinds &= {".txt", *TABLE_BUILDERS}
    if len(kinds) != 1:
        raise ValueError(
            f"{path}: expected files of one kind ({TEXT_SUFFIXES} or {sorted(TABLE_BUILDERS)}), "
            f"found {sorted(kinds) or 'none'}"
        )
    kind = kinds.pop()
    builder = "text" if kind == ".txt" else TABLE_BUILDERS[kind]
    suffixes = (
        TEXT_SUFFIXES if kind == ".txt" else tuple(s for s, b in TABLE_BUILDERS.items() if b == builder)
    )
    return builder, [str(p) for p in files if p.suffix in suffixes]


def _read_text(path: Path, domain: DomainConfig) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"Domain {domain.name!r}: {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
            f"{e.start}); text sources must be UTF-8"
        ) from None


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
        try:
            builder, files = _local_files(path)
        except ValueError as e:
            raise ValueError(f"Domain {domain.name!r}: {e}") from None
        if builder == "text":  # read here: one document per file, and a clear error for a binary file
            if split != "train":
                raise ValueError(
                    f"Domain {domain.name!r}: local text {source!r} has only a 'train' split, not {split!r}"
                )
            return [t for t in (_read_text(Path(f), domain) for f in files) if t]
        ds = load_dataset(builder, data_files={"train": files}, split=split)
    elif looks_like_path(source):
        raise FileNotFoundError(
            f"Domain {domain.name!r}: source {source!r} does not exist ({path.resolve()})"
        )
    else:
        try:
            ds = load_dataset(source, domain.subset, split=split, streaming=domain.streaming)
        except Exception as e:  # offline, unknown name, ...: say which domain, and what was tried
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise FileNotFoundError(
                f"Domain {domain.name!r}: source {source!r} is not a local file or folder ({path.resolve()}), "
                f"and loading it as a Hub dataset failed: {type(e).__name__}: {reason}"
            ) from e
    if domain.streaming and domain.max_chars is not None:
        return take_chars((row[domain.text_field] for row in ds), domain.max_chars)
    if domain.text_field not in ds.column_names:
        raise ValueError(f"{source}: no column {domain.text_field!r} (columns: {ds.column_names})")
    return [t for t in ds[domain.text_field] if t]


def take_chars(texts: Iterable[str], max_chars: int) -> list[str]:
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
    return docs if domain.max_chars is None else take_chars(docs, domain.max_chars)
