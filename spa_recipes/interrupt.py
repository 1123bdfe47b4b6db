"""Stopping a run gracefully on SIGTERM (Slurm pre-emption and time limits) or SIGINT (Ctrl-C).

While :func:`spa_recipes.runner.run.execute` runs its stages, :func:`stop_on_signals` holds handlers for both
signals. The first signal only sets a flag and says so; the work stops at its next boundary, where everything
before it is saved:

- training (:mod:`spa_recipes.training.loop`) after the optimiser step in progress, with a checkpoint written at
  that step; in a multi-process run the processes agree on the flag there (:func:`stop_agreed`), so all stop
  at the same step;
- generation and judging (:mod:`spa_recipes.generation.shards`) after the shard in progress, each process at its
  own shard;
- any other stage (split, pairs, report: short) finishes, and the run stops before the next stage.

There :class:`Interrupted` is raised; the runner leaves the stage unfinished (the same command resumes it), says
where it stopped, and the CLI exits 75 (EX_TEMPFAIL, "try again later"). A second signal stops the process at
once (exit ``128 + signal``), as SIGKILL would: the last checkpoint or shard still resumes. The same stop often
arrives twice within milliseconds (Slurm signals every process of a step, and the launcher forwards its own copy
to its workers), so a repeat within :data:`REPEAT_WINDOW_S` of the first counts as the same request.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

from spa_recipes.distributed import default_device, is_main_process, world_size

EXIT_CODE = 75  # EX_TEMPFAIL from sysexits.h: retry later (what a requeued Slurm job does)
SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 1.0


class Interrupted(BaseException):  # noqa: N818 - named for what happened, like KeyboardInterrupt
    """A run stopped on request at a step or shard boundary, everything before it saved.

    A ``BaseException``, like ``KeyboardInterrupt``: the ``except Exception`` of a component that cleans up or
    reports an error must let it pass.

    Attributes:
        where: where the stage stopped, e.g. ``"at step 14 of 32"``.
        signal_name: the signal this process received (``SIGTERM``), or a phrase when only another one did.
    """

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where
        self.signal_name = _state.signal_name or "a signal to another process"


class _State:
    signal_name: str | None = None
    received_at = 0.0


_state = _State()


def _handle(signum: int, frame: object) -> None:
    now = time.monotonic()
    if _state.signal_name is None:
        _state.signal_name, _state.received_at = signal.Signals(signum).name, now
        if is_main_process():  # os.write: print() is not safe inside a signal handler
            os.write(2, b"stopping after the current step/shard; press Ctrl-C again to stop at once\n")
        return
    if now - _state.received_at < REPEAT_WINDOW_S:
        return  # the same stop delivered twice
    os.write(2, f"{signal.Signals(signum).name} again: stopping at once\n".encode())
    os._exit(128 + signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Handle SIGTERM and SIGINT as stop requests inside the block; the previous handlers come back after it.

    Outside the main thread (where Python cannot install handlers) the block runs with the signals as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.signal_name = None
    for s in SIGNALS:
        signal.signal(s, _handle)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _state.signal_name = None


def stop_requested() -> bool:
    """Whether this process has been asked to stop."""
    return _state.signal_name is not None


def raise_if_stop_requested(where: str) -> None:
    """Raise :class:`Interrupted` (``where``: e.g. ``"after shard 3 of 10"``) if this process was asked to stop."""
    if stop_requested():
        raise Interrupted(where)


def stop_agreed() -> bool:
    """Whether any process has been asked to stop: every process gets the same answer (an all-reduce MAX of the
    flag in a multi-process run, so every process must call it at the same point)."""
    flag = stop_requested()
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    box = torch.tensor([float(flag)], device=default_device())
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item() > 0)
