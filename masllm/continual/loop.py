"""One method on a whole task sequence: the MAS paper's procedure (Aljundi et al. 2018, Sec. 4.2).

One task at a time:
  1. train task k with a new MASTrainer: L_k + lambda sum Omega (theta - theta*)^2 (Eq. 3);
  2. estimate Omega_k on the task's unlabeled set (Eq. 2) and accumulate it: Omega += Omega_k;
     theta* <- the weights after task k;
  3. evaluate every task, seen or to come: row k of R;
  4. save model + Omega + that row under <run_dir>/<k>-<task>/.
Methods without Omega or with more steps plug in through their `Method` entry: SI records its
importance during step 1 (a callback), LwF's step 1 adds distillation to the model before the task,
IMM (l2 training) evaluates in step 3 the merge of task models 0..k and saves it in <k>-<task>/imm/.
Rerunning resumes: finished tasks are skipped, an unfinished one continues from its last Trainer
checkpoint, and the rows are the same as an uninterrupted run's (SI: an unfinished task is trained
again from its start, its path integral lives in memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..config import MASConfig
from ..importance import compute_importance
from ..omega import Omega
from ..omega.hub import update_model_card
from ..omega.io import CONFIG_NAME, atomic_write_text
from ..tasks import Task, TaskSequence, evaluate_with_trainer
from ..trainer import MASTrainer
from .arguments import RunConfig
from .imm_step import imm_merged
from .output import quiet_progress

ROW_FILE = "eval_row.json"  # written last: its presence marks a finished task
logger = logging.getLogger("masllm")


def run_sequence(
    seq: TaskSequence,
    run: RunConfig,
    base_args: TrainingArguments,
    run_dir: Path,
    shared_first: Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> list[dict[str, dict[str, float]]]:
    """Train the tasks in order (MAS, Sec. 4.2) and return R's rows; resumes where a run stopped."""
    method, mas_config = run.wiring, run.mas
    if seq.trainer_class is not None and method.trainer_class is not MASTrainer:
        raise ValueError(
            f"Method {run.method!r} trains with a Trainer of its own, and so does this task kind"
        )
    rows: list[dict[str, dict[str, float]]] = []
    previous: Path | None = None
    for k, task in enumerate(seq.tasks):
        step_dir = run_dir / f"{k}-{task.name}"

        def say(phase: str, k: int = k, task: Task = task) -> None:  # one line per phase, main process
            logger.info("[%s] task %d/%d %r: %s", run.name, k + 1, len(seq.tasks), task.name, phase)

        if (step_dir / ROW_FILE).is_file():  # finished by an earlier launch
            say(f"finished earlier, results read from {step_dir}")
            rows.append(json.loads((step_dir / ROW_FILE).read_text()))
            previous = step_dir
            continue
        model = seq.model_init(str(previous) if previous else None)
        omega = _load_omega(previous, model, mas_config) if method.estimator else None

        # 1. Learn task k under the penalty of tasks < k (Eq. 3); continue from a checkpoint if any
        #    (this task's, or for task 0 another method's: no penalty yet, the same training).
        #    A method recording its importance during training (SI) always trains the whole task.
        checkpoint = None if method.records_training else _resume_point(step_dir, k, shared_first)
        step_callbacks = [*(callbacks or []), *method.callbacks(mas_config)]
        if checkpoint is not None and _training_finished(checkpoint):
            step_callbacks.append(NoUpdate())
        trainer_class, extra = (method.trainer_class, run.trainer_kwargs) if k > 0 else (MASTrainer, {})
        trainer_class = seq.trainer_class or trainer_class  # the kind's own (chat: MASSFTTrainer)
        trainer = trainer_class(
            model=model,
            args=_step_args(base_args, step_dir, task),
            train_dataset=task.train_dataset,
            data_collator=task.data_collator,
            processing_class=seq.processing_class,
            callbacks=step_callbacks,
            mas_config=mas_config,
            omega=omega,
            **seq.trainer_kwargs,
            **extra,
        )
        quiet_progress(trainer, base_args)
        say("train" + (f" (resuming {checkpoint})" if checkpoint else ""))
        trainer.train(resume_from_checkpoint=checkpoint)

        # 2. Omega_k on the task's unlabeled data (Eq. 2), accumulated (Sec. 4.2); theta* <- theta.
        if method.estimator is not None:
            size = len(task.importance_dataset) if hasattr(task.importance_dataset, "__len__") else "all"
            say(f"importance ({mas_config.method}) on {size} samples")
            new = compute_importance(
                trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model,  # ZeRO: the engine
                task.importance_dataset,
                mas_config,
                task_name=task.name,
                collate_fn=task.data_collator,
                show_progress=trainer.is_world_process_zero(),
            )
            trainer.omega.merge(new)

        # 3. Row k of R: every task, seen or to come (IMM: with the merge of task models 0..k).
        say(f"evaluate on {len(seq.tasks)} tasks" + (f" ({method.imm} IMM merge)" if method.imm else ""))
        with (
            imm_merged(trainer, seq, run_dir, k, mas_config, method.imm)
            if method.imm
            else contextlib.nullcontext()
        ):
            row = {t.name: evaluate(trainer, t) for t in seq.tasks}

        # 4. Model + Omega (MASTrainer._save writes it) + a model card saying which tasks Omega
        #    protects (Hub-ready), then the row: the task is done.
        say(f"save to {step_dir}")
        trainer.save_model(str(step_dir))
        if trainer.is_world_process_zero():
            if not trainer.omega.is_empty:
                update_model_card(step_dir, trainer.omega)
            atomic_write_text(step_dir / ROW_FILE, json.dumps(row, indent=2, sort_keys=True) + "\n")
        trainer.accelerator.wait_for_everyone()
        rows.append(row)
        previous = step_dir
    return rows


