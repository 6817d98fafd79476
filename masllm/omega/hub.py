"""Omega on the Hugging Face Hub: its files live beside the model's in a model repository (like a
PEFT adapter), only they are downloaded when Omega is loaded by repo id, and the model card gets a
section that says which tasks they protect and how.

`Omega.from_pretrained("user/repo")` and `Omega.push_to_hub("user/repo")` go through here;
`MASTrainer.push_to_hub` uploads them with the model (its `_save` writes them into output_dir) and
its model card carries the section below.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id
from torch import nn

from .io import ANCHORS_NAME, CONFIG_NAME, OMEGA_NAME

Omega = Any  # masllm.omega.Omega (this module is below it: it only calls save_pretrained / reads fields)

OMEGA_FILES = [CONFIG_NAME, f"{OMEGA_NAME}*", f"{ANCHORS_NAME}*"]  # shards and their index too
TAGS = ["masllm", "continual-learning", "memory-aware-synapses"]
CARD_START, CARD_END = "<!-- masllm:start -->", "<!-- masllm:end -->"


def resolve(
    name_or_path: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local directory as given; otherwise a Hub model repo id, of which only the Omega files are
    fetched (the cache is used first; `HF_HUB_OFFLINE=1` or `local_files_only` never go online)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file: pass the directory that holds {CONFIG_NAME}")
    try:
        validate_repo_id(str(name_or_path))
    except HFValidationError:
        raise FileNotFoundError(
            f"No directory {str(name_or_path)!r} ({path.resolve()}), and it is not a Hub repo id"
        ) from None
    try:
        folder = snapshot_download(
            str(name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=OMEGA_FILES,
            library_name="masllm",
        )
    except Exception as e:  # offline, no such repo, no access: name both places that were tried
        raise FileNotFoundError(
            f"No directory {str(name_or_path)!r} ({path.resolve()}), and Hub repo {str(name_or_path)!r} could "
            "not be fetched: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from e
    return Path(folder)


def push_to_hub(
    omega: Omega,
    repo_id: str,
    model: nn.Module | None = None,
    commit_message: str = "Upload Omega (masllm)",
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Upload Omega's files to `repo_id` (created if missing). Pass `model` when the repository holds
    (or will hold) that model's weights and they equal theta*: the anchors file is then left out, as
    on disk. Returns the `CommitInfo` of `HfApi.upload_folder`."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        omega.save_pretrained(folder, model=model)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
        )


def card_section(omega: Omega) -> str:
    """Markdown: the method, its strength and merge rule, the tasks Omega was estimated on, the files."""
    cfg = omega.config
    rows = "\n".join(
        f"| {i} | {t.get('name', '?')} | {t.get('num_samples', '?')} |" for i, t in enumerate(omega.tasks)
    )
    return "\n".join(
        [
            CARD_START,
            "## Continual learning: parameter importance (masllm)",
            "",
            f"This repository carries the importance Omega of method `{cfg.method}` (Memory Aware Synapses,",
            "Aljundi et al., ECCV 2018, and its family) for the tasks below, so the next fine-tuning",
            f"can penalise changes to important parameters: lambda = {cfg.reg_lambda}, merge rule",
            f"`{cfg.merge}`, output `{cfg.output}`.",
            "",
            "| # | task | samples |",
            "|---|------|---------|",
            rows or "| - | (none yet) | - |",
            "",
            "```python",
            "from masllm import MASTrainer, Omega",
            'omega = Omega.from_pretrained("<this repo>", model=model)  # theta* from the weights when not stored',
            "trainer = MASTrainer(model, args, train_dataset=next_task, omega=omega)",
            "```",
            CARD_END,
        ]
    )


def update_model_card(directory: str | Path, omega: Omega) -> None:
    """Add (or replace) the masllm section and tags in `directory/README.md`, keeping the rest."""
    path = Path(directory) / "README.md"
    card = ModelCard.load(path) if path.is_file() else ModelCard("---\ntags: []\n---\n")  # a metadata block
    text = card.text
    if CARD_START in text and CARD_END in text:
        head, rest = text.split(CARD_START, 1)
        text = head + rest.split(CARD_END, 1)[1].lstrip("\n")
    card.text = text.rstrip("\n") + "\n\n" + card_section(omega) + "\n"
    card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *TAGS]))
    card.save(path)
