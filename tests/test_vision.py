"""Multi-head vision models: routing, backbones from config, head handling under MAS, a split sequence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference import brute_force_omega
from transformers import TrainingArguments, default_data_collator

from masllm import MASConfig, MASTrainer, compute_importance
from masllm.tasks.vision import (
    MultiHeadClassifier,
    TaskDataset,
    accuracy,
    batches,
    build_backbone,
    train_task,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def mlp(heads=(2, 2), hidden=(16, 12), seed=0) -> MultiHeadClassifier:
    torch.manual_seed(seed)
    return MultiHeadClassifier.from_backbone_config(
        "mlp", in_features=20, hidden_sizes=hidden, head_sizes=heads
    )


def test_routing_matches_each_head_and_rejects_bad_ids():
    model = mlp(heads=(3, 3, 5))
    x = torch.randn(6, 20)
    ids = torch.tensor([0, 1, 1, 0, 1, 0])
    mixed = model(x, task_ids=ids).logits
    feats = model.backbone(x)
    ref = torch.stack([model.heads[str(int(t))](f) for f, t in zip(feats, ids)])  # one sample at a time
    torch.testing.assert_close(mixed, ref)
    assert model(x, task_ids=2).logits.shape == (6, 5)
    with pytest.raises(ValueError, match="differ in size"):
        model(x, task_ids=torch.tensor([0, 2, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="outside"):
        model(x, task_ids=3)
    with pytest.raises(ValueError, match="entries"):
        model(x, task_ids=torch.tensor([0, 1]))
    out = model(x, labels=torch.zeros(6, dtype=torch.long), task_ids=0)
    torch.testing.assert_close(
        out.loss,
        torch.nn.functional.cross_entropy(model(x, task_ids=0).logits, torch.zeros(6, dtype=torch.long)),
    )


@pytest.mark.parametrize(
    "kind, config",
    [
        ("vit", dict(image_size=28, patch_size=7, num_channels=1, hidden_size=16, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=32, image_shape=(1, 28, 28))),
        ("resnet", dict(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                        layer_type="basic", image_shape=(1, 28, 28))),
        ("convnext", dict(num_channels=1, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], patch_size=2, image_shape=(1, 28, 28))),
    ],
)  # fmt: skip
def test_transformers_backbones_from_config(kind, config):
    torch.manual_seed(0)
    model = MultiHeadClassifier(build_backbone(kind, **config), head_sizes=[2, 3])
    images = torch.rand(3, 1, 28, 28)
    assert model(images, task_ids=1).logits.shape == (3, 3)
    torch.testing.assert_close(
        model(images.reshape(3, -1), task_ids=0).logits, model(images, task_ids=0).logits
    )
    model.eval()
    omega = compute_importance(model, [{"pixel_values": images, "task_ids": torch.ones(3, dtype=torch.long)}],
                               MASConfig(), show_progress=False)  # fmt: skip
    assert all(torch.isfinite(t).all() and (t >= 0).all() for t in omega.importance.values())
    assert float(omega["heads.0.weight"].sum()) == 0.0 and float(omega["heads.1.weight"].sum()) > 0


def test_unknown_backbone_and_headless_model():
    with pytest.raises(ValueError, match="Unknown backbone"):
        build_backbone("alexnet")
    with pytest.raises(ValueError, match="no head"):
        MultiHeadClassifier.from_backbone_config("mlp", in_features=20, hidden_sizes=(4,))(torch.randn(2, 20))


def test_importance_through_the_head_is_exact_eq2():
    """Omega of a multi-head model on task 1's data: per-sample |g| (Eq. 2) equals a one-sample loop."""
    model = mlp().eval()
    x = torch.randn(7, 20)
    omega = compute_importance(model, batches(x, None, 1, 4), MASConfig(), show_progress=False)

    class Head1(torch.nn.Module):  # the reference sees a plain function x -> head-1 logits
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, task_ids=1).logits

    ref = brute_force_omega(Head1(model), [x[i : i + 1] for i in range(7)])
    for name, value in omega.importance.items():
        torch.testing.assert_close(value, ref[f"m.{name}"], rtol=1e-5, atol=1e-7)


