"""Continual training on a sequence of domains with MAS, and the forgetting report.

Usage:
    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/sequential.py \\
        --config recipes/configs/demo.yaml [--key value ...]

The YAML file gives defaults for every argument (the dataclasses below and transformers'
`TrainingArguments`); command-line flags override it. `--method finetune|l2|mas|si|lwf|...` picks
the method (see `methods()`: "finetune", any key of `masllm.importance.ESTIMATORS`, "lwf",
"mean_imm", "mode_imm"); `--compare finetune,mas,l2=0.01` runs several on the same sequence (a
`=value` sets that run's strength, lambda) and puts them in one report. What a method adds to the
loop (its trainer, callbacks, post-task step) is its entry in `METHODS`.

The loop is the MAS paper's procedure (Aljundi et al., ECCV 2018, Sec. 4.2), one task at a time:
  1. train task k with a new MASTrainer: L_k + lambda sum Omega (theta - theta*)^2 (Eq. 3);
  2. estimate Omega_k on the task's unlabeled set (Eq. 2) and accumulate it: Omega += Omega_k;
     theta* <- the weights after task k;
  3. evaluate every task, seen or to come: row k of R;
  4. save model + Omega + that row under output_dir/<method>/<k>-<task>/.
Methods without Omega or with more steps plug in through their `METHODS` entry: SI records its
importance during step 1 (a callback), LwF's step 1 adds distillation to the model before the task,
IMM (l2 training) evaluates in step 3 the merge of task models 0..k and saves it in <k>-<task>/imm/.
Rerunning the same command resumes: finished tasks are skipped, an unfinished one continues from
its last Trainer checkpoint, and the report is the same as an uninterrupted run's (SI: an
unfinished task is trained again from its start, its path integral lives in memory). The first
task has no penalty whatever the method, so with --compare it is trained once and shared (SI
trains its own).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

import masllm
from masllm import LwFTrainer, MASConfig, MASTrainer, Omega, SynapticIntelligence, compute_importance
from masllm.checkpoint import CONFIG_NAME, OMEGA_NAME, atomic_write_text, load_tensors, save_tensors
from masllm.data import TASK_KINDS, Task, TaskSequence, evaluate_with_trainer
from masllm.hub import update_model_card
from masllm.report import RunResult, build_report, format_report, write_report
from masllm.teardown import exit_process

logger = logging.getLogger("masllm.recipes.sequential")
FINETUNE = "finetune"
ROW_FILE = "eval_row.json"  # written last: its presence marks a finished task
IMM_DIR = "imm"  # <k>-<task>/imm/: IMM's merged model of tasks 0..k (the task's own model is <k>-<task>/)
IMM_FISHER = "imm_fisher"  # <k>-<task>/imm_fisher.safetensors: task k's diagonal Fisher (mode-IMM)


# ---------------------------------------------------------------------------------------------
# The methods: what each one adds to the loop (the one place where they differ)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """How a method plugs into the loop. The default, `Method(estimator=name)`, is a penalty method:
    MASTrainer with lambda sum Omega (theta - theta*)^2 (Eq. 3), Omega from that estimator."""

    estimator: str | None  # MASConfig.method of Omega, estimated after each task (None: no Omega)
    trainer_class: type[MASTrainer] = MASTrainer  # for tasks k >= 1 (task 0 has nothing to keep)
    callbacks: Callable[[MASConfig], list[TrainerCallback]] = lambda config: []
    strength: str = "reg_lambda"  # the MASConfig field that `--compare name=value` sets
    fixed: dict[str, Any] = field(default_factory=dict)  # MASConfig fields the method requires
    imm: Literal["mean", "mode"] | None = None  # row k evaluates the IMM merge of task models 0..k
    records_training: bool = False  # importance recorded while training: never resumed nor shared
    zero_stages: tuple[int, ...] = (0, 1, 2, 3)  # the DeepSpeed ZeRO stages it runs under
    zero_note: str = ""  # why not under the others


# Methods that differ from `Method(estimator=name)`; every other key of ESTIMATORS is that.
METHODS: dict[str, Method] = {
    FINETUNE: Method(estimator=None),
    # Online EWC (Schwarz et al. 2018): EWC's Fisher merged by F <- gamma F + F_new, gamma = merge_decay.
    "online_ewc": Method(estimator="online_ewc", fixed={"merge": "decay"}),
    # SI (Zenke et al. 2017): the path integral is recorded by a callback during training (masllm/si.py).
    "si": Method(
        estimator="si",
        callbacks=lambda config: [SynapticIntelligence(config)],
        records_training=True,
        zero_stages=(),
        zero_note="its callback reads full gradients and weights around each optimizer step (masllm/si.py)",
    ),
    # LwF (Li & Hoiem 2016): no Omega; distillation to a frozen copy of the model before the task,
    # weight lambda_o = lwf_weight (masllm/lwf.py).
    "lwf": Method(
        estimator=None,
        trainer_class=LwFTrainer,
        strength="lwf_weight",
        zero_stages=(0, 1, 2),
        zero_note="its teacher, a copy of the model, would hold ZeRO-3's empty parameter placeholders",
    ),
    # IMM (Lee et al. 2017): L2-transfer training (the l2 method), then the task models are merged:
    # mean (Eq. 3) or mode with each task's diagonal Fisher (Eq. 7) (masllm/imm.py).
    **{
        f"{kind}_imm": Method(
            estimator="l2",
            imm=kind,
            zero_stages=(),
            zero_note="the merge is loaded into the model's full (unpartitioned) parameters",
        )
        for kind in ("mean", "mode")
    },
}


def methods() -> list[str]:
    """Every method the recipe can run: the table above plus each registered importance estimator."""
    extra = [m for m in METHODS if m != FINETUNE and m not in masllm.ESTIMATORS]
    return [FINETUNE, *masllm.ESTIMATORS, *extra]


def method_of(name: str) -> Method:
    """The wiring of method `name` (ValueError listing every accepted name when unknown)."""
    if name in METHODS:
        return METHODS[name]
    if name in masllm.ESTIMATORS:
        return Method(estimator=name)
    raise ValueError(f"Unknown method {name!r}; known methods are {methods()}")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub name or local path of a pretrained model."}
    )
    model_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "Build the model from this config instead (a dict with model_type; JSON on the CLI)."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer to use; default: the model's, or one trained on the domains."},
    )
    vocab_size: int = field(
        default=4096, metadata={"help": "Vocabulary of the locally trained BPE tokenizer."}
    )


@dataclass
class DataArguments:
    kind: str = field(default="causal_lm", metadata={"help": "Task kind, a key of masllm.data.TASK_KINDS."})
    domains: list | str | None = field(
        default=None,
        metadata={"help": "Ordered list of domains (masllm.data.DomainConfig fields; JSON on the CLI)."},
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per packed training block."})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Cache of tokenizer and packed domains (default: <output_dir>/cache)."},
    )
    document_seed: int = field(default=0, metadata={"help": "Seed of the document shuffle before packing."})
    tokenizer_chars_per_domain: int = field(
        default=1_000_000, metadata={"help": "Characters of each domain the local tokenizer is trained on."}
    )


@dataclass
class ContinualArguments(MASConfig):
    """MASConfig's fields (every one a flag) plus the choice of method(s) and the report options."""

    method: str = field(
        default="mas",
        metadata={
            "help": "'finetune' (no penalty), an importance estimator of masllm.importance.ESTIMATORS "
            "(mas, l2, ewc, online_ewc, lmas, mas_vector, spp, si), 'lwf', 'mean_imm' or 'mode_imm'."
        },
    )
    compare: str | None = field(
        default=None,
        metadata={"help": "Comma-separated methods run on the same sequence, e.g. 'finetune,mas,l2=0.01'."},
    )
    plots: bool = field(default=True, metadata={"help": "Write PNG plots beside report.json."})

    def validate(self) -> None:
        """Each run must name a known method (--method too, even when --compare overrides it);
        the other fields are checked as a MASConfig."""
        method_of(self.method)
        for method, reg_lambda in self.runs():
            self.mas_config(method, reg_lambda)

    def runs(self) -> list[tuple[str, float | None]]:
        """(method, lambda or None for the default) of each run, in order."""
        specs = self.compare.split(",") if self.compare else [self.method]
        out = []
        for spec in (s.strip() for s in specs):
            method, _, value = spec.partition("=")
            method_of(method)  # raises on an unknown name
            try:
                out.append((method, float(value) if value else None))
            except ValueError:
                raise ValueError(
                    f"compare entry {spec!r}: the part after '=' must be a number (the strength)"
                ) from None
        if len({self.run_name(m, v) for m, v in out}) != len(out):
            raise ValueError(f"compare lists a run twice: {self.compare!r}")
        return out

    def mas_config(self, method: str, strength: float | None) -> MASConfig | None:
        """The MASConfig of one run (None for finetune: no importance, no penalty). Without an
        Omega (LwF) the estimator named is unused; the other fields still apply (LwF's T)."""
        wiring = method_of(method)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(MASConfig)}
        values["method"] = wiring.estimator or "mas"
        defaults = MASConfig()
        for name, required in wiring.fixed.items():
            if values[name] not in (required, getattr(defaults, name)):
                raise ValueError(
                    f"Method {method!r} needs {name}={required!r} (set by the recipe); "
                    f"--{name} {values[name]!r} conflicts with it"
                )
            values[name] = required
        if strength is not None:
            values[wiring.strength] = strength
        config = MASConfig(**values)
        return None if method == FINETUNE else config

    def check_backend(self, zero_stage: int | None) -> None:
        """Before any training: every run's method must run under the DeepSpeed ZeRO stage (None: none)."""
        for method, _ in self.runs():
            wiring = method_of(method)
            if zero_stage is not None and zero_stage not in wiring.zero_stages:
                raise ValueError(
                    f"Method {method!r} does not run under DeepSpeed ZeRO-{zero_stage}: {wiring.zero_note}. "
                    f"ZeRO stages it runs under: {list(wiring.zero_stages) or 'none'} (DDP and one process: all)."
                )

    @staticmethod
    def run_name(method: str, reg_lambda: float | None) -> str:
        return method if reg_lambda is None else f"{method}-lambda{reg_lambda:g}"


