"""Checkpoints of the training loop: what one holds, how it is written and read, and resuming from the newest.

A checkpoint (``work_dir/checkpoints/step-N``, written by the main process with ``atomic_dir``) holds model
weights, optimiser, scheduler, loop counters, and per process its RNG states (torch, CUDA, python, numpy) and
its stateful components (e.g. a noise detector's window). A run finding a complete checkpoint continues from
the newest one; the final weights equal those of an uninterrupted run. Checkpoints are taken at
optimiser-step boundaries.

Sharding. Weights and optimiser state go through ``torch.distributed.checkpoint.state_dict``: gathered to
full tensors on the main process when saved, and scattered back to each process's shard when loaded. That one
path serves a single process, DDP and FSDP2 alike, so a checkpoint holds full (unsharded) tensors whatever
wrote it. The final weights are gathered the same way (:func:`full_state_dict`).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from spa_recipes.atomic import atomic_dir, dumps_json, is_complete, loads_json
from spa_recipes.errors import TrainingError
from spa_recipes.faults import fault_point

CHECKPOINTS = "checkpoints"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gathered(trained_only: bool = False) -> Any:
    """Full (unsharded) tensors on the CPU of the main process; nothing on the others. ``trained_only``: without the
    frozen parameters (an adapted model's base, which the run reloads from its starting model)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trained_only)


def _has_frozen(model: torch.nn.Module) -> bool:
    return any(not p.requires_grad for p in model.parameters())


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The prepared (plain, DDP or FSDP2) model's full weights on the main process's CPU; ``{}`` elsewhere.

    Every process must call it (FSDP gathers the shards).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_gathered())


def list_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as ``(step, folder)``, oldest first."""
    root = work_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.name.startswith("step-") and folder.name[5:].isdigit() and is_complete(folder):
            found.append((int(folder.name[5:]), folder))
    return sorted(found)


def save_checkpoint(
    accelerator: Any,
    work_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    loop_state: dict[str, Any],
    stateful: dict[str, Stateful],
    keep: int,
) -> None:
    """Write ``work_dir/checkpoints/step-{step}`` atomically and prune to the newest ``keep``.

    Every process must call it (per-process states are gathered to the main process, which writes).
    """
    from accelerate.utils import gather_object
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    process_state = {"rng": rng_state(), **{name: obj.state_dict() for name, obj in stateful.items()}}
    states = gather_object([process_state]) if accelerator.num_processes > 1 else [process_state]
    model_state = get_model_state_dict(model, options=_gathered(trained_only=_has_frozen(model)))
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=_gathered())
    if accelerator.is_main_process:
        with atomic_dir(work_dir / CHECKPOINTS / f"step-{step}", "training checkpoint") as tmp:
            torch.save(model_state, tmp / "model.pt")
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(states, tmp / "process_states.pt")
            (tmp / "loop_state.json").write_text(dumps_json(loop_state, indent=2, sort_keys=True))
        for _, old in list_checkpoints(work_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        fault_point(work_dir / CHECKPOINTS / f"step-{step}")
    accelerator.wait_for_everyone()


def load_checkpoint(
    accelerator: Any,
    folder: Path,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    stateful: dict[str, Stateful],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore weights, optimiser, scheduler and stateful components; return ``(loop_state, rng_state)``.

    The RNG state is returned rather than set so the caller restores it last.

    Raises:
        TrainingError: the checkpoint was written by a different number of processes.
    """
    # Our own files (tensors plus python/numpy RNG tuples), hence weights_only=False.
    states = torch.load(folder / "process_states.pt", weights_only=False)
    if len(states) != accelerator.num_processes:
        raise TrainingError(
            f"checkpoint {folder} was written by {len(states)} processes, this run has "
            f"{accelerator.num_processes}; resume with the same process count or delete the checkpoint"
        )
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    # The main process reads the full tensors and sends each process its shard; the others read nothing.
    spread = accelerator.num_processes > 1
    # An adapted model's checkpoint holds the adapter only: its frozen base is missing on purpose.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=spread, strict=not _has_frozen(model))

    def read(name: str) -> dict[str, Any]:
        if spread and not accelerator.is_main_process:
            return {}
        return torch.load(folder / name, weights_only=False, mmap=True)

    set_model_state_dict(model, read("model.pt"), options=options)
    set_optimizer_state_dict(model, optimizer, read("optimizer.pt"), options=options)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    mine = states[accelerator.process_index]
    for name, obj in stateful.items():
        obj.load_state_dict(mine[name])
    return loads_json((folder / "loop_state.json").read_text()), mine["rng"]


def resume_newest(
    accelerator: Any,
    work_dir: Path,
    *,
    fingerprint: dict[str, Any],
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    stateful: dict[str, Stateful],
) -> tuple[dict[str, Any], int] | None:
    """Restore the newest complete checkpoint in ``work_dir``, RNG states last; ``(loop_state, step)`` or None.

    Raises:
        TrainingError: the checkpoint belongs to a run with another ``fingerprint`` (dataset size, step count,
            seed, process count).
    """
    checkpoints = list_checkpoints(work_dir)
    if not checkpoints:
        return None
    step, folder = checkpoints[-1]
    loop_state, rng = load_checkpoint(
        accelerator, folder, model=model, optimizer=optimizer, scheduler=scheduler, stateful=stateful
    )
    for key, value in fingerprint.items():
        if loop_state.get(key) != value:
            raise TrainingError(
                f"checkpoint {folder} belongs to a different run ({key} {loop_state.get(key)} != {value}); "
                "delete it or use a fresh work_dir"
            )
    set_rng_state(rng)
    return loop_state, step
