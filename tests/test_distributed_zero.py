"""MAS under DDP, DeepSpeed ZeRO-2/3 and FSDP2 with real processes (2 CPU ranks over gloo), against one process.

Each configuration launches `tests/distributed/two_tasks.py` once (task A, Omega_A, task B under the
penalty with clipping on, Omega_B merged) and the results are compared with the single-process run:
the same Omega and the same final weights up to float32 rounding. The ZeRO and FSDP2 launches also
resume task B from a mid-task checkpoint and reload checkpoints saved elsewhere (ZeRO: at world size
1; FSDP2: by ZeRO-3 and at world size 1); the two-"node" launch runs two `accelerate launch`
commands (machine_rank 0 and 1) against 127.0.0.1.

DeepSpeed JIT-compiles a shared-memory comm op on first use (~70-110 s on 2 cores, cached under
TORCH_EXTENSIONS_DIR); after that the whole module takes about 3 minutes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from reference import without_save_id
from safetensors.torch import load_file

from masllm import Omega

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "tests/distributed/two_tasks.py"
SHARDS_SCRIPT = "tests/distributed/fsdp_shards.py"
CONFIGS = {
    "ddp": "cpu_ddp.yaml",
    "zero2": "cpu_zero2.yaml",
    "zero3": "cpu_zero3.yaml",
    "fsdp2": "cpu_fsdp2.yaml",
}
TIMEOUT = 600

pytestmark = pytest.mark.distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def launch_cmd(config: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", f"accelerate_configs/{config}",
        "--main_process_port", str(port), *extra,
    ]  # fmt: skip


def check(proc: subprocess.CompletedProcess | subprocess.Popen, log: Path) -> None:
    if proc.returncode != 0:
        raise AssertionError(
            f"launch failed (rc {proc.returncode}); last lines of {log}:\n" + log.read_text()[-4000:]
        )


def run_logged(cmd: list[str], log: Path) -> subprocess.CompletedProcess:
    with log.open("w") as f:
        return subprocess.run(cmd, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT)


def launch(make_cmd: Callable[[], list[str]], log: Path) -> None:
    """Run a launch to completion, once more with a new port if another launch took the free one."""
    proc = run_logged(make_cmd(), log)
    if proc.returncode != 0 and "address already in use" in log.read_text().lower():
        log.rename(log.with_suffix(".port_clash.log"))
        proc = run_logged(make_cmd(), log)
    check(proc, log)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """out directory per configuration, each launched once on first use."""
    base = tmp_path_factory.mktemp("mas_dist")
    done: dict[str, Path] = {}

    def command(mode: str, out: Path) -> list[str]:
        kind, _, variant = mode.partition("_")
        extra = ["--lora", "--bf16-storage"] if variant == "lora" else []
        if mode in ("zero2", "zero3"):
            extra = ["--resume-check", "--load-check", str(get("single") / "omega")]
        if mode == "fsdp2":  # a DeepSpeed-saved Omega and a single process's, loaded under FSDP2
            extra = [
                "--resume-check",
                "--load-check",
                str(get("zero3") / "omega"),
                str(get("single") / "omega"),
            ]
        if kind == "single":
            return [sys.executable, SCRIPT, "--out", str(out), *extra]
        return [*launch_cmd(CONFIGS[kind], free_port()), SCRIPT, "--out", str(out), *extra]

    def get(mode: str) -> Path:
        if mode not in done:
            out = base / mode
            launch(lambda: command(mode, out), base / f"{mode}.log")
            done[mode] = out
        return done[mode]

    return get


def rel_err(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    assert set(got) == set(want)
    num = max(float((got[k] - want[k]).abs().max()) for k in want)
    return num / max(float(want[k].abs().max()) for k in want)


def assert_same_run(out: Path, ref: Path, strong_penalty: bool = True, state_tol: float = 1e-5) -> None:
    """Same weights, Omega, theta*, losses and penalty values; `state_tol` allows for bf16 storage."""
    assert rel_err(load_file(out / "weights.safetensors"), load_file(ref / "weights.safetensors")) < 1e-5
    for name in ("mas_omega", "mas_anchors"):
        got, want = load_file(out / f"omega/{name}.safetensors"), load_file(ref / f"omega/{name}.safetensors")
        assert rel_err(got, want) < state_tol
    got, want = json.loads((out / "losses.json").read_text()), json.loads((ref / "losses.json").read_text())
    for task in "ab":
        assert len(got[task]) == len(want[task]) == 4
        for g, w in zip(got[task], want[task]):
            assert g["loss"] == pytest.approx(w["loss"], rel=1e-5)
            assert g.get("mas_penalty", 0.0) == pytest.approx(w.get("mas_penalty", 0.0), rel=1e-4, abs=1e-7)
    assert max(h["mas_penalty"] for h in want["b"]) > 0
    if strong_penalty:
        assert max(h["mas_penalty"] for h in want["b"]) > 0.05  # the penalty really pulled during task B
        assert max(h["grad_norm"] for h in want["b"]) > 0.5  # and clipping (max_grad_norm 0.5) was active


@pytest.mark.parametrize("mode", ["ddp", "zero2", "zero3", "fsdp2"])
def test_two_tasks_match_single_process(runs, mode: str) -> None:
    assert_same_run(runs(mode), runs("single"))


@pytest.mark.parametrize("mode", ["zero2", "zero3", "fsdp2"])
def test_each_rank_holds_its_slice_only(runs, mode: str) -> None:
    """Measured: a rank's Omega and theta* hold P/N elements (8 P / N bytes in fp32), and the slices tile P.
    Under FSDP2 they are DTensors (their local shards counted)."""
    out = runs(mode)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    P = ranks[0]["model_numel"]  # tied embedding counted once
    assert sum(r["omega_numel"] for r in ranks) == P
    for r in ranks:
        assert r["sharded"] and r["world_size"] == 2 and r["dtensor"] == (mode == "fsdp2")
        assert r["omega_numel"] == r["anchors_numel"] == P // 2  # every tensor of this model splits evenly
        assert r["omega_bytes"] + r["anchors_bytes"] == 8 * P // 2


def test_fsdp2_saves_the_files_one_process_writes(runs) -> None:
    """The consolidated save of a DTensor Omega (rank 0 writes one gathered tensor at a time) is byte
    for byte what `save_pretrained` writes for the same Omega gathered into full tensors (but for the
    id each save stamps its files with)."""
    out = runs("fsdp2")
    for saved in ("omega_a", "omega"):
        for name in ("mas_omega.safetensors", "mas_anchors.safetensors", "mas_config.json"):
            assert without_save_id(out / saved / name) == without_save_id(out / f"{saved}_plain" / name), name


@pytest.mark.parametrize("mode", ["zero3", "fsdp2"])
def test_lora_frozen_base_bf16_storage(runs, mode: str) -> None:
    """Only the adapters have fp32 master slices (ZeRO-3) or train (FSDP2): Omega, theta* and the
    penalty cover them alone. With storage_dtype='bfloat16' a rank holds 4 bytes per element of its
    slice (4 P / N)."""
    out = runs(f"{mode}_lora")
    assert_same_run(out, runs("single_lora"), strong_penalty=False, state_tol=1e-2)  # bf16: 2^-8
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all("lora_" in n for n in ranks[0]["omega_names"])
    assert sum(r["omega_numel"] for r in ranks) == ranks[0]["trainable_numel"] < ranks[0]["model_numel"]
    for r in ranks:
        assert r["omega_bytes"] + r["anchors_bytes"] == 4 * r["omega_numel"]
    for name in ("mas_omega", "mas_anchors"):  # and the save after training with the penalty bound
        assert {t.dtype for t in load_file(out / f"omega/{name}.safetensors").values()} == {torch.bfloat16}


def test_ddp_replicates(runs) -> None:
    r = json.loads((runs("ddp") / "rank1.json").read_text())
    assert not r["sharded"] and r["omega_numel"] == r["model_numel"]


@pytest.mark.parametrize("mode", ["zero2", "zero3", "fsdp2"])
def test_saved_at_two_ranks_loads_at_one_and_back(runs, mode: str) -> None:
    """World size 2 -> 1: the consolidated file is exactly the ranks' slices put together.
    World size 1 -> 2: each rank's slices read from the single-process file equal that file's tensors;
    under FSDP2 also from the file ZeRO-3 saved (the same format, whoever wrote it)."""
    out = runs(mode)
    omega = Omega.from_pretrained(out / "omega")
    full = {n: torch.zeros(t.numel()) for n, t in omega.importance.items()}
    anchors = {n: torch.zeros(t.numel()) for n, t in omega.anchors.items()}
    for r in range(2):
        raw = load_file(out / f"rank{r}.safetensors")
        for n in full:
            start = int(raw[f"start/{n}"])
            full[n][start : start + raw[f"omega/{n}"].numel()] = raw[f"omega/{n}"]
            anchors[n][start : start + raw[f"anchor/{n}"].numel()] = raw[f"anchor/{n}"]
    for n in full:
        assert torch.equal(omega[n].reshape(-1), full[n])
        assert torch.equal(omega.anchors[n].reshape(-1), anchors[n])
    assert [(t["name"], t["num_samples"]) for t in omega.tasks] == [("a", 16), ("b", 13)]  # N over ranks
    for r in range(2):
        reports = json.loads((out / f"load{r}.json").read_text())
        assert set(reports) == ({"zero3", "single"} if mode == "fsdp2" else {"single"})
        for report in reports.values():
            assert report["max_abs_err"] == report["own_roundtrip_err"] == report["trainer_err"] == 0.0
            assert report["trainer_sharded"] and report["trainer_penalty"] > 0  # MASTrainer(omega=dir)
            assert report["trainer_dtensor"] == (mode == "fsdp2")


@pytest.mark.parametrize("mode", ["zero2", "zero3", "fsdp2"])
def test_resume_mid_task_matches_uninterrupted(runs, mode: str) -> None:
    out = runs(mode)
    report = json.loads((out / "resume.json").read_text())
    assert report["weights_max_abs_err"] < 1e-6
    resumed = [h for h in report["losses"] if h["step"] > 2]
    uninterrupted = [h for h in report["uninterrupted"] if h["step"] > 2]
    assert [h["step"] for h in resumed] == [3, 4]
    for g, w in zip(resumed, uninterrupted):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-6)
        assert g["mas_penalty"] == pytest.approx(w["mas_penalty"], rel=1e-5)  # Omega and theta* came back
    for name in ("mas_omega", "mas_anchors"):  # restored from the checkpoint into a fresh, empty Omega
        a = load_file(out / f"omega_a/{name}.safetensors")
        b = load_file(out / f"omega_resumed/{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a) and set(a) == set(b)


def test_fsdp2_uneven_rows_without_accelerate(tmp_path: Path) -> None:
    """torch `fully_shard` alone on an MLP whose rows split 3 + 2, 2 + 1 and 1 + 0 (rank 1 holds none of
    the last layer): Omega (exact per-sample, 3 + 4 samples in lockstep), the penalty's gradient and
    value on DTensor shards, the consolidated save and the slice-wise load, against one process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    script = [SHARDS_SCRIPT, "--out", str(tmp_path)]
    launch(lambda: [*cmd, str(free_port()), *script], tmp_path / "fsdp_shards.log")
    shapes = {"0.weight": (5, 6), "0.bias": (5,), "2.weight": (3, 5), "2.bias": (3,), "3.weight": (3,)}
    shapes |= {"3.bias": (3,), "4.weight": (1, 3), "4.bias": (1,)}
    for r in range(2):
        report = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert report["dtensor"] and report["load_dtensor"]
        for n, shape in shapes.items():  # torch.chunk's split of the rows, rank 1 may get none
            rows = [len(c) for c in torch.arange(shape[0]).chunk(2)] + [0]
            assert report["held"][n] == rows[r] * torch.Size(shape[1:]).numel(), n
        assert report["omega_rel_err"] < 1e-5 and report["penalty_grad_rel_err"] < 1e-5
        assert report["penalty_value"] == pytest.approx(report["penalty_value_reference"], rel=1e-5)
        assert report["load_err"] == 0.0 and report["tasks"][0]["num_samples"] == 7
    for name in ("mas_omega.safetensors", "mas_anchors.safetensors", "mas_config.json"):
        assert without_save_id(tmp_path / "consolidated" / name) == without_save_id(tmp_path / "plain" / name)


