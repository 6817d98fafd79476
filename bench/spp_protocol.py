"""Which training protocol do the SPP paper's baseline rows imply? Fine-tuning only, one seed, quick.

Usage:
    OMP_NUM_THREADS=1 python bench/spp_protocol.py "layout='multi',lr=0.1,epochs=20" \\
        "layout='shared',lr=0.1,epochs=20" "layout='shared',lr=0.1,epochs=1,perm=10" \\
        "layout='shared',lr=0.1,epochs=1,perm=10,joint=True" ...

    OMP_NUM_THREADS=1 python bench/spp_protocol.py omega    # Omega's scale per estimator after task 1

`--data DIR` (first) reads MNIST from DIR instead of ../shared/data/mnist. Each other argument is one protocol (keyword arguments of `run`): Split MNIST (`perm=0`) or `perm` permuted
tasks, `layout` multi (one head per task: 2-way for Split MNIST, 10-way per permutation) or shared
(one 10-way output; Split MNIST tasks answer on their own two classes at test time), optimiser
`opt` (sgd, sgdm = SGD with momentum 0.9, adam), `lr`, `epochs`, lr `decay` per epoch, Gaussian
init `sigma`, `dropout`, or the `joint` model (all tasks' data at once). MLP 784-512-256, batch 128,
every training image (no validation split: this only locates the protocol). Prints ACC and BWT
(SPP Eq. 6, 8) to compare with the paper's fine-tuning (Table 2: 82.04 / -13.9; Table 3: 80.69 /
-6.21), single-head SGD (61.53 / -34.01; 70.45 / -18.05) and joint rows (99.87; 95.05).
"""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from masllm.continual.metrics import summarize  # noqa: E402
from masllm.tasks.vision import (  # noqa: E402
    MultiHeadClassifier,
    accuracy,
    load_idx_dataset,
    permuted_tasks,
    split_tasks,
    train_task,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def run(data, layout="multi", lr=0.1, epochs=1, sigma=None, dropout=0.0, decay=1.0, seed=0, bs=128,
        opt="sgd", perm=0, joint=False) -> str:  # fmt: skip
    shared = layout != "multi"
    tasks = (
        permuted_tasks(data, perm, multi_head=not shared) if perm else split_tasks(data, shared_head=shared)
    )
    torch.manual_seed(seed)
    sizes = [10] if shared else [t.num_classes for t in tasks]
    m = MultiHeadClassifier.from_backbone_config(
        "mlp", in_features=784, hidden_sizes=(512, 256), dropout=dropout, head_sizes=sizes
    )
    if sigma:
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0.0, sigma)
    g = torch.Generator().manual_seed(seed)
    o = {
        "sgd": lambda: torch.optim.SGD(m.parameters(), lr=lr),
        "sgdm": lambda: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9),
        "adam": lambda: torch.optim.Adam(m.parameters(), lr=lr),
    }[opt]()
    sched = torch.optim.lr_scheduler.ExponentialLR(o, decay)
    evaluate = lambda: [accuracy(m, u.x_test, u.y_test, u.head, classes=u.classes) for u in tasks]  # noqa: E731
    if joint:
        x, y = torch.cat([t.x_train for t in tasks]), torch.cat([t.y_train for t in tasks])
        h = torch.cat([torch.full((len(t.y_train),), t.head) for t in tasks])
        for _ in range(epochs):
            train_task(m, x, y, h, o, epochs=1, batch_size=bs, generator=g)
            sched.step()
        acc = evaluate()
        return (
            f"perm={perm} {layout} joint: ACC {sum(acc) / len(acc):.2f} per task {[round(a, 2) for a in acc]}"
        )
    R = []
    for t in tasks:
        for _ in range(epochs):
            train_task(m, t.x_train, t.y_train, t.head, o, epochs=1, batch_size=bs, generator=g)
            sched.step()
        R.append(evaluate())
    s = summarize(R, True)
    return (f"perm={perm} {layout} lr={lr} ep={epochs} sigma={sigma} do={dropout} decay={decay} {opt}: "
            f"ACC {s.acc:.2f} BWT {s.bwt:.2f} diag {[round(R[i][i], 1) for i in range(len(R))]}")  # fmt: skip


def omega_scale(data) -> None:
    """Mean and max of Omega (mas, spp, ewc) after task 1 of the Table 2 protocol (SGD 0.1, 20 epochs)."""
    from masllm import MASConfig, compute_importance
    from masllm.tasks.vision import batches

    t = split_tasks(data)[0]
    torch.manual_seed(0)
    m = MultiHeadClassifier.from_backbone_config(
        "mlp", in_features=784, hidden_sizes=(512, 256), head_sizes=[2] * 5
    )
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    train_task(
        m, t.x_train, t.y_train, 0, opt, epochs=20, batch_size=128, generator=torch.Generator().manual_seed(0)
    )
    imp = batches(t.x_train[:1000], t.y_train[:1000], 0, 256)  # labels: EWC's empirical Fisher only
    for method in ("mas", "spp", "ewc"):
        om = compute_importance(m, imp, MASConfig(method=method), task_name="t", show_progress=False)
        vals = torch.cat([v.flatten() for v in om.importance.values()])
        print(
            f"{method} mean {vals.mean():.3e} max {vals.max():.3e} frac>0 {(vals > 0).float().mean():.2f}",
            flush=True,
        )


def parse(spec: str) -> dict:
    """ "layout='multi',lr=0.1" -> {"layout": "multi", "lr": 0.1} (literals only)."""
    call = ast.parse(f"f({spec})", mode="eval").body
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def main() -> None:
    torch.set_num_threads(1)
    args = sys.argv[1:]
    data_dir = DATA
    if args[:1] == ["--data"]:  # --data DIR first: MNIST elsewhere
        data_dir, args = Path(args[1]), args[2:]
    data = load_idx_dataset(data_dir)
    t0 = time.time()
    for spec in args:
        if spec == "omega":
            omega_scale(data)
        else:
            print(run(data, **parse(spec)), flush=True)
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
