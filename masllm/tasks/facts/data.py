"""The fact data set: <digit, relation, item> scenes composed from real MNIST and Fashion-MNIST images.

A stand-in for the MAS paper's 6DS facts (Sec. 5.2), built offline from real data: every image is a
28x28 canvas of four 14x14 cells holding one MNIST digit (the Subject) and one Fashion-MNIST item
(the Object), placed so that the Predicate -- the spatial relation of the digit to the item -- is
visible: "left of" / "right of" (same row, random row), "above" / "below" (same column, random
column). Glyphs are the 28x28 originals averaged over 2x2 blocks. 10 digits x 4 relations x 10
items = 400 facts, fact index f = (digit * 4 + relation) * 10 + item.

Size (defaults): 30 training and 10 test images per fact, 12,000 + 4,000 canvases, 12.5 MB of
uint8 pixels; the training canvases are built from the two data sets' training images, the test
canvases from their test images (no source image is shared between the splits). The build is
seeded and deterministic (same seed: the same bytes) and cached as one safetensors file, written
atomically, keyed by every argument that changes its content.

Tasks (`fact_groups`) are disjoint groups of facts:
- `units` (default): the digits and the items are each split in two seeded halves (Da, Db, Ia, Ib)
  and the tasks are the blocks (Da, Ia), (Db, Ib), (Da, Ib), (Db, Ia), every relation in each: like
  6DS's groups, consecutive tasks differ in their units, so that a model can forget;
- `random`: a seeded random split of the 400 facts into equal groups (every unit in every task).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ...omega.io import new_temporary, write_safetensors
from ..vision.mnist import load_idx_dataset

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATIONS = ("left of", "right of", "above", "below")
ITEMS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
NUM_FACTS = len(DIGITS) * len(RELATIONS) * len(ITEMS)
SPLITS = ("units", "random")
CELL = 14  # a glyph: 28x28 averaged over 2x2; the canvas is 2x2 cells = 28x28
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FactsSpec:
    """Everything that decides the canvases' bytes (the cache key)."""

    digits: str = "../shared/data/mnist"
    items: str = "../shared/data/fashion-mnist"
    seed: int = 0
    train_per_fact: int = 30
    test_per_fact: int = 10

    def __post_init__(self) -> None:
        if self.train_per_fact < 1 or self.test_per_fact < 1:
            raise ValueError(
                f"train_per_fact and test_per_fact must be >= 1, got {self.train_per_fact}, {self.test_per_fact}"
            )

    def key(self) -> str:
        fields = {**asdict(self), "digits": str(Path(self.digits).resolve()), "version": FORMAT_VERSION}
        fields["items"] = str(Path(self.items).resolve())
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FactsData:
    """The canvases (N, 28, 28) uint8 and the fact index of each, for train and test; `facts` (400, 3):
    the (digit, relation, item) of every fact."""

    x_train: torch.Tensor
    f_train: torch.Tensor
    x_test: torch.Tensor
    f_test: torch.Tensor
    facts: torch.Tensor


def all_facts() -> torch.Tensor:
    """(400, 3) int64: (digit, relation, item) of fact f = (digit * 4 + relation) * 10 + item."""
    d, r, i = torch.meshgrid(
        torch.arange(len(DIGITS)), torch.arange(len(RELATIONS)), torch.arange(len(ITEMS)), indexing="ij"
    )
    return torch.stack([d.reshape(-1), r.reshape(-1), i.reshape(-1)], 1)


def fact_names(facts: torch.Tensor) -> list[str]:
    return [f"<{DIGITS[d]}, {RELATIONS[r]}, {ITEMS[i]}>" for d, r, i in facts.tolist()]