def _load_omega(previous: Path | None, model: torch.nn.Module, mas_config: MASConfig | None) -> Omega | None:
    """Omega of tasks < k from the previous task's checkpoint (None: finetune, or task 0)."""
    if mas_config is None or previous is None or not (previous / CONFIG_NAME).is_file():
        return None
    omega = Omega.from_pretrained(previous, model=model)
    omega.config = mas_config  # this run's merge rule and lambda, whatever was saved
    return omega


def _step_args(base: TrainingArguments, step_dir: Path, task: Task) -> TrainingArguments:
    """The run's TrainingArguments with this task's checkpoints folder and its overrides."""
    args = dataclasses.replace(base, output_dir=str(step_dir / "checkpoints"))
    for key, value in task.training_overrides.items():
        if not hasattr(args, key):
            raise ValueError(f"Task {task.name!r}: unknown training override {key!r}")
        setattr(args, key, value)
    return args


def _resume_point(step_dir: Path, k: int, shared_first: Path | None) -> str | None:
    """This task's last Trainer checkpoint; for task 0, another method's finished one (no penalty yet)."""
    own = step_dir / "checkpoints"
    if own.is_dir() and (last := get_last_checkpoint(str(own))):
        return last
    if k == 0 and shared_first is not None and (shared_first / ROW_FILE).is_file():
        return get_last_checkpoint(str(shared_first / "checkpoints"))
    return None


class NoUpdate(TrainerCallback):
    """Resuming a checkpoint that ended its training, the Trainer still runs one more step (unless
    at an epoch boundary); with learning rate 0 that step changes no weight (SGD, Adam, AdamW).
    Going through `train()` anyway builds what the importance pass needs (the DeepSpeed engine)."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        for group in optimizer.param_groups:
            group["lr"] = 0.0


def _training_finished(checkpoint: str) -> bool:
    """True when the checkpoint is the end of its training."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state["global_step"] >= state["max_steps"]


def evaluate(trainer: MASTrainer, task: Task) -> dict[str, float]:
    """The task's metrics with the current weights, using its own collator."""
    collator = trainer.data_collator
    trainer.data_collator = task.data_collator or collator
    try:
        return (task.evaluate or evaluate_with_trainer)(trainer, task)
    finally:
        trainer.data_collator = collator
