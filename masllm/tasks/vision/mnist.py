"""MNIST / Fashion-MNIST from the original idx files, and the two classic continual benchmarks.

- `load_idx_dataset(data_dir)`: the four `*-idx?-ubyte.gz` files of a directory as uint8 tensors,
  checked (magic number, dimensions, file length, optional `SHA256SUMS`), so a truncated or
  wrong file fails loudly instead of training on garbage.
- `split_tasks`: Split MNIST (Zenke et al. 2017; Hsu et al. 2018): 5 tasks of 2 classes each,
  labels re-indexed 0/1 within a task (one head per task, task-incremental); or, with
  `shared_head`, one 10-way head for all tasks, labels the digits themselves and each task answering
  on its own classes at test time (`TaskData.classes`: the masked-output protocol).
- `permuted_tasks`: Permuted MNIST (Goodfellow et al. 2013): every task applies one fixed pixel
  permutation, each drawn from its own seeded generator (`permutation`, also what the recipe's
  `permutation_seed` uses); task 0 is the identity unless told otherwise. One shared 10-way head
  (domain-incremental).

Everything is whole tensors (float32 in [0, 1], images flattened to 784 unless `flatten=False`),
so training loops can slice batches without a per-sample Python step.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_MAGIC = {1: 2049, 3: 2051}  # idx: 0x0000 0x08 (ubyte) ndim -> 2049 labels, 2051 images
SPLIT_MNIST_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


@dataclass
class TaskData:
    """One task: inputs and labels for training and testing, and the head it answers on."""

    name: str
    x_train: torch.Tensor  # (N, 784) float32 or (N, 1, 28, 28)
    y_train: torch.Tensor  # (N,) int64, within-task class index
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    head: int  # index of the classification head (task-incremental) or 0 (single head)
    classes: tuple[int, ...] | None = None  # the head's outputs the task answers on (None: all)


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """Parse one gzipped idx file, checking magic number, dimension count and payload length."""
    if not path.is_file():
        raise FileNotFoundError(f"Missing idx file {path}")
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is not a valid gzip file ({e})") from e
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an idx{ndim} header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[ndim]:
        raise ValueError(f"{path}: magic number {magic}, expected {_MAGIC[ndim]} (idx{ndim}, ubyte)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = offset + int(torch.tensor(dims).prod())
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, expected {expected} for dimensions {dims} (corrupt?)")
    data = torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8)
    return data.reshape(dims)


def _check_sha256(data_dir: Path, sums_file: Path) -> None:
    """Compare each idx file's SHA-256 with its line in a `sha256sum`-format file.

    Names in the sums file are taken relative to the sums file's own directory (as `sha256sum -c`).
    """
    wanted = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            wanted[(sums_file.parent / name.lstrip("*")).resolve()] = digest
    for fname in FILES.values():
        path = (data_dir / fname).resolve()
        if path not in wanted:
            raise ValueError(f"{sums_file} has no checksum for {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != wanted[path]:
            raise ValueError(f"{path}: SHA-256 {digest} differs from {wanted[path]} in {sums_file}")


def load_idx_dataset(data_dir: str | Path, sha256sums: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Train/test images (N, 28, 28) and labels (N,) as uint8, from a directory of the 4 idx.gz files.

    `sha256sums`: a `sha256sum` output file to verify the files against first (e.g. the
    SHA256SUMS beside the data); None skips the check.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Data directory {data_dir} does not exist")
    missing = [f for f in FILES.values() if not (data_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir} lacks {missing} (expected the 4 MNIST-format idx .gz files)")
    if sha256sums is not None:
        _check_sha256(data_dir, Path(sha256sums))
    out = {key: _read_idx(data_dir / f, 3 if "images" in key else 1) for key, f in FILES.items()}
    for split in ("train", "test"):
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if images.shape[0] != labels.shape[0] or tuple(images.shape[1:]) != (28, 28):
            raise ValueError(
                f"{data_dir}: {split} images {tuple(images.shape)} vs labels {tuple(labels.shape)}"
            )
        if int(labels.max()) > 9:
            raise ValueError(f"{data_dir}: {split} labels outside 0..9")
    return out


def to_float(images: torch.Tensor, flatten: bool = True) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> float32 in [0, 1], (N, 784) or (N, 1, 28, 28)."""
    x = images.float().div_(255.0)  # [0, 1]
    return x.reshape(len(x), -1) if flatten else x.unsqueeze(1)  # (N, 784) or (N, 1, 28, 28)


def split_tasks(
    data: dict[str, torch.Tensor],
    pairs: tuple[tuple[int, ...], ...] = SPLIT_MNIST_PAIRS,
    flatten: bool = True,
    name: str = "split_mnist",
    shared_head: bool = False,
) -> list[TaskData]:
    """One task per group of classes, labels renumbered 0..k-1 in the given order, one head each.

    `shared_head`: every task on head 0 with 10 outputs, labels kept as digits, and `classes` = the
    task's digits, so that evaluation takes the argmax over the task's own outputs only.
    """
    seen = [c for group in pairs for c in group]
    if len(set(seen)) != len(seen) or not all(0 <= c <= 9 for c in seen):
        raise ValueError(f"Class groups must be disjoint digits 0..9, got {pairs}")
    tasks = []
    for t, group in enumerate(pairs):
        parts = {}
        for split in ("train", "test"):
            labels = data[f"{split}_labels"].long()
            mask = torch.isin(labels, torch.tensor(group))
            remap = torch.arange(10) if shared_head else torch.full((10,), -1, dtype=torch.long)
            if not shared_head:
                remap[list(group)] = torch.arange(len(group))
            parts[split] = (to_float(data[f"{split}_images"][mask], flatten), remap[labels[mask]])
        label = "-".join(map(str, group))
        shape = (10, 0, tuple(group)) if shared_head else (len(group), t, None)
        tasks.append(TaskData(f"{name}:{label}", *parts["train"], *parts["test"], *shape))
    return tasks


def permutation(seed: int | None) -> torch.Tensor:
    """The pixel permutation of one Permuted MNIST task, from its own seed (None: the identity).

    One generator per task, so a task is reproducible on its own (the recipe's `permutation_seed`)."""
    if seed is None:
        return torch.arange(784)
    return torch.randperm(784, generator=torch.Generator().manual_seed(seed))


def permutations(num_tasks: int, seed: int, identity_first: bool = True) -> list[torch.Tensor]:
    """The permutations of a `num_tasks` sequence: task t uses `permutation(1000 * seed + t)`, so
    seed 0 gives exactly the recipe's tasks `permutation_seed: t`; task 0 is the identity if asked."""
    return [permutation(None if identity_first and t == 0 else 1000 * seed + t) for t in range(num_tasks)]


def permuted_tasks(
    data: dict[str, torch.Tensor],
    num_tasks: int = 10,
    seed: int = 0,
    identity_first: bool = True,
    name: str = "permuted_mnist",
    multi_head: bool = False,
) -> list[TaskData]:
    """`num_tasks` tasks: all 10 digits, pixels permuted by a per-task fixed permutation.

    One shared head (domain-incremental, the usual Permuted MNIST) or, with `multi_head`, a 10-way
    head per task (task-incremental, the MAS paper's object-recognition protocol).
    """
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    train = to_float(data["train_images"], True)
    test = to_float(data["test_images"], True)
    ytr, yte = data["train_labels"].long(), data["test_labels"].long()
    return [
        TaskData(f"{name}:{t}", train[:, p], ytr, test[:, p], yte, 10, t if multi_head else 0)
        for t, p in enumerate(permutations(num_tasks, seed, identity_first))
    ]
