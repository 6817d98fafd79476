"""Two tasks in sequence: MAS must protect task 1 better than plain fine-tuning (measured)."""

from __future__ import annotations

import torch
from conftest import Classifier, TeacherTask
from transformers import TrainingArguments

from masllm import MASConfig, MASTrainer, Omega, compute_importance


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
    a, b = TeacherTask(1, n=256), TeacherTask(2, n=256)
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
