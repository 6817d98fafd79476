"""A checkpoint is written as a whole or not at all (masllm.omega.commit).

The kill -9 test: a real child process saves a 4M-float Omega (+ theta*, 32 MB a save) in a loop,
alternating the single-file and the sharded layout, and is killed with SIGKILL at a random moment.
What is on disk then either loads as exactly one save (every tensor, theta* and the json of the same
save: old or new), or is refused as incomplete, never a mix; and the next save leaves no stray file.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from masllm import MASConfig, Omega
from masllm.omega import commit
from masllm.omega.io import CONFIG_NAME

SHAPES = {f"layer{i}.weight": (1000, 1000) for i in range(4)}
EXPECTED = {  # the files of each layout after a complete save
    "single": ["mas_anchors.safetensors", "mas_config.json", "mas_omega.safetensors"],
    "sharded": sorted(
        [CONFIG_NAME]
        + [f"mas_{s}-0000{i}-of-00004.safetensors" for s in ("anchors", "omega") for i in range(1, 5)]
        + [f"mas_{s}.safetensors.index.json" for s in ("anchors", "omega")]
    ),
}


def version(v: int) -> Omega:
    """Save number v: importance v, theta* -v, its number in the json (task name and merge state)."""
    importance = {n: torch.full(s, float(v)) for n, s in SHAPES.items()}
    anchors = {n: torch.full(s, -float(v)) for n, s in SHAPES.items()}
    return Omega(importance, anchors, config=MASConfig(), tasks=[{"name": f"v{v}"}], merge_state={"v": v})


def save(directory: Path, v: int) -> str:
    layout = "sharded" if v % 2 else "single"
    version(v).save_pretrained(directory, max_shard_size=5_000_000 if layout == "sharded" else "5GB")
    return layout


def save_forever(directory: str, first: int) -> None:
    for v in range(first, first + 10_000):
        save(Path(directory), v)
    os._exit(0)


def loaded_version(directory: Path) -> int | str:
    """The save number of what loads (asserting it is one save throughout), or why nothing loads."""
    try:
        omega = Omega.from_pretrained(directory)
    except ValueError as e:
        assert "incomplete" in str(e), e
        return "refused as incomplete"
    except FileNotFoundError as e:  # killed before the first save into the directory was committed
        assert "not an Omega checkpoint" in str(e), e
        return "no save yet"
    v = omega.merge_state["v"]
    assert omega.tasks == [{"name": f"v{v}"}]
    for n in SHAPES:
        assert torch.equal(omega[n], torch.full(SHAPES[n], float(v))), (n, v)
        assert torch.equal(omega.anchors[n], torch.full(SHAPES[n], -float(v))), (n, v)
    return v


def kill_during_saves(directory: Path, kills: int, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    fork = multiprocessing.get_context("fork")
    outcome = {"old or new": 0, "refused as incomplete": 0, "no save yet": 0, "temporaries left": 0}
    for trial in range(kills):
        child = fork.Process(target=save_forever, args=(str(directory), 1000 * (trial + 1)))
        child.start()
        time.sleep(rng.uniform(0.05, 0.5))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        outcome["temporaries left"] += any(p.name.startswith(".") for p in directory.iterdir())
        v = loaded_version(directory)
        outcome["old or new" if isinstance(v, int) else v] += 1
        layout = save(directory, 7 + trial)  # the next save: complete, and nothing stray left
        assert sorted(p.name for p in directory.iterdir()) == EXPECTED[layout]
        assert loaded_version(directory) == 7 + trial
    return outcome


def test_kill_9_during_saves_leaves_old_or_new(tmp_path):
    outcome = kill_during_saves(tmp_path, kills=10)
    print(outcome)
    assert outcome["old or new"] + outcome["refused as incomplete"] + outcome["no save yet"] == 10


@pytest.mark.slow
def test_kill_9_fifty_times(tmp_path):
    outcome = kill_during_saves(tmp_path, kills=50, seed=1)
    print(outcome)
    assert outcome["old or new"] + outcome["refused as incomplete"] + outcome["no save yet"] == 50


def test_files_of_two_saves_are_refused(tmp_path):
    """A mix (each file whole, from two saves) is refused, naming the file and the cause."""
    save(tmp_path / "a", 2)
    save(tmp_path / "b", 4)
    shutil.copy(tmp_path / "b" / "mas_anchors.safetensors", tmp_path / "a" / "mas_anchors.safetensors")
    with pytest.raises(ValueError, match="mas_anchors.safetensors belongs to another save.*incomplete"):
        Omega.from_pretrained(tmp_path / "a")
    (tmp_path / "b" / "mas_omega.safetensors").unlink()
    with pytest.raises(ValueError, match="mas_omega.safetensors is missing"):
        Omega.from_pretrained(tmp_path / "b")


def test_a_failing_save_keeps_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    save(tmp_path, 2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = []

    def fail_on_second(tensors, path, save_id=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(tensors, path, save_id)

    from masllm.omega import checkpoint

    real = checkpoint.write_safetensors
    monkeypatch.setattr(checkpoint, "write_safetensors", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 3)  # sharded: fails on its second shard
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert loaded_version(tmp_path) == 2


def test_next_save_removes_what_a_killed_one_left(tmp_path):
    save(tmp_path, 2)
    (tmp_path / ".mas-leftover.tmp").write_bytes(b"x" * 100)  # as a killed save leaves them
    (tmp_path / ".mas-0123.tmp").mkdir()  # a staging folder, with safetensors' own temporary inside
    (tmp_path / ".mas-0123.tmp" / ".tmpAbC").write_bytes(b"x" * 100)
    (tmp_path / "mas_omega-00001-of-00009.safetensors").write_bytes(b"stale")
    assert loaded_version(tmp_path) == 2  # the save's own list is read, not whatever is on disk
    save(tmp_path, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == EXPECTED["single"]


def test_files_are_created_with_the_usual_mode(tmp_path):
    save(tmp_path, 1)
    umask = os.umask(0)
    os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {oct(0o666 & ~umask)}
    assert commit.own_files(tmp_path)