# ---------------------------------------------------------------------------------------------
# Arguments: YAML defaults, command-line overrides
# ---------------------------------------------------------------------------------------------
def make_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, ContinualArguments, TrainingArguments))


def parse_args(argv: list[str] | None = None) -> tuple[Any, ...]:
    """`--config FILE` sets the defaults (every key must be a known argument); flags override them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = make_parser()
    defaults: dict[str, Any] = {}
    if known.config:
        defaults = yaml.safe_load(Path(known.config).read_text()) or {}
        valid = {a.dest for a in parser._actions}
        unknown = sorted(set(defaults) - valid)
        if unknown:
            raise ValueError(f"{known.config}: unknown keys {unknown}")
    if not torch.cuda.is_available() and "--use_cpu" not in rest:
        defaults.setdefault("use_cpu", True)  # else each CPU rank trains alone (DESIGN.md)
    if _given(rest, "--method") and not _given(rest, "--compare"):
        defaults.pop("compare", None)  # a --method flag overrides the file's compare too
    parser.set_defaults(**defaults)
    model_args, data_args, cl_args, training_args = parser.parse_args_into_dataclasses(args=rest)
    model_args.model_config = _structured(model_args.model_config)
    data_args.domains = _structured(data_args.domains)
    if not data_args.domains:
        raise ValueError("No domains: give `domains:` in the YAML file or --domains '[...]'")
    if data_args.kind not in TASK_KINDS:
        raise ValueError(f"Unknown kind {data_args.kind!r}; known kinds are {sorted(TASK_KINDS)}")
    data_args.cache_dir = data_args.cache_dir or str(Path(training_args.output_dir) / "cache")
    plugin = training_args.deepspeed_plugin
    cl_args.check_backend(zero_stage=int(plugin.zero_stage) if plugin is not None else None)
    return model_args, data_args, cl_args, training_args


def _given(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _structured(value: Any) -> Any:
    """A YAML/JSON string from the command line, or the already-structured value from the YAML file."""
    return yaml.safe_load(value) if isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------
# One method on the whole sequence
# ---------------------------------------------------------------------------------------------
def run_sequence(
    seq: TaskSequence,
    method: Method,
    mas_config: MASConfig | None,
    base_args: TrainingArguments,
    run_dir: Path,
    shared_first: Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> list[dict[str, dict[str, float]]]:
    """Train the tasks in order (MAS, Sec. 4.2) and return R's rows; resumes where a run stopped."""
    rows: list[dict[str, dict[str, float]]] = []
    previous: Path | None = None
    for k, task in enumerate(seq.tasks):
        step_dir = run_dir / f"{k}-{task.name}"
        if (step_dir / ROW_FILE).is_file():  # finished by an earlier launch
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
        trainer_class = method.trainer_class if k > 0 else MASTrainer
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
        )
        trainer.train(resume_from_checkpoint=checkpoint)

        # 2. Omega_k on the task's unlabeled data (Eq. 2), accumulated (Sec. 4.2); theta* <- theta.
        if method.estimator is not None:
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
        with (
            imm_merged(trainer, seq, run_dir, k, mas_config, method.imm)
            if method.imm
            else contextlib.nullcontext()
        ):
            row = {t.name: evaluate(trainer, t) for t in seq.tasks}

        # 4. Model + Omega (MASTrainer._save writes it) + a model card saying which tasks Omega
        #    protects (Hub-ready), then the row: the task is done.
        trainer.save_model(str(step_dir))
        if trainer.is_world_process_zero():
            if not trainer.omega.is_empty:
                update_model_card(step_dir, trainer.omega)
            atomic_write_text(step_dir / ROW_FILE, json.dumps(row, indent=2, sort_keys=True) + "\n")
        trainer.accelerator.wait_for_everyone()
        rows.append(row)
        previous = step_dir
    return rows


