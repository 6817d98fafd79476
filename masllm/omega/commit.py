"""All or nothing: one save of Omega's files (`mas_omega*`, `mas_anchors*`, `mas_config.json`).

Omega's files sit beside the model's own, in a directory the Trainer (or the user) owns, so the
directory cannot be swapped in with one rename. A save therefore goes:

1. every file is written into a staging folder beside them (`.mas-<save id>.tmp/`) and flushed to
   disk: the slow part (a library's own temporaries, e.g. safetensors', stay inside it too);
2. `mas_config.json` is staged too: it lists every file of the save with its size, and the save's
   id, which every safetensors header and index of the save also carries;
3. the staged files are renamed into place, one after the other, `mas_config.json` last: that
   rename is the commit (between the first rename and it there are only renames);
4. files of an earlier save that the new one does not list (the other shard layout; anchors now
   taken from the model) are deleted.

A reader (`check_files`) compares each listed file's size and id with `mas_config.json` before using
it, so what loads is the old save or the new one, never a mix: a kill during 1 or 2 leaves the old
checkpoint as it was; a kill in the microseconds of 3 leaves files that fail the check, with an error
that says the save was interrupted. The staging folder is removed on any exception, and one a killed
process left behind is removed by the next save into the directory.

Why an id and sizes rather than checksums: each file is renamed complete, so a mix of saves is what
can go wrong, and an id tells saves apart by reading a header, not every byte (under ZeRO each rank
reads only the rows of its slice).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from safetensors import safe_open

from .io import (
    ANCHORS_NAME,
    CONFIG_NAME,
    OMEGA_NAME,
    SAVE_ID,
    TMP_PREFIX,
    TMP_SUFFIX,
    sync_file,
    write_meta_text,
)

OWN_STEMS = (OMEGA_NAME, ANCHORS_NAME)


class CheckpointWriter:
    """Stage Omega's files in a folder beside them, then `commit` them with `mas_config.json` last.

    Use as a context manager: on any exception the staging folder is deleted and the directory keeps
    its earlier checkpoint."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.save_id = uuid.uuid4().hex
        self.staging = self.directory / f"{TMP_PREFIX}{self.save_id}{TMP_SUFFIX}"
        self.staged: list[str] = []

    def __enter__(self) -> CheckpointWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.directory)
        self.staging.mkdir()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def temporary(self, name: str) -> Path:
        """Where to write the file that will be `name` once committed."""
        if name in self.staged:
            raise ValueError(f"{name} staged twice in one save")
        self.staged.append(name)
        return self.staging / name

    def stage_text(self, name: str, text: str) -> None:
        path = self.temporary(name)
        path.write_text(text)
        sync_file(path)

    def commit(self, config: dict, tasks: list, merge_state: dict, anchors: str) -> None:
        """Stage `mas_config.json` too, rename the data files into place and it last (the commit: only
        renames in between, so the window where a kill leaves a refused checkpoint is microseconds),
        then delete what an earlier save left that this one does not list."""
        files = {name: (self.staging / name).stat().st_size for name in self.staged}
        self.stage_text(
            CONFIG_NAME, write_meta_text(config, tasks, merge_state, anchors, self.save_id, files)
        )
        for name in self.staged:  # CONFIG_NAME is the last one staged
            os.replace(self.staging / name, self.directory / name)
        _sync_directory(self.directory)
        for path in own_files(self.directory):
            if path.name not in files:
                path.unlink()


def own_files(directory: Path) -> list[Path]:
    """The Omega data files in `directory` (single files, shards, indexes), whichever save wrote them."""
    return sorted(p for stem in OWN_STEMS for p in directory.glob(f"{stem}*.safetensors*") if p.is_file())


def remove_temporaries(directory: Path) -> None:
    """Delete what an interrupted save left (a killed process cannot clean up after itself)."""
    for path in directory.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def save_id_of(path: Path) -> str | None:
    """The id of the save that wrote a safetensors file or an index (None: written before ids)."""
    if path.name.endswith(".json"):
        content = json.loads(path.read_text())
        return (content.get("metadata") or {}).get(SAVE_ID) if isinstance(content, dict) else None
    with safe_open(path, "pt") as f:
        return (f.metadata() or {}).get(SAVE_ID)


def check_files(directory: Path, meta: dict[str, Any]) -> list[str] | None:
    """The file names of the save `mas_config.json` describes, each checked (present, its size, the
    save's id); None for a checkpoint written before saves listed their files."""
    directory = Path(directory)
    files, save_id = meta.get("files"), meta.get("save_id")
    if files is None:  # an older checkpoint: only make sure no newer, interrupted save overwrote part of it
        stamped = [p.name for p in own_files(directory) if _id_or_none(p)]
        if stamped:
            raise ValueError(
                _interrupted(directory, stamped[0], f"was written by a later save than {CONFIG_NAME}")
            )
        return None
    for name, size in files.items():
        path = directory / name
        if not path.is_file():
            raise ValueError(_interrupted(directory, name, f"is missing ({CONFIG_NAME} lists it)"))
        if path.stat().st_size != size:
            what = f"has {path.stat().st_size} bytes, {CONFIG_NAME} lists {size}"
            raise ValueError(_interrupted(directory, name, what))
        try:
            found = save_id_of(path)
        except Exception as e:
            raise ValueError(
                f"{path} is not a readable {'index' if name.endswith('.json') else 'safetensors file'} ({e})"
            ) from None
        if found != save_id:
            raise ValueError(_interrupted(directory, name, f"belongs to another save than {CONFIG_NAME}"))
    return list(files)


def _id_or_none(path: Path) -> str | None:
    try:
        return save_id_of(path)
    except Exception:  # unreadable: reported by the reader, with the file's name
        return None


def _interrupted(directory: Path, name: str, what: str) -> str:
    return (
        f"{directory}: {name} {what}: this Omega checkpoint is incomplete "
        "(a save was interrupted, or files were copied from different saves); save it again"
    )


def _sync_directory(directory: Path) -> None:
    """Make the renames durable (where the platform allows opening a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
