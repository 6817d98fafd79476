"""EWC (empirical and sampled Fisher), SPP and MAS vector output under DeepSpeed ZeRO-3, FSDP2 and DDP on
2 CPU ranks equal one process: their per-sample sums go through `ctx.backward` / `ctx.read_grads`, so
the sharding backend slices them like MAS's Omega (the methods the backend table lets run under
FSDP2). Launches tests/distributed/methods_importance.py four times (one process, ZeRO-3, FSDP2 and
DDP with 2 ranks each; ~90 s once DeepSpeed's comm op is compiled)."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file
from test_distributed_zero import free_port, launch, launch_cmd

pytestmark = pytest.mark.distributed
SCRIPT = "tests/distributed/methods_importance.py"
METHODS = ("ewc", "ewc_sampled", "spp", "mas_hidden", "mas_vector", "l2")
OMEGA = "mas_omega.safetensors"
UNREACHED = "lm_head.weight"  # no gradient reaches it when F is the hidden states


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("methods_zero")
    launch(lambda: [sys.executable, SCRIPT, "--out", str(tmp / "single")], tmp / "single.log")
    for mode, config in (("z3", "cpu_zero3.yaml"), ("fsdp2", "cpu_fsdp2.yaml"), ("ddp", "cpu_ddp.yaml")):
        launch(
            lambda c=config, m=mode: [*launch_cmd(c, free_port()), SCRIPT, "--out", str(tmp / m)],
            tmp / f"{mode}.log",
        )
    return {
        (m, mode): (load_file(tmp / "single" / m / OMEGA), load_file(tmp / mode / m / OMEGA))
        for m in METHODS
        for mode in ("z3", "fsdp2", "ddp")
    }


@pytest.mark.parametrize("mode", ["z3", "fsdp2", "ddp"])
@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_equal_one_process(outputs, method, mode):
    single, multi = outputs[method, mode]
    assert set(single) == set(multi)
    for n in single:
        torch.testing.assert_close(multi[n], single[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("mode", ["z3", "fsdp2"])
@pytest.mark.parametrize("method", ["mas_hidden", "mas_vector"])
def test_sharded_unreached_parameter_has_zero_importance(outputs, method, mode):
    single, zero = outputs[method, mode]
    assert float(single[UNREACHED].abs().sum()) == 0.0
    torch.testing.assert_close(zero[UNREACHED], single[UNREACHED])
