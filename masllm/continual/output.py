"""What a recipe run prints: one line per method / task phase, the progress bars of the long phases.

- masllm's own lines go through the `masllm` logger (`masllm: [mas] task 2/3 'code': train`), one per
  phase of each task (train, importance, evaluate, save), on the main process;
- progress bars: training (the Trainer's bar, with its loss lines) and importance; none for the
  short phases: evaluation (`TrainingProgress` replaces the Trainer's `ProgressCallback`), saving and
  loading weights (transformers' "Writing model shards", "Loading weights"), and `datasets`' bars
  (reading local files, "Saving the dataset");
- third-party noise is dropped at its own logger, by message (`QUIET`, `QUIET_WARNINGS`), so that
  every other warning and every error still shows: transformers' "`loss_type=None` was set in the
  config but it is unrecognized" (None is the default, and the default loss is the right one),
  DeepSpeed's "Setting accelerator to CPU" (its launcher process still says it once), and the
  FutureWarnings torch raises each time DeepSpeed calls a renamed collective
  ("`torch.distributed.all_gather_into_tensor` is deprecated", hundreds under ZeRO-3).

`--log_level info` or `debug` (a TrainingArguments field) shows everything: no filter, every bar.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from transformers.trainer_callback import ProgressCallback

QUIET = {  # logger name -> starts of the messages dropped there
    "transformers.modeling_utils": ("`loss_type=None` was set in the config but it is unrecognized",),
    "DeepSpeed": ("Setting accelerator to CPU",),
}
QUIET_WARNINGS = ((FutureWarning, r"`torch\.distributed\.\w+` is deprecated"),)  # (category, message regex)
VERBOSE_LEVELS = ("info", "debug", "detail")


class DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


class TrainingProgress(ProgressCallback):
    """The Trainer's progress bar and loss lines for training only: no bar for the (short) evaluations,
    and neither their metrics nor the end-of-training summary printed as dicts (the report has them)."""

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        return None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            super().on_log(args, state, control, logs=logs, **kwargs)


def verbose(training_args: Any) -> bool:
    return str(getattr(training_args, "log_level", "passive")) in VERBOSE_LEVELS


class StderrHandler(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is when a line is emitted (not the stream of the time
    it was made: a test harness or a notebook swaps it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_output(training_args: Any) -> None:
    """The `masllm` logger on the main process, and the filters above unless `--log_level` asks for all."""
    import datasets
    import transformers

    log = logging.getLogger("masllm")
    if not any(isinstance(h, StderrHandler) for h in log.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("masllm: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    quiet = not verbose(training_args)
    for name, prefixes in QUIET.items():
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, DropMessages)]:
            logger.removeFilter(f)
        if quiet:
            logger.addFilter(DropMessages(prefixes))
    if not quiet:
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
        return
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    for category, message in QUIET_WARNINGS:  # process-wide: a later verbose run in the process keeps them
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_progress(trainer: Any, training_args: Any) -> None:
    """Swap the Trainer's progress callback for `TrainingProgress` (nothing when it shows no bars)."""
    if verbose(training_args) or trainer.pop_callback(ProgressCallback) is None:
        return
    trainer.add_callback(TrainingProgress)
