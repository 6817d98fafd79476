"""recipes/sequential.py end to end on the tiny config: the loop, its checkpoints, resume, and 2 processes.

References are computed independently of the recipe: perplexity and token accuracy by a plain
loop over the eval blocks, Omega by `compute_importance` on the saved models, summed by hand
(Sec. 4.2), and the 2-process runs against the single-process report.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

import masllm.continual as recipe
from masllm import compute_importance
from masllm.omega.io import OMEGA_NAME, load_tensors
from masllm.tasks import TASK_KINDS
from masllm.tasks.text import causal_lm_collator

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "recipes" / "configs" / "tiny.yaml")


def _argv(output_dir: Path, *extra: str) -> list[str]:
    # One shared cache: the tokenizer and packed domains are built once for all tests.
    cache = ROOT / ".pytest_cache" / "masllm-recipe-data"
    return ["--config", TINY, "--output_dir", str(output_dir), "--cache_dir", str(cache), *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, recipe.main(_argv(out))


def _R(report: dict, run: str, metric: str = "perplexity") -> torch.Tensor:
    return torch.tensor(report["runs"][run]["R"][metric], dtype=torch.float64)


def _reference_metrics(model, dataset) -> dict[str, float]:
    """Mean next-token NLL -> perplexity, and token accuracy, by a plain loop."""
    nll, correct, count = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for row in dataset:
            ids = row["input_ids"].long()[None]
            logits = model(input_ids=ids).logits[:, :-1]
            target = ids[:, 1:]
            nll += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), target.flatten(), reduction="sum"
            ).item()
            correct += (logits.argmax(-1) == target).sum().item()
            count += target.numel()
    return {"perplexity": math.exp(nll / count), "accuracy": correct / count}


def test_recipe_end_to_end(uninterrupted):
    out, report = uninterrupted
    tasks = report["tasks"]
    assert tasks == ["docs", "code"] and set(report["runs"]) == {"finetune", "mas"}
    assert json.loads((out / "report.json").read_text()) == report
    assert "forgot" in (out / "report.md").read_text() or "did not forget" in (out / "report.md").read_text()
    # Task 0 has no penalty in any method: trained once, same row.
    assert torch.equal(_R(report, "finetune")[0], _R(report, "mas")[0])
    # The penalty acted: after task 1 the two methods differ.
    assert not torch.allclose(_R(report, "finetune")[1], _R(report, "mas")[1])

    args = recipe.parse_args(_argv(out))
    seq = TASK_KINDS["causal_lm"](*[args[0], args[1], args[3]])
    cfg = args[2].run_config("mas", None).mas
    expected_omega: dict[str, torch.Tensor] = {}
    for k, task in enumerate(seq.tasks):
        step = out / "mas" / f"{k}-{task.name}"
        model = AutoModelForCausalLM.from_pretrained(step)
        # Row k of R: every task evaluated by an independent loop.
        for j, other in enumerate(seq.tasks):
            ref = _reference_metrics(model, other.eval_dataset)
            for metric in ("perplexity", "accuracy"):
                assert report["runs"]["mas"]["R"][metric][k][j] == pytest.approx(ref[metric], rel=1e-4)
        # Omega after task k = sum over tasks <= k of Eq. 2 on each task's model (merge = sum).
        new = compute_importance(
            model, task.importance_dataset, cfg, collate_fn=causal_lm_collator, show_progress=False
        )
        for name, value in new.items():
            expected_omega[name] = expected_omega.get(name, 0) + value
        saved = load_tensors(step, OMEGA_NAME)
        assert set(saved) == set(expected_omega)
        for name, value in saved.items():
            torch.testing.assert_close(value, expected_omega[name], rtol=1e-4, atol=1e-10)
        card = (step / "README.md").read_text()  # Hub-ready: the card lists the tasks Omega protects
        assert all(f"| {i} | {t.name} |" in card for i, t in enumerate(seq.tasks[: k + 1]))
    # Fine-tuning keeps no Omega.
    assert not (out / "finetune" / "1-code" / "mas_omega.safetensors").exists()


class Interrupt(TrainerCallback):
    """Stop the MAS run in the middle of task 1, after its first checkpoint (save_steps = 3)."""

    def on_step_end(self, args, state, control, **kwargs):
        if "mas/1-" in args.output_dir.replace(os.sep, "/") and state.global_step == 4:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_gives_the_same_report(uninterrupted, tmp_path):
    _, expected = uninterrupted
    with pytest.raises(KeyboardInterrupt):
        recipe.main(_argv(tmp_path), callbacks=[Interrupt()])
    assert (tmp_path / "finetune" / "1-code" / recipe.ROW_FILE).is_file()
    assert not (tmp_path / "mas" / "1-code" / recipe.ROW_FILE).exists()
    assert (tmp_path / "mas" / "1-code" / "checkpoints" / "checkpoint-3").is_dir()
    resumed = recipe.main(_argv(tmp_path))
    for run in ("finetune", "mas"):
        for metric in ("perplexity", "accuracy"):
            torch.testing.assert_close(_R(resumed, run, metric), _R(expected, run, metric), rtol=1e-5, atol=0)
    # The resumed task continued from step 3 instead of starting over.
    state = json.loads((tmp_path / "mas/1-code/checkpoints/checkpoint-6/trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_model_from_a_local_path(uninterrupted, tmp_path):
    """`model_name_or_path` (and its tokenizer): with learning rate 0 every row is that model's."""
    out, expected = uninterrupted
    report = recipe.main(
        _argv(tmp_path, "--model_name_or_path", str(out / "mas" / "0-docs"), "--method", "finetune",
              "--learning_rate", "0", "--max_steps", "2", "--plots", "false")
    )  # fmt: skip
    R = _R(report, "finetune")
    torch.testing.assert_close(R, _R(expected, "mas")[0].expand_as(R), rtol=1e-5, atol=0)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="Unknown method"):
        recipe.parse_args(_argv(tmp_path, "--compare", "finetune,nope"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("not_an_argument: 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        recipe.parse_args(["--config", str(bad)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
        "--main_process_port", str(_free_port()), "recipes/sequential.py", *_argv(out, *extra),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.distributed
@pytest.mark.parametrize(
    "config",
    [
        "accelerate_configs/cpu_ddp.yaml",
        "accelerate_configs/cpu_zero3.yaml",
        "accelerate_configs/cpu_fsdp2.yaml",
    ],
)
def test_two_processes_match_one(uninterrupted, tmp_path, config):
    """2 ranks x 4 samples = the single process's batch of 8: the same report (DDP, ZeRO-3, FSDP2)."""
    _, expected = uninterrupted
    result = _launch(config, tmp_path, "--per_device_train_batch_size", "4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for run in ("finetune", "mas"):
        torch.testing.assert_close(_R(report, run), _R(expected, run), rtol=1e-4, atol=0)
    if "fsdp2" in config:  # FSDP2 really sharded (accelerate alone would have run DDP on CPU ranks)
        assert "masllm enabled its FSDP2 path" in result.stdout + result.stderr
