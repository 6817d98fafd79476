"""recipes/sequential.py with the methods that are more than an estimator: SI, LwF, IMM, online EWC.

One `--compare finetune,si,lwf,mode_imm` run of the tiny config (task 0 trained by finetune and
shared, SI trains its own). References are independent of the recipe: the IMM merge recomputed
from the saved task models and a Fisher taken by `compute_importance(method='ewc')` on each, then
evaluated by a plain loop; SI's Omega sum checked against the per-task files.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_recipe import _R, _argv, _launch, _reference_metrics, recipe
from transformers import AutoModelForCausalLM, TrainerCallback

from masllm import LwFConfig, MASConfig, compute_importance, mode_imm
from masllm.omega.io import OMEGA_NAME, load_tensors
from masllm.tasks import TASK_KINDS
from masllm.tasks.text import causal_lm_collator

RUNS = ("finetune", "si", "lwf", "mode_imm")


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("methods")
    return out, recipe.main(_argv(out, "--compare", ",".join(RUNS)))


def test_every_method_lands_in_one_report(methods_run):
    _, report = methods_run
    assert list(report["runs"]) == list(RUNS)
    for run in RUNS:
        R = _R(report, run)
        assert R.shape == (2, 2) and torch.isfinite(R).all(), run
    # Task 0 has nothing to keep: the same row in every method (SI trained its own, identically).
    for run in RUNS[1:]:
        torch.testing.assert_close(_R(report, run)[0], _R(report, "finetune")[0], rtol=1e-5, atol=0)


def test_lwf_distils(methods_run):
    """LwF's task 1 adds the distillation term: its row differs from fine-tuning's; no Omega kept."""
    out, report = methods_run
    assert not torch.allclose(_R(report, "lwf")[1], _R(report, "finetune")[1], rtol=1e-6, atol=0)
    assert report["runs"]["lwf"]["reg_lambda"] == LwFConfig().lwf_weight  # the strength shown is lambda_o
    assert not (out / "lwf" / "1-code" / f"{OMEGA_NAME}.safetensors").exists()


def test_si_omega_is_recorded_and_summed(methods_run):
    """SI's Omega (Zenke Eq. 5) is written after each task, >= 0, not zero, and summed over tasks."""
    out, _ = methods_run
    first = load_tensors(out / "si" / "0-docs", OMEGA_NAME)
    final = load_tensors(out / "si" / "1-code", OMEGA_NAME)
    assert set(first) == set(final)
    assert all((v >= 0).all() for v in final.values())
    assert sum(v.sum().item() for v in first.values()) > 0
    # merge = sum: Omega after task 1 = Omega_0 + Omega_1 with Omega_1 >= 0 and not all zero.
    increments = [final[n] - first[n] for n in final]
    assert all((d >= -1e-6 * final[n].abs().max()).all() for d, n in zip(increments, final))
    assert sum(d.sum().item() for d in increments) > 0


class InterruptSI(TrainerCallback):
    """Stop the SI run in the middle of task 1, after its first checkpoint (save_steps = 3)."""

    def on_step_end(self, args, state, control, **kwargs):
        if "si/1-" in args.output_dir.replace(os.sep, "/") and state.global_step == 4:
            raise KeyboardInterrupt("simulated interruption")


def test_si_task_interrupted_is_trained_again_whole(methods_run, tmp_path):
    """SI's path integral lives in memory: rerunning retrains the unfinished task from its start
    (resuming at step 3 would integrate only steps 4-6), giving the uninterrupted Omega and R."""
    out, expected = methods_run
    with pytest.raises(KeyboardInterrupt):
        recipe.main(_argv(tmp_path, "--compare", "finetune,si"), callbacks=[InterruptSI()])
    assert (tmp_path / "si" / "1-code" / "checkpoints" / "checkpoint-3").is_dir()
    resumed = recipe.main(_argv(tmp_path, "--compare", "finetune,si"))
    torch.testing.assert_close(_R(resumed, "si"), _R(expected, "si"), rtol=1e-5, atol=0)
    omega, reference = (load_tensors(d / "si" / "1-code", OMEGA_NAME) for d in (tmp_path, out))
    for n, value in reference.items():
        torch.testing.assert_close(omega[n], value, rtol=1e-4, atol=1e-8)