def toy_task(seed: int, n: int = 256):
    """Two classes from a random linear teacher on 20-d inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = (x @ torch.randn(20, generator=g) > 0).long()
    return x, y


def test_new_heads_free_old_heads_protected():
    """After task 0 a new head joins; under a strong penalty the backbone and head 0 stay put, head 1 learns."""
    model = mlp(heads=(2,), hidden=(64, 64))
    x0, y0 = toy_task(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_task(model, x0, y0, 0, opt, epochs=5, batch_size=64, generator=torch.Generator().manual_seed(0))
    omega = compute_importance(
        model, batches(x0, None, 0, 64), MASConfig(), task_name="t0", show_progress=False
    )
    task0_omega = {n: t.clone() for n, t in omega.importance.items()}
    head = model.add_head(2)
    assert head == 1 and not any(n.startswith("heads.1") for n in omega)  # new head: not in Omega at all
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    x1, y1 = toy_task(1)
    untrained = accuracy(model, x1, y1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_task(model, x1, y1, 1, opt, epochs=40, batch_size=64, omega=omega, reg_lambda=1e4,
               generator=torch.Generator().manual_seed(1))  # fmt: skip
    moved = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters() if n in before}
    for n, o in task0_omega.items():  # every weight task 0 depends on stays put (Omega = 0 ones are free)
        assert float(moved[n][o > 1e-3 * o.max()].max()) < 0.02, n
    assert float(moved["heads.1.weight"].max()) > 0.1
    assert accuracy(model, x1, y1, 1) > untrained + 10  # the free head alone still learns the new task

    new = compute_importance(
        model, batches(x1, None, 1, 64), MASConfig(), task_name="t1", show_progress=False
    )
    omega.merge(new)
    # head 0 keeps exactly its task-0 importance (task 1 never reaches it), head 1 joins from Omega = 0
    torch.testing.assert_close(omega["heads.0.weight"], task0_omega["heads.0.weight"])
    torch.testing.assert_close(omega["heads.1.weight"], new["heads.1.weight"])
    assert float(omega["heads.1.weight"].sum()) > 0


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="../shared/data not present")
def test_tiny_split_mnist_sequence_through_mastrainer(tmp_path):
    """Three Split-MNIST tasks (300 images each) through MASTrainer and compute_importance: every task
    is learnt when it comes, and MAS keeps the weights task 0 relies on much closer to theta*_0 than
    fine-tuning from the same start (the drift sum Omega_0 (theta - theta*_0)^2, measured)."""
    from masllm.penalty import penalty_value
    from masllm.tasks.vision.mnist import load_idx_dataset, split_tasks

    data = load_idx_dataset(DATA / "mnist")
    small = {k: v[:2000] for k, v in data.items()}
    tasks = split_tasks(small, pairs=((0, 1), (2, 3), (4, 5)))

    def run(reg_lambda: float) -> tuple[list[list[float]], float]:
        torch.manual_seed(0)
        model = MultiHeadClassifier.from_backbone_config("mlp", hidden_sizes=(32,), head_sizes=[2, 2, 2])
        omega, first, R = None, None, []
        for k, t in enumerate(tasks):
            args = TrainingArguments(
                output_dir=str(tmp_path / f"{reg_lambda}-{k}"), per_device_train_batch_size=32, num_train_epochs=2,
                learning_rate=0.05, optim="sgd", report_to=[], save_strategy="no", use_cpu=True, seed=0,
                disable_tqdm=True,
            )  # fmt: skip
            train = TaskDataset(t.x_train[:300], t.y_train[:300], t.head)
            MASTrainer(model, args, train_dataset=train, data_collator=default_data_collator,
                       mas_config=MASConfig(reg_lambda=reg_lambda), omega=omega).train()  # fmt: skip
            R.append([accuracy(model, s.x_test, s.y_test, s.head) for s in tasks])
            new = compute_importance(model, TaskDataset(t.x_train[:300], None, t.head), MASConfig(reg_lambda=reg_lambda),
                                     task_name=t.name, show_progress=False)  # fmt: skip
            first = first or {n: (o.clone(), new.anchors[n].clone()) for n, o in new.importance.items()}
            omega = new if omega is None else omega.merge(new)
        params = dict(model.named_parameters())
        drift = penalty_value([params[n] for n in first], *zip(*first.values()), weight=1.0)
        return R, float(drift)

    (mas, mas_drift), (finetune, finetune_drift) = run(reg_lambda=50.0), run(reg_lambda=0.0)
    assert all(mas[k][k] > 85 for k in range(3)), mas  # each task learnt when it came, penalty or not
    assert mas_drift < 0.2 * finetune_drift, (mas_drift, finetune_drift)
    assert mas[-1][0] >= finetune[-1][0] - 0.5
