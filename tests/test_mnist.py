"""The idx loader on the real MNIST / Fashion-MNIST files, its errors, and the Split/Permuted benchmarks."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from masllm.tasks.vision.mnist import FILES, load_idx_dataset, permutations, permuted_tasks, split_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SUMS = DATA / "SHA256SUMS"
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="../shared/data not present")

# Published class counts of the MNIST training set (LeCun & Cortes), digits 0..9.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def mnist():
    return load_idx_dataset(DATA / "mnist", SUMS)


@needs_data
def test_real_mnist_shapes_counts_and_checksums(mnist):
    assert mnist["train_images"].shape == (60000, 28, 28) and mnist["train_images"].dtype == torch.uint8
    assert mnist["test_images"].shape == (10000, 28, 28)
    assert torch.bincount(mnist["train_labels"].long()).tolist() == MNIST_TRAIN_COUNTS
    assert int(mnist["train_images"].max()) == 255 and int(mnist["train_images"].min()) == 0


@needs_data
def test_real_fashion_mnist_loads_and_is_not_mnist(mnist):
    fashion = load_idx_dataset(DATA / "fashion-mnist", SUMS)
    assert fashion["test_images"].shape == (10000, 28, 28)
    assert torch.bincount(fashion["train_labels"].long()).tolist() == [6000] * 10  # balanced by design
    assert not torch.equal(fashion["test_images"][:100], mnist["test_images"][:100])


def write_idx(path: Path, data: torch.Tensor, magic: int | None = None) -> None:
    """An idx file written independently of the loader: big-endian magic, dims, then the bytes."""
    ndim = data.dim()
    header = (magic if magic is not None else 2048 + ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    path.write_bytes(gzip.compress(header + data.numpy().tobytes()))


def fake_dir(tmp_path: Path, n: int = 6) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, size in (("train", n), ("test", n // 2)):
        write_idx(
            tmp_path / FILES[f"{split}_images"],
            torch.randint(0, 256, (size, 28, 28), generator=g, dtype=torch.uint8),
        )
        write_idx(tmp_path / FILES[f"{split}_labels"], torch.arange(size, dtype=torch.uint8) % 10)
    return tmp_path


def test_roundtrip_of_independently_written_files(tmp_path):
    d = fake_dir(tmp_path)
    data = load_idx_dataset(d)
    assert data["train_images"].shape == (6, 28, 28)
    assert data["train_labels"].tolist() == [0, 1, 2, 3, 4, 5]


def test_missing_dir_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_idx_dataset(tmp_path / "nope")
    d = fake_dir(tmp_path)
    (d / FILES["test_labels"]).unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_idx_dataset(d)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-7]), "gzip"),  # truncated gzip stream
        (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-5])), "expected"),
        (lambda p: write_idx(p, torch.zeros(3, 28, 28, dtype=torch.uint8), magic=2049), "magic"),
        (lambda p: p.write_bytes(b"not a gzip file"), "gzip"),
    ],
)
def test_corrupt_files_raise(tmp_path, corrupt, message):
    d = fake_dir(tmp_path)
    corrupt(d / FILES["test_images"])
    with pytest.raises(ValueError, match=message):
        load_idx_dataset(d)


def test_sha256_mismatch_and_absent_entry(tmp_path):
    d = fake_dir(tmp_path / "mnist")
    lines = [f"{hashlib.sha256((d / f).read_bytes()).hexdigest()}  ./mnist/{f}" for f in FILES.values()]
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("\n".join(lines) + "\n")
    load_idx_dataset(d, sums)  # all good
    sums.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="no checksum"):
        load_idx_dataset(d, sums)
    sums.write_text("\n".join(lines) + "\n")
    shutil.copy(d / FILES["train_labels"], d / FILES["test_labels"])  # a valid idx file, wrong content
    with pytest.raises(ValueError, match="SHA-256"):
        load_idx_dataset(d, sums)


@needs_data
def test_split_mnist_tasks(mnist):
    tasks = split_tasks(mnist)
    assert [t.name for t in tasks] == [f"split_mnist:{a}-{a + 1}" for a in range(0, 10, 2)]
    for t, a in zip(tasks, range(0, 10, 2)):
        assert t.head == a // 2 and t.num_classes == 2
        assert t.x_train.shape[1] == 784 and t.x_train.dtype == torch.float32
        assert torch.bincount(t.y_train).tolist() == MNIST_TRAIN_COUNTS[a : a + 2]
        assert float(t.x_train.min()) >= 0.0 and float(t.x_train.max()) <= 1.0
    # the first training image of task "2-3" is the first 2 or 3 in the raw file
    first = int(torch.nonzero(torch.isin(mnist["train_labels"], torch.tensor([2, 3])))[0])
    assert torch.equal(tasks[1].x_train[0], mnist["train_images"][first].reshape(-1).float() / 255)
    with pytest.raises(ValueError, match="disjoint"):
        split_tasks(mnist, pairs=((0, 1), (1, 2)))


@needs_data
def test_permuted_mnist_tasks(mnist):
    small = {k: v[:500] for k, v in mnist.items()}
    tasks = permuted_tasks(small, num_tasks=3, seed=7)
    perms = permutations(3, seed=7)
    assert torch.equal(perms[0], torch.arange(784))
    assert torch.equal(torch.sort(perms[1]).values, torch.arange(784)) and not torch.equal(perms[1], perms[2])
    raw = mnist["test_images"][:5].reshape(5, -1).float() / 255
    assert torch.equal(tasks[2].x_test[:5], raw[:, perms[2]])
    assert torch.equal(tasks[1].y_train, small["train_labels"].long())
    assert {t.head for t in tasks} == {0}  # domain-incremental: one shared head
    assert [t.head for t in permuted_tasks(small, 3, seed=7, multi_head=True)] == [0, 1, 2]
    assert torch.equal(permutations(3, seed=7)[2], perms[2])  # reproducible