@pytest.mark.parametrize("config", ["multi_node.yaml", "fsdp2_multi_node.yaml"])
def test_two_node_launch_on_localhost(runs, tmp_path: Path, config: str) -> None:
    """num_machines 2, two launchers (machine_rank 0 and 1), ZeRO-3 from multi_node.yaml, FSDP2 from
    fsdp2_multi_node.yaml (mixed precision off on CPU: the reference is fp32)."""
    out, port = tmp_path / "two_node", free_port()
    procs = []
    for rank in (0, 1):
        extra = ["--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank)]
        extra += ["--main_process_ip", "127.0.0.1", "--mixed_precision", "no"]
        cmd = [*launch_cmd(config, port, *extra), SCRIPT, "--out", str(out)]
        log = tmp_path / f"node{rank}.log"
        procs.append(
            (subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log.open("w"), stderr=subprocess.STDOUT), log)
        )
    for proc, log in procs:
        proc.wait(timeout=TIMEOUT)
        check(proc, log)
    assert_same_run(out, runs("single"))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["sharded"] and r["dtensor"] == ("fsdp2" in config) for r in ranks)


def test_exit_process_returns_without_a_process_group():
    """One process: `exit_process` is a no-op, so scripts and in-process callers end normally."""
    from masllm.distributed import exit_process

    assert exit_process() is None
