"""Process-group helpers for multi-process runs (``torchrun`` / ``accelerate launch``), one place for all.

A run launched with ``WORLD_SIZE > 1`` initialises the process group once (:func:`init_distributed`,
called by the runner) through accelerate's ``PartialState``; the trainers' ``Accelerator`` then reuses it.
Every helper here is a no-op (or the trivial answer) in a single process, without importing torch, so the
single-process path is the one it always was.

Conventions of a multi-process run: the main process (rank 0) alone writes run artifacts (manifest,
stage markers, stage outputs, models); shard files are the exception, each written by the one rank that
owns the shard. Every other rank waits at a :func:`barrier` before reading what main wrote.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")
TIMEOUT_ENV = "SPA_RECIPES_DIST_TIMEOUT"
# Ranks wait at barriers while main alone runs a stage (split, pairs, a judge's training): give them hours.
DEFAULT_TIMEOUT_S = 4 * 3600


def world_size() -> int:
    """Number of processes in this run's process group (1 until :func:`init_distributed` made one)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's global rank (0 in a single process, or before the group exists)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return 0


def is_main_process() -> bool:
    """Whether this process writes the run's artifacts (rank 0)."""
    return rank() == 0


def init_distributed() -> None:
    """Initialise the process group once when launched with ``WORLD_SIZE > 1``; nothing otherwise.

    gloo on CPU, nccl on GPUs (accelerate picks; DeepSpeed launches go through deepspeed's own init).
    The collective timeout is ``SPA_RECIPES_DIST_TIMEOUT`` seconds (default 4 hours).

    Raises:
        UserError: a DeepSpeed launch, refused before any work: its engine keeps checkpoints of its own,
            which the trainers neither write nor read.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        from spa_recipes.errors import UserError

        raise UserError(
            "DeepSpeed launches are not supported: use configs/accelerate/fsdp.yaml, where FSDP2 shards "
            "parameters, gradients and optimiser state as ZeRO-3 does"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _initialized():
        return
    import torch
    from accelerate import PartialState

    # cpu=True is what makes accelerate pick gloo (MULTI_CPU) on a machine without GPUs; the trainers'
    # Accelerator then finds this state and is data-parallel too.
    PartialState(
        cpu=not torch.cuda.is_available(),
        timeout=timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))),
    )


def shutdown_distributed() -> None:
    """Wait for every process, then tear the process group down (no-op in a single process).

    Called at the end of a run: a process that exits with the group still up can abort in its C++
    teardown ("terminate called without an active exception", seen with FSDP2 on gloo), which the
    launcher reports as a failed run.
    """
    if _initialized():
        import torch.distributed as dist

        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if _initialized():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def broadcast(obj: T) -> T:
    """Main's ``obj`` on every process (picklable; returned as is in a single process)."""
    if not _initialized():
        return obj
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def default_device() -> str:
    """This process's device: its own GPU in a multi-GPU run, ``cuda`` with one GPU, else ``cpu``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if _initialized():
        from accelerate import PartialState

        return str(PartialState().device)
    return "cuda"


def _initialized() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False  # never import torch for a single process
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()
