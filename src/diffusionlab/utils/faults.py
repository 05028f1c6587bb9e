"""Crash injection for the fault tests: ``DIFFUSIONLAB_FAULT_AT=<event>:<step>`` makes the process SIGKILL
itself the first time it reaches ``<event>`` at global step ``<step>``.

Events, each called by the code that does the work:

- ``train_step``: a training batch is about to run (``step`` = optimizer steps done so far);
- ``validation``: a validation batch is about to run;
- ``checkpoint_save``: a checkpoint is fully written to its temporary file, not yet renamed onto its name;
- ``sample_grid``: a sample grid is drawn and written to its temporary file, not yet renamed.

Unset (every real run), :func:`fault_point` is one comparison with ``None``.
"""

from __future__ import annotations

import os
import signal
import sys

FAULT_ENV = "DIFFUSIONLAB_FAULT_AT"
FAULT_EVENTS = ("train_step", "validation", "checkpoint_save", "sample_grid")


def parse_fault(value: str | None) -> tuple[str, int] | None:
    """``"<event>:<step>"`` -> ``(event, step)``; empty -> None; anything else -> ValueError naming the format."""
    if not value:
        return None
    event, _, step = value.partition(":")
    if event not in FAULT_EVENTS or not step.isdigit():
        raise ValueError(
            f"{FAULT_ENV}={value!r}: expected <event>:<global step>, event one of {', '.join(FAULT_EVENTS)}"
        )
    return event, int(step)


_TARGET = parse_fault(os.environ.get(FAULT_ENV))


def fault_point(event: str, step: int) -> None:
    """SIGKILL this process if ``(event, step)`` is the moment named by ``DIFFUSIONLAB_FAULT_AT``."""
    if _TARGET is None or (event, int(step)) != _TARGET:
        return
    print(f"fault injection: SIGKILL at {event}:{step}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
