"""Two tasks in sequence: MAS must protect task 1 better than plain fine-tuning (measured)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import TrainingArguments

from masllm import MASConfig, MASTrainer, Omega, compute_importance


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class TeacherTask(Dataset):
    """Labels from a fixed random linear teacher: two seeds give two conflicting tasks."""

    def __init__(self, seed: int, n: int = 256):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x @ torch.randn(8, 4, generator=g)).argmax(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def task_loss(model, task):
    with torch.no_grad():
        return float(model(task.x, task.y)["loss"])


def train(model, task, tmp, omega, lam):
    args = TrainingArguments(
        output_dir=str(tmp),
        per_device_train_batch_size=32,
        num_train_epochs=15,
        learning_rate=0.05,
        optim="sgd",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    MASTrainer(model, args, train_dataset=task, mas_config=MASConfig(reg_lambda=lam), omega=omega).train()


def run(tmp_path, lam):
    a, b = TeacherTask(1), TeacherTask(2)
    model = Classifier()
    train(model, a, tmp_path / "a", Omega(), lam)
    after_a = task_loss(model, a)
    omega = Omega(config=MASConfig(reg_lambda=lam)).merge(
        compute_importance(model, [a.x[i : i + 64] for i in range(0, 256, 64)], show_progress=False)
    )
    theta_a = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, b, tmp_path / "b", omega, lam)
    moved = {n: (p.detach() - theta_a[n]).abs() for n, p in model.named_parameters()}
    return task_loss(model, a) - after_a, task_loss(model, b), omega, moved


def high_low_movement(omega, moved):
    """Mean |delta theta| of the 10% most important weights over that of the 50% least important."""
    o = torch.cat([omega[n].flatten() for n in omega])
    m = torch.cat([moved[n].flatten() for n in omega])
    order = o.argsort()
    return float(m[order[-len(o) // 10 :]].mean() / m[order[: len(o) // 2]].mean())


def test_mas_forgets_less_and_spares_important_weights(tmp_path):
    rise_ft, loss_b_ft, omega_ft, moved_ft = run(tmp_path / "ft", 0.0)
    rise_mas, loss_b_mas, omega_mas, moved_mas = run(tmp_path / "mas", 3.0)
    assert rise_ft > 0.1, "the two tasks must conflict for the test to mean anything"
    assert rise_mas < 0.5 * rise_ft, (rise_mas, rise_ft)
    # important weights move much less under MAS than without it (same Omega: same task-1 model)
    assert high_low_movement(omega_mas, moved_mas) < 0.5 * high_low_movement(omega_ft, moved_ft)
    assert loss_b_mas < 1.25, "task 2 must still be learned (chance: ln 4 = 1.386)"