@contextlib.contextmanager
def imm_merged(
    trainer: MASTrainer,
    seq: TaskSequence,
    run_dir: Path,
    k: int,
    config: MASConfig,
    kind: Literal["mean", "mode"],
) -> Iterator[None]:
    """IMM (Lee et al. 2017): the model holds the merge of task models 0..k while the block runs
    (mean-IMM Eq. 3, mode-IMM Eq. 7 with each task's diagonal Fisher, alpha_t = 1/(k+1)); the merge
    is then saved under <k>-<task>/imm/ and task k's own weights are put back: the next task starts
    from them (IMM's transfer) and later merges read them from <k>-<task>/."""
    model, task = trainer.model, seq.tasks[k]
    step_dirs = [run_dir / f"{t}-{seq.tasks[t].name}" for t in range(k + 1)]
    own = _trainable_state(model)
    states = [_trainable_state(seq.model_init(str(d))) for d in step_dirs[:k]] + [own]
    if kind == "mode":
        fisher = compute_importance(
            model,
            task.importance_dataset,
            dataclasses.replace(config, method="ewc"),
            task_name=task.name,
            collate_fn=task.data_collator,
            show_progress=trainer.is_world_process_zero(),
        )
        fisher_k = {n: fisher[n] for n in own}
        if trainer.is_world_process_zero():
            save_tensors(fisher_k, step_dirs[k], IMM_FISHER)
        fishers = [load_tensors(d, IMM_FISHER) for d in step_dirs[:k]] + [fisher_k]
        merged = masllm.mode_imm(states, fishers) if k > 0 else own  # one model: itself, unrounded
    else:
        merged = masllm.mean_imm(states)
    _copy_into(model, merged)
    try:
        yield
        trainer.save_model(str(step_dirs[k] / IMM_DIR))
    finally:
        _copy_into(model, own)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters (what IMM merges; tied weights once)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _copy_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


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


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Run every requested method on the sequence and write the report; returns report.json's content."""
    model_args, data_args, cl_args, training_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    seq = TASK_KINDS[data_args.kind](model_args, data_args, training_args)
    output_dir = Path(training_args.output_dir)
    results, omegas, first_dir = [], {}, None
    for method, strength in cl_args.runs():
        name = cl_args.run_name(method, strength)
        wiring, mas_config = method_of(method), cl_args.mas_config(method, strength)
        run_dir = output_dir / name
        rows = run_sequence(seq, wiring, mas_config, training_args, run_dir, first_dir, callbacks)
        first_dir = first_dir or run_dir / f"0-{seq.tasks[0].name}"
        lam = getattr(mas_config, wiring.strength) if mas_config else None
        results.append(RunResult(name=name, method=method, reg_lambda=lam, rows=rows))
        last = run_dir / f"{len(seq.tasks) - 1}-{seq.tasks[-1].name}"
        if mas_config is not None and (last / CONFIG_NAME).is_file():
            omegas[name] = load_tensors(last, OMEGA_NAME)
    tasks = [t.name for t in seq.tasks]
    report = build_report(results, tasks, seq.metrics, seq.primary_metric)
    if training_args.should_save:
        write_report(report, output_dir, omegas, plots=cl_args.plots)
        print(format_report(report), flush=True)
        print(f"Report: {output_dir / 'report.md'}", flush=True)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
    exit_process()  # multi-process: wait for rank 0's report, leave without the gloo teardown race
