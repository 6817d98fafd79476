"""The `masllm` command.

    masllm sequential --config recipes/configs/tiny.yaml [--key value ...]   # a whole domain sequence
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m masllm.cli sequential --config ...

`masllm sequential` is `recipes/sequential.py` (`masllm.continual.main`); `masllm sequential --help`
lists every argument (MASConfig, the methods' options, TrainingArguments).
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = {"sequential": "learn a sequence of tasks with a continual-learning method and report forgetting"}


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
    from .continual import main as sequential  # heavy imports only once a command is chosen
    from .distributed import exit_process

    if argv[1:2] in (["-h"], ["--help"]):
        from .continual import make_parser

        make_parser().print_help()
        return 0
    sequential(argv[1:])
    exit_process()
    return 0


if __name__ == "__main__":
    sys.exit(main())
