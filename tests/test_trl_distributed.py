"""MASSFTTrainer under DeepSpeed ZeRO-3 on 2 CPU ranks (a real `accelerate launch`) against one process.

tests/distributed/sft.py takes one SGD step with and without the penalty for the full model with
TRL's padding-free packing and for a LoRA adapter: under ZeRO-3 the step difference is exactly
-lr * 2 lambda Omega (theta0 - theta*) too, the task's own step is the one-process step, the frozen
base does not move, and Omega from the trainer's packed batches equals one process's (N = sequences).
About 30 s once DeepSpeed's comm op is compiled.
"""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file
from test_distributed_zero import free_port, launch, launch_cmd

from masllm import Omega

pytestmark = pytest.mark.distributed
pytest.importorskip("trl")
SCRIPT = "tests/distributed/sft.py"
LAMBDA, LR, SEQUENCES = 2.5, 0.1, 32


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft_zero3")
    launch(lambda: [sys.executable, SCRIPT, "--out", str(tmp / "single")], tmp / "single.log")
    launch(
        lambda: [*launch_cmd("cpu_zero3.yaml", free_port()), SCRIPT, "--out", str(tmp / "z3")], tmp / "z3.log"
    )
    return tmp


@pytest.mark.parametrize("variant", ["full_packed", "lora"])
def test_zero3_step_difference_is_exactly_lambda(outputs, variant):
    single, z3 = (load_file(outputs / run / f"{variant}.safetensors") for run in ("single", "z3"))
    names = [k.removeprefix("before/") for k in z3 if k.startswith("before/")]
    assert names and (variant != "lora" or all("lora_" in n for n in names))
    for n in names:
        expected = -LR * 2 * LAMBDA * z3[f"omega/{n}"] * (z3[f"before/{n}"] - z3[f"anchor/{n}"])
        torch.testing.assert_close(z3[f"mas/{n}"] - z3[f"plain/{n}"], expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(z3[f"plain/{n}"], single[f"plain/{n}"], rtol=1e-4, atol=1e-6)
    assert float(z3["frozen_max_change"]) == 0.0
    after = {n: z3[f"before/{n}"] + z3[f"mas/{n}"] for n in names}
    ref = LAMBDA * sum(float((z3[f"omega/{n}"] * (after[n] - z3[f"anchor/{n}"]) ** 2).sum()) for n in names)
    assert float(z3["logged_penalty"]) == pytest.approx(ref, rel=1e-5)


def test_zero3_omega_from_packed_batches_equals_one_process(outputs):
    single = Omega.from_pretrained(outputs / "single" / "full_packed_omega")
    z3 = Omega.from_pretrained(outputs / "z3" / "full_packed_omega")
    assert single.tasks == z3.tasks == [{"name": "task", "num_samples": SEQUENCES, "method": "mas"}]
    for n in single:
        torch.testing.assert_close(z3[n], single[n], rtol=1e-5, atol=1e-7)
