"""Leaving a multi-process run: every rank waits for the others, then the process exits without
the interpreter teardown that races with torch's gloo worker threads.

Why: with torch 2.13, a DDP wrapper keeps the gloo process group alive after
`destroy_process_group()` (its worker threads survive). A worker that drops the last reference to a
finished collective decrefs the tensors' Python objects, which needs the GIL; if that happens while
the interpreter finalises, the thread is unwound inside a noexcept destructor and the rank aborts
with "terminate called without an active exception" (SIGABRT) after all its work is done. We saw it
in about 1 of 10 two-rank CPU launches (core dump: `ProcessGroupGloo::runLoop` -> `~AsyncWork` ->
`decref_pyobject` -> `take_gil` -> `pthread_exit`). So: run the `atexit` handlers while the
interpreter is whole (loggers, trackers), flush, and `os._exit`, skipping only the finalisation.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

import torch.distributed as dist


def exit_process(code: int = 0) -> None:
    """End a script: on one process, return (normal exit); in a process group, barrier, close the
    group and exit with `code` once the atexit handlers have run. Call it last in `__main__`."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()  # nobody leaves while another rank still writes
    dist.destroy_process_group()
    atexit._run_exitfuncs()  # noqa: SLF001 - the handlers of a normal exit, before os._exit skips them
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
