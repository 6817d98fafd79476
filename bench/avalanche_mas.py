"""Avalanche 0.6.0's MAS plugin on the Hsu et al. Split MNIST protocol, for the side-by-side with masllm.

Usage (in a separate environment: Avalanche needs torchvision, which masllm's environment lacks):
    python -m venv /work/venvs/avalanche
    /work/venvs/avalanche/bin/pip install torch==2.14.1 torchvision==0.29.1 && \\
        /work/venvs/avalanche/bin/pip install avalanche-lib==0.6.0   # torch pinned as above
    OMP_NUM_THREADS=1 /work/venvs/avalanche/bin/python bench/avalanche_mas.py --seeds 3 [--lambda_reg 1 --alpha 0.5]

The same data as `bench/vision_tables.py --tables hsu`: Split MNIST pairs 0/1 ... 8/9 in that order,
labels 0/1 within a task, inputs in [0, 1] flattened, each task's training set less the same 10%
validation split (`masllm.tasks.vision.validation_split`'s seeded permutation, re-implemented here
with the same torch call, since masllm is not importable beside torchvision's torch), the same
seeds; MLP 784-400-400 with one 2-way head per task (Avalanche's `MultiHeadClassifier`), Adam 1e-3,
4 epochs, batch 128. Avalanche's MAS (FACIL-style): Omega = mean over mini-batches of |d mean_b
||F||^2 / d theta| in train mode, merged by Omega <- alpha Omega + (1 - alpha) Omega_new, over every
training image of the task; its `Naive` strategy keeps one Adam for the whole sequence (0.6.0's
`make_optimizer` does not reset the state), as Hsu et al.'s code and the masllm table. Prints R's last row, ACC and forgetting per
seed, and writes them as JSON. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin, MASPlugin
from torch import nn

PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def validation_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same call as masllm.tasks.vision.validation_split: (train, validation) indices."""
    k = round(n * fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[k:].sort().values, order[:k].sort().values


def split_mnist(data_dir: Path, validation: float, seed: int, limit: int | None = None):
    x = {
        s: read_idx(data_dir / f"{p}-images-idx3-ubyte.gz") for s, p in (("train", "train"), ("test", "t10k"))
    }
    y = {
        s: read_idx(data_dir / f"{p}-labels-idx1-ubyte.gz") for s, p in (("train", "train"), ("test", "t10k"))
    }
    train, test = [], []
    for a, b in PAIRS:
        parts = {}
        for s in ("train", "test"):
            keep = np.isin(y[s], (a, b))
            xs = torch.from_numpy(x[s][keep].reshape(-1, 784).astype(np.float32) / 255.0)
            parts[s] = (xs, torch.from_numpy((y[s][keep] == b).astype(np.int64)))
        idx, _ = validation_split(len(parts["train"][1]), validation, seed)
        idx = idx[:limit] if limit else idx  # smoke runs only
        train.append((parts["train"][0][idx], parts["train"][1][idx]))
        test.append(parts["test"])
    return train, test


class MLP(MultiTaskModule):
    """784-400-400 ReLU, one 2-way head per task (Hsu et al.'s MLP)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU())
        self.classifier = MultiHeadClassifier(400, initial_out_features=2)

    def forward_single_task(self, x, task_label):
        return self.classifier(self.features(x), task_label)


@torch.no_grad()
def accuracy(model: MLP, x: torch.Tensor, y: torch.Tensor, task: int) -> float:
    model.eval()
    pred = model(x, torch.full((len(x),), task)).argmax(-1)
    return 100.0 * float((pred == y).float().mean())


def run(args, seed: int) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    train, test = split_mnist(Path(args.data) / "mnist", args.validation, seed, args.smoke)
    bench = tensors_benchmark(train, test, task_labels=list(range(len(PAIRS))))
    model = MLP()
    strategy = Naive(
        model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), criterion=nn.CrossEntropyLoss(),
        train_mb_size=128, train_epochs=4, eval_mb_size=1000,
        plugins=[MASPlugin(lambda_reg=args.lambda_reg, alpha=args.alpha)], evaluator=EvaluationPlugin(),
    )  # fmt: skip
    t0, R = time.time(), []
    for i, exp in enumerate(bench.train_stream):
        strategy.train(exp)  # heads of later tasks do not exist yet: R[i][j > i] is None
        R.append([accuracy(model, x, y, t) if t <= i else None for t, (x, y) in enumerate(test)])
    T = len(R)
    forgetting = [R[i][i] - R[-1][i] for i in range(T - 1)]
    out = {
        "R": R,
        "acc": sum(R[-1]) / T,
        "forgetting": sum(forgetting) / (T - 1),
        "seconds": time.time() - t0,
    }
    print(f"seed {seed}: final {[round(v, 2) for v in R[-1]]} ACC {out['acc']:.2f} "
          f"forgetting {out['forgetting']:.2f} ({out['seconds']:.0f} s)", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lambda_reg", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--validation", type=float, default=0.1)
    ap.add_argument(
        "--smoke", type=int, default=None, help="train on this many images per task (a smoke run)"
    )
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="bench/results/vision/avalanche_mas.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = [run(args, s) for s in range(args.seeds)]
    accs = [r["acc"] for r in runs]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"Avalanche {__import__('avalanche').__version__} MAS (lambda {args.lambda_reg:g}, alpha {args.alpha:g}): "
          f"ACC {statistics.mean(accs):.2f} ± {sd:.2f}, forgetting {statistics.mean(r['forgetting'] for r in runs):.2f} "
          f"({len(runs)} seeds)")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"lambda_reg": args.lambda_reg, "alpha": args.alpha, "runs": runs}, indent=1)
    )


if __name__ == "__main__":
    main()
