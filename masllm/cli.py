"""The `masllm` command.

    masllm sequential --config recipes/configs/tiny.yaml [--key value ...]   # a whole domain sequence
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m masllm.cli sequential --config ...

`masllm sequential` is `recipes/sequential.py` (`masllm.continual.command`); `masllm sequential --help`
lists every argument (MASConfig, the methods' options, TrainingArguments).

A config error is reported once, as one line (`masllm sequential: error: ...`, exit status 2), and the
YAML file is checked before torch and transformers are imported (seconds of imports): it must parse
into a mapping, every key must be an argument (`argument_names`, read from the dataclasses' source
without importing them), and every domain whose `source` is a local path must exist. The full checks
follow once the arguments are parsed, still before any data is read or any model built.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import os
import sys
from pathlib import Path

COMMANDS = {"sequential": "learn a sequence of tasks with a continual-learning method and report forgetting"}
PACKAGE = Path(__file__).resolve().parent
ARGUMENT_CLASSES = ("ModelArguments", "DataArguments", "ContinualArguments")  # masllm.continual.arguments


def _class_index(files: list[Path]) -> dict[str, ast.ClassDef]:
    index: dict[str, ast.ClassDef] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                index.setdefault(node.name, node)
    return index


def _fields(name: str, index: dict[str, ast.ClassDef]) -> set[str] | None:
    """The dataclass fields of class `name` and its bases (None when a base is not in `index`)."""
    node = index.get(name)
    if node is None:
        return None
    out = {
        t.target.id
        for t in node.body
        if isinstance(t, ast.AnnAssign)
        and isinstance(t.target, ast.Name)
        and "ClassVar" not in ast.unparse(t)
    }
    for base in node.bases:
        inherited = _fields(base.id, index) if isinstance(base, ast.Name) else None
        if inherited is None:
            return None
        out |= inherited
    return out


def argument_names() -> set[str] | None:
    """Every argument `masllm sequential` takes (the dests of its parser), from the sources of masllm's
    argument dataclasses and of transformers' TrainingArguments; None if they cannot be read so."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    training = Path(next(iter(spec.submodule_search_locations))) / "training_args.py"
    try:
        index = _class_index([*PACKAGE.rglob("*.py"), training])
    except (OSError, SyntaxError):
        return None
    names: set[str] = {"help"}
    for cls in (*ARGUMENT_CLASSES, "TrainingArguments"):
        fields = _fields(cls, index)
        if fields is None:
            return None
        names |= fields
    return names


def precheck(argv: list[str]) -> None:
    """The checks that need no heavy import (see the module docstring); raise ValueError naming the
    file, the key or the domain."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    if not known.config:
        return
    import yaml

    from .registry import looks_like_path  # imports nothing

    path = Path(known.config)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if values is None:
        return
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument: value, got {type(values).__name__}")
    names = argument_names()
    unknown = sorted(set(values) - names) if names is not None else []
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{path}: unknown keys {unknown}{hint}")
    domains = values.get("domains") if "--domains" not in rest else None
    for i, domain in enumerate(domains if isinstance(domains, list) else []):
        for key in ("source", "importance_source"):
            source = domain.get(key) if isinstance(domain, dict) else None
            if isinstance(source, str) and looks_like_path(source) and not Path(source).expanduser().exists():
                name = domain.get("name", f"#{i}")
                where = Path(source).expanduser().resolve()
                raise ValueError(f"{path}: domain {name!r}: {key} {source!r} does not exist ({where})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="masllm",
        description="Continual fine-tuning with Memory Aware Synapses (MAS) and its method family.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv[:1])
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    if argv[1:2] not in (["-h"], ["--help"]):
        try:
            precheck(argv[1:])
        except ValueError as e:
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"masllm {argv[0]}: error: {e}", file=sys.stderr, flush=True)
            return 2
    from .continual import command, make_parser  # heavy imports only once the YAML passed
    from .distributed import exit_process

    if argv[1:2] in (["-h"], ["--help"]):
        make_parser().print_help()
        return 0
    status = command(argv[1:])
    if status:
        return status
    exit_process()
    return 0


if __name__ == "__main__":
    sys.exit(main())