def test_mode_imm_is_the_fisher_weighted_mean_of_the_task_models(methods_run):
    """The final IMM model = Eq. 7 on the saved task models with each one's Fisher, and R's last
    row is that model's metrics."""
    out, report = methods_run
    model_args, data_args, cl_args, training_args = recipe.parse_args(_argv(out))
    seq = TASK_KINDS["causal_lm"](model_args, data_args, training_args)
    fisher_cfg = MASConfig(method="ewc")
    states, fishers = [], []
    for k, task in enumerate(seq.tasks):
        model = AutoModelForCausalLM.from_pretrained(out / "mode_imm" / f"{k}-{task.name}")
        states.append({n: p.detach().clone() for n, p in model.named_parameters()})
        f = compute_importance(
            model, task.importance_dataset, fisher_cfg, collate_fn=causal_lm_collator, show_progress=False
        )
        fishers.append(dict(f))
    expected = mode_imm(states, fishers)
    # The merge is not just one of the task models.
    assert any(not torch.allclose(expected[n], states[-1][n]) for n in expected)
    merged = AutoModelForCausalLM.from_pretrained(out / "mode_imm" / "1-code" / recipe.IMM_DIR)
    for n, p in merged.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-5, atol=1e-7)
    for j, other in enumerate(seq.tasks):
        ref = _reference_metrics(merged, other.eval_dataset)
        assert report["runs"]["mode_imm"]["R"]["perplexity"][1][j] == pytest.approx(
            ref["perplexity"], rel=1e-4
        )


def test_method_names_and_their_requirements(tmp_path):
    with pytest.raises(ValueError, match="Unknown method 'nope'.*'lwf'.*'mode_imm'"):
        recipe.parse_args(_argv(tmp_path, "--method", "nope"))  # even with the YAML's compare
    with pytest.raises(ValueError, match="Unknown method 'imm'"):
        recipe.parse_args(_argv(tmp_path, "--compare", "finetune,imm"))
    for name in ("finetune", "mas", "si", "lwf", "mean_imm", "mode_imm", "online_ewc"):
        assert name in recipe.methods()
    # online EWC: the recipe sets merge='decay' (gamma = merge_decay) and refuses another rule.
    cl_args = recipe.parse_args(_argv(tmp_path, "--method", "online_ewc", "--merge_decay", "0.8"))[2]
    assert cl_args.runs() == [("online_ewc", None)]  # the --method flag overrides the YAML's compare
    config = cl_args.run_config("online_ewc", None).mas
    assert (config.merge, config.merge_decay) == ("decay", 0.8)
    with pytest.raises(ValueError, match="'online_ewc' needs merge='decay'"):
        recipe.parse_args(_argv(tmp_path, "--method", "online_ewc", "--merge", "ema"))
    # SI (any ZeRO stage) and LwF (ZeRO-3) under DeepSpeed: refused before any training.
    cl_args = recipe.parse_args(_argv(tmp_path, "--compare", "finetune,lwf,si"))[2]
    cl_args.check_backend(zero_stage=None)
    with pytest.raises(ValueError, match="'si' does not run under DeepSpeed ZeRO-2: its callback"):
        cl_args.check_backend(zero_stage=2)
    cl_args = recipe.parse_args(_argv(tmp_path, "--compare", "finetune,lwf"))[2]
    cl_args.check_backend(zero_stage=2)
    with pytest.raises(ValueError, match="'lwf' does not run under DeepSpeed ZeRO-3"):
        cl_args.check_backend(zero_stage=3)
    # `=value` sets LwF's lambda_o.
    assert cl_args.run_config("lwf", 0.25).trainer_kwargs["lwf_config"].lwf_weight == 0.25


def test_fsdp2_backend_refuses_methods_before_training(tmp_path, monkeypatch):
    """Under FSDP2 the penalty methods run; SI, LwF, IMM and l-MAS are refused with the reason, and
    FSDP1 is refused for every method, all by parse_args (before any model or data is built)."""
    cl_args = recipe.parse_args(_argv(tmp_path, "--compare", "finetune,mas,l2,ewc,mas_vector,spp"))[2]
    cl_args.check_backend(zero_stage=None, fsdp_version=2)
    reasons = {
        "si": "path integrals",
        "lwf": "second sharded module",
        "mean_imm": "unsharded",
        "lmas": "forward hooks",
    }
    for method, reason in reasons.items():
        cl_args = recipe.parse_args(_argv(tmp_path, "--method", method))[2]
        with pytest.raises(ValueError, match=f"'{method}' does not run under FSDP2: .*{reason}"):
            cl_args.check_backend(zero_stage=None, fsdp_version=2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for cpu_fsdp2.yaml
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ValueError, match="'si' does not run under FSDP2"):
        recipe.parse_args(_argv(tmp_path, "--method", "si"))
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="FSDP version 1: masllm runs under FSDP2"):
        recipe.parse_args(_argv(tmp_path, "--method", "mas"))


@pytest.mark.distributed
def test_two_processes_match_one(methods_run, tmp_path):
    """DDP, 2 ranks x 4 samples: SI's callback, LwF's teacher and the IMM merge give the same report."""
    _, expected = methods_run
    result = _launch(
        "accelerate_configs/cpu_ddp.yaml",
        tmp_path,
        "--compare",
        ",".join(RUNS),
        "--per_device_train_batch_size",
        "4",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for run in RUNS:
        torch.testing.assert_close(_R(report, run), _R(expected, run), rtol=1e-4, atol=0)