def _glyphs(images: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 14, 14) uint8, 2x2 averages (rounded)."""
    x = images.float().reshape(len(images), CELL, 2, CELL, 2).mean((2, 4))
    return x.round().to(torch.uint8)


def compose(
    digit: torch.Tensor, item: torch.Tensor, relation: torch.Tensor, where: torch.Tensor
) -> torch.Tensor:
    """Canvases (N, 28, 28): the digit and item glyphs (N, 14, 14) in cells that show `relation`;
    `where` (N,) in {0, 1} is the row (left/right of) or column (above/below) they share."""
    n = len(digit)
    canvas = torch.zeros(n, 2 * CELL, 2 * CELL, dtype=torch.uint8)
    horizontal = relation < 2
    d_row = torch.where(horizontal, where, (relation == 3).long())  # below: the digit in the lower row
    i_row = torch.where(horizontal, where, 1 - d_row)
    d_col = torch.where(horizontal, (relation == 1).long(), where)  # right of: the digit on the right
    i_col = torch.where(horizontal, 1 - d_col, where)
    for k in range(n):  # two slice copies per canvas
        r, c = int(d_row[k]) * CELL, int(d_col[k]) * CELL
        canvas[k, r : r + CELL, c : c + CELL] = digit[k]
        r, c = int(i_row[k]) * CELL, int(i_col[k]) * CELL
        canvas[k, r : r + CELL, c : c + CELL] = item[k]
    return canvas


def _draw(labels: torch.Tensor, wanted: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """For each wanted class, the index of a random source image of that class."""
    out = torch.empty(len(wanted), dtype=torch.long)
    for c in wanted.unique().tolist():
        pool = torch.nonzero(labels == c)[:, 0]
        at = torch.nonzero(wanted == c)[:, 0]
        out[at] = pool[torch.randint(len(pool), (len(at),), generator=g)]
    return out


def _build_split(digits: dict, items: dict, split: str, per_fact: int, g: torch.Generator):
    facts = all_facts()
    f = torch.arange(NUM_FACTS).repeat_interleave(per_fact)
    d, r, i = facts[f].unbind(1)
    di = _draw(digits[f"{split}_labels"].long(), d, g)
    ii = _draw(items[f"{split}_labels"].long(), i, g)
    where = torch.randint(2, (len(f),), generator=g)
    x = compose(_glyphs(digits[f"{split}_images"][di]), _glyphs(items[f"{split}_images"][ii]), r, where)
    order = torch.randperm(len(f), generator=g)  # facts interleaved, not in blocks
    return x[order], f[order]


def build_facts(spec: FactsSpec) -> FactsData:
    """Compose the data set from the two idx directories (deterministic in `spec.seed`)."""
    digits, items = load_idx_dataset(spec.digits), load_idx_dataset(spec.items)
    g = torch.Generator().manual_seed(spec.seed)
    x_train, f_train = _build_split(digits, items, "train", spec.train_per_fact, g)
    x_test, f_test = _build_split(digits, items, "test", spec.test_per_fact, g)
    return FactsData(x_train, f_train, x_test, f_test, all_facts())


def load_facts(spec: FactsSpec, cache_dir: str | Path | None = None) -> FactsData:
    """The data set of `spec`, from `<cache_dir>/facts-<key>.safetensors` or built and cached there
    (atomic write: a concurrent reader sees the whole file or none). `cache_dir` None: no cache."""
    if cache_dir is None:
        return build_facts(spec)
    path = Path(cache_dir).expanduser() / f"facts-{spec.key()}.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as fh:
            return FactsData(**{k: fh.get_tensor(k) for k in FactsData.__dataclass_fields__})
    data = build_facts(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temporary(path.parent)
    try:
        write_safetensors({k: getattr(data, k).contiguous() for k in FactsData.__dataclass_fields__}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return data


def fact_groups(split: str = "units", seed: int = 0, num_groups: int = 4) -> list[torch.Tensor]:
    """Disjoint groups of fact indices, one per task (module docstring); sorted within a group."""
    facts = all_facts()
    g = torch.Generator().manual_seed(seed)
    if split == "units":
        if num_groups != 4:
            raise ValueError(
                f"split 'units' makes 4 groups (2 digit halves x 2 item halves), got {num_groups}"
            )
        dp, ip = torch.randperm(len(DIGITS), generator=g), torch.randperm(len(ITEMS), generator=g)
        halves_d, halves_i = (dp[:5], dp[5:]), (ip[:5], ip[5:])
        blocks = [(0, 0), (1, 1), (0, 1), (1, 0)]
        return [
            torch.nonzero(torch.isin(facts[:, 0], halves_d[a]) & torch.isin(facts[:, 2], halves_i[b]))[:, 0]
            for a, b in blocks
        ]
    if split == "random":
        if not 1 <= num_groups <= NUM_FACTS:
            raise ValueError(f"num_groups must be in [1, {NUM_FACTS}], got {num_groups}")
        perm = torch.randperm(NUM_FACTS, generator=g)
        return [chunk.sort().values for chunk in perm.chunk(num_groups)]
    raise ValueError(f"Unknown fact split {split!r}; choose one of {SPLITS}")
