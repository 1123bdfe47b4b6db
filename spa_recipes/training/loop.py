"""The training loop both trainers share: data order, optimiser, schedule, accumulation, clipping,
the non-finite policy, checkpoints with exact resume, and per-step metrics.

A trainer (preference.py, sft.py) sets up its model and data and hands :func:`run_training_loop` one
function, ``compute(model, indices, step, total_steps) -> MicroBatch``: the loss of one micro-batch (the
examples at ``indices``) under the prepared model and its statistics. Everything else lives here, written once.

Data order. Each epoch is a permutation of the examples drawn from ``torch.Generator`` seeded with
``(seed, epoch)``; it is padded with its own head to a multiple of the process count (as
``DistributedSampler`` does) and dealt out in micro-batches of ``batch_size`` per process. With
``group_by_length`` the permutation is then cut into windows of ``GROUP_WINDOW`` global batches, each window
sorted by example length and cut into global batches, and the full global batches are shuffled by the same
generator (the one short batch, if any, stays last): each micro-batch holds examples of similar length, so
little of it is padding. The order is a pure function of (seed, epoch, process count, lengths), so a
checkpoint stores only where in it training stands.

Steps. ``epochs`` may be fractional: the run is ``ceil(epochs * micro_batches_per_epoch)`` micro-batches,
grouped by ``gradient_accumulation_steps`` into optimiser steps (the last one may be shorter; its
micro-batches are averaged over their own count).

Checkpoints (``work_dir/checkpoints/step-N``, written by the main process with ``atomic_dir``): model
weights, optimiser, scheduler, loop counters, and per process its RNG states (torch, CUDA, python,
numpy) and its stateful components (e.g. a noise detector's window). A run finding a complete
checkpoint continues from the newest one; the final weights equal those of an uninterrupted run.
Checkpoints are taken at optimiser-step boundaries.

Precision. The trained model always holds float32 master weights and AdamW state (a model loaded in 16 bits
is upcast here); with a 16-bit ``models.dtype`` the forward and backward run in it under the accelerator's
mixed precision (:func:`make_accelerator`). ``training.gradient_checkpointing`` recomputes each layer's
activations in the backward instead of keeping them.

Sharding. Weights and optimiser state go through ``torch.distributed.checkpoint.state_dict``: gathered
to full tensors on the main process when saved, and scattered back to each process's shard when loaded.
That one path serves a single process, DDP and FSDP2 alike, so a checkpoint holds full (unsharded)
tensors whatever wrote it. The final weights are gathered the same way (:attr:`LoopResult.state_dict`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from spa_recipes.atomic import append_text, atomic_dir, dumps_json, is_complete, loads_json, read_jsonl
from spa_recipes.errors import UserError
from spa_recipes.faults import fault_point
from spa_recipes.modeling import resolve_dtype
from spa_recipes.progress import progress_bar
from spa_recipes.schema import TrainingSection

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss or gradient under ``nonfinite: fail``, a mismatched checkpoint)."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class MicroBatch:
    """What a trainer returns for one micro-batch.

    Attributes:
        loss: scalar to back-propagate (already averaged over the micro-batch).
        means: statistics averaged over the micro-batches of a step and over processes (e.g. margins).
        sums: statistics summed (e.g. ``tokens``).
        lists: lists concatenated over micro-batches and processes (e.g. ``flagged_ids``).
    """

    loss: torch.Tensor
    means: dict[str, float] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    lists: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """How many micro-batches and optimiser steps a run has."""

    micro_per_epoch: int
    total_micro: int
    total_steps: int
    accumulation: int


def plan_steps(num_examples: int, training: TrainingSection, num_processes: int) -> Plan:
    """The run's micro-batch and optimiser-step counts.

    Raises:
        UserError: no examples.
    """
    if num_examples == 0:
        raise UserError("training: the dataset is empty")
    per_process = math.ceil(num_examples / num_processes)
    micro_per_epoch = math.ceil(per_process / training.batch_size)
    total_micro = max(1, math.ceil(training.epochs * micro_per_epoch - 1e-9))
    accumulation = training.gradient_accumulation_steps
    return Plan(micro_per_epoch, total_micro, math.ceil(total_micro / accumulation), accumulation)


def epoch_batches(
    num_examples: int,
    *,
    seed: int,
    epoch: int,
    batch_size: int,
    num_processes: int,
    process_index: int,
    lengths: list[int] | None = None,
) -> list[list[int]]:
    """This process's micro-batches (example indices) for one epoch; see the module docstring.

    ``lengths`` (one per example, e.g. its padded width) turns on length grouping.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_examples, generator=generator).tolist()
    padded_len = math.ceil(num_examples / num_processes) * num_processes
    order = (order * math.ceil(padded_len / num_examples))[:padded_len]
    if lengths is not None:
        order = _group_by_length(order, lengths, batch_size * num_processes, generator)
    mine = order[process_index::num_processes]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


GROUP_WINDOW = 32  # global batches sorted together: long enough to find similar lengths, short enough to mix


def _group_by_length(order: list[int], lengths: list[int], global_batch: int, generator: torch.Generator) -> list[int]:
    window = global_batch * GROUP_WINDOW
    ranked: list[int] = []
    for start in range(0, len(order), window):
        ranked += sorted(order[start : start + window], key=lambda i: -lengths[i])  # stable: ties keep their order
    batches = [ranked[i : i + global_batch] for i in range(0, len(ranked), global_batch)]
    full = [b for b in batches if len(b) == global_batch]
    short = [b for b in batches if len(b) < global_batch]
    # Every process draws the same permutation, so process p's k-th micro-batch stays in the k-th global batch.
    shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    return [i for batch in shuffled + short for i in batch]


MIXED_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "no"}


def make_accelerator(dtype: str) -> Any:
    """The trainers' ``Accelerator``, its mixed precision following the recipe's ``models.dtype``.

    A 16-bit ``dtype`` means mixed precision: the trained model keeps float32 master weights and optimiser
    state (:func:`run_training_loop` makes sure of it) and its forward and backward run under autocast in
    that 16-bit type; under FSDP2 Accelerate turns the same setting into FSDP's mixed-precision policy. This
    argument wins over a launcher config's ``mixed_precision``. The launcher (``accelerate launch
    --config_file``) picks DDP or FSDP.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed_precision = MIXED_PRECISION[resolve_dtype(dtype)]
    # Accelerate keeps one state per process and refuses another precision; a process that trains in two
    # precisions (a notebook, the tests) starts the accelerator state anew. The process group is kept.
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision)


def parallelism(accelerator: Any) -> str:
    """How training is spread: ``single``, ``ddp`` (whole model per process) or ``fsdp2`` (sharded)."""
    if accelerator.is_fsdp2:
        return "fsdp2"
    return "ddp" if accelerator.num_processes > 1 else "single"


def build_optimizer(model: torch.nn.Module, training: TrainingSection) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-d parameters) get no weight decay."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": training.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters (CPU and GPU), instead of a loop of small ops per tensor.
    return torch.optim.AdamW(groups, lr=training.learning_rate, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, training: TrainingSection, total_steps: int) -> Any:
    """Cosine, linear or constant learning rate after ``ceil(warmup_ratio * total_steps)`` linear warm-up steps."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(training.lr_scheduler, training.lr_scheduler)
    warmup = math.ceil(training.warmup_ratio * total_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _float32_master_weights(model: torch.nn.Module) -> None:
    """Upcast a model loaded in 16 bits to float32 in place, so that optimiser updates are not lost.

    At lr 5e-7 an AdamW update is below bf16's resolution for almost every weight; the forward and backward
    still run in 16 bits under the accelerator's autocast (see :func:`make_accelerator`).
    """
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model.float()


def _enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Keep only each layer's input during the forward and recompute the rest in the backward.

    Non-reentrant checkpointing works with DDP, FSDP2 and inputs that need no gradient.

    Raises:
        UserError: the model class has no gradient checkpointing.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"training.gradient_checkpointing: {type(model).__name__} does not support it")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name is deprecated
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _disable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Undo :func:`_enable_gradient_checkpointing` on the trained model (it is saved and may be used again)."""
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


# Checkpoints ----------------------------------------------------------------------------------------


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


def _gathered() -> Any:
    """Full (unsharded) tensors on the CPU of the main process; nothing on the others."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


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
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    process_state = {"rng": rng_state(), **{name: obj.state_dict() for name, obj in stateful.items()}}
    states = gather_object([process_state]) if accelerator.num_processes > 1 else [process_state]
    model_state = full_state_dict(model)
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
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=spread)

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


# Metrics --------------------------------------------------------------------------------------------


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop rows of steps after ``after_step`` (written by a run that was cut off before its next checkpoint)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= after_step]
    path.write_text("".join(line + "\n" for line in kept))


def _reduce_stats(accelerator: Any, micro: list[MicroBatch]) -> dict[str, Any]:
    """Average ``means``, add ``sums``, concatenate ``lists`` over micro-batches and processes."""
    from accelerate.utils import gather_object

    means = {k: sum(m.means[k] for m in micro) / len(micro) for k in micro[0].means}
    sums = {k: sum(m.sums[k] for m in micro) for k in micro[0].sums}
    lists = {k: [x for m in micro for x in m.lists[k]] for k in micro[0].lists}
    if accelerator.num_processes > 1:
        keys = list(means) + list(sums)
        values = torch.tensor([means[k] for k in means] + [sums[k] for k in sums], device=accelerator.device)
        gathered = accelerator.gather(values.unsqueeze(0))
        means = dict(zip(means, gathered[:, : len(means)].mean(0).tolist(), strict=True))
        sums = dict(zip(keys[len(means) :], gathered[:, len(means) :].sum(0).tolist(), strict=True))
        lists = {k: [x for part in gather_object([v]) for x in part] for k, v in lists.items()}
    return {**means, **sums, **lists}


# The loop -------------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    """What a finished (or deliberately stopped) loop returns.

    ``model`` is the unwrapped model (under FSDP its parameters are still sharded); ``state_dict`` holds its
    full trained weights on the main process (``{}`` on the others, and after a deliberate stop): save that.
    """

    model: torch.nn.Module
    state_dict: dict[str, torch.Tensor]
    steps: int
    total_steps: int
    skipped_steps: int
    final_loss: float
    history: list[dict[str, Any]]
    resumed_from: int | None
    stopped_early: bool


def run_training_loop(
    *,
    accelerator: Any,
    model: torch.nn.Module,
    num_examples: int,
    compute: Callable[[Any, list[int], int, int], MicroBatch],
    training: TrainingSection,
    seed: int,
    work_dir: Path,
    stateful: dict[str, Stateful] | None = None,
    progress: bool = True,
    description: str = "train",
    stop_after: int | None = None,
    lengths: list[int] | None = None,
    begin_step: Callable[[Any, list[list[int]], int, int], None] | None = None,
) -> LoopResult:
    """Train ``model`` on ``num_examples`` examples with ``compute`` giving each micro-batch's loss.

    Args:
        accelerator: the run's ``Accelerator``.
        model: the (unprepared) model to train; it is prepared here with its optimiser.
        num_examples: dataset size; ``compute`` receives indices into it.
        compute: ``(model, indices, step, total_steps) -> MicroBatch``; ``model`` is the prepared (maybe
            DDP-wrapped) model to call, ``step`` the 0-based optimiser step.
        training: optimiser, batching, checkpoint and non-finite settings.
        seed: seed of the data order (and of torch/python/numpy RNGs at the start).
        work_dir: checkpoints and ``metrics.jsonl`` go here; an existing complete checkpoint is resumed.
        stateful: per-process components saved with every checkpoint (e.g. ``{"detector": d}``).
        progress: show progress (spa_recipes.progress) on the main process.
        description: the bar's label.
        stop_after: stop (as if cut off) after this many optimiser steps, once that step's checkpoint is
            written; for splitting a run across job slots and for resume tests.
        lengths: each example's length (the width it pads its micro-batch to); used when
            ``training.group_by_length`` is on.
        begin_step: ``(model, micro_batches, step, total_steps)``, called before the micro-batches of each
            optimiser step with all of this process's micro-batches of that step (example indices): for
            statistics over the whole optimiser batch (e.g. the bottom K% of its pairs).

    Returns:
        A :class:`LoopResult` whose ``model`` is the unwrapped trained model.

    Raises:
        TrainingError: a non-finite loss or gradient with ``nonfinite: fail`` (the last complete
            checkpoint is left as it was), or a checkpoint from a different configuration.
    """
    from accelerate.utils import set_seed

    stateful = stateful or {}
    work_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_steps(num_examples, training, accelerator.num_processes)
    set_seed(seed)
    _float32_master_weights(model)
    if training.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    optimizer = build_optimizer(model, training)
    scheduler = build_scheduler(optimizer, training, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    fingerprint = {
        "num_examples": num_examples,
        "total_steps": plan.total_steps,
        "seed": seed,
        "num_processes": accelerator.num_processes,
    }
    loop_state: dict[str, Any] = {"step": 0, "skipped_steps": 0, "final_loss": float("nan"), **fingerprint}
    resumed_from = None
    checkpoints = list_checkpoints(work_dir)
    if checkpoints:
        resumed_from, folder = checkpoints[-1]
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
    metrics_path = work_dir / METRICS
    if accelerator.is_main_process:
        truncate_metrics(metrics_path, loop_state["step"])

    step = loop_state["step"]
    history: list[dict[str, Any]] = []
    bar = progress_bar(
        plan.total_steps, description, initial=step, unit="step", enabled=progress and accelerator.is_main_process
    )
    max_norm = training.max_grad_norm if training.max_grad_norm is not None else float("inf")
    batches: list[list[int]] = []
    batches_epoch = -1
    stopped_early = False

    while step < plan.total_steps:
        started = time.perf_counter()
        first = step * plan.accumulation
        micro_indices = range(first, min(first + plan.accumulation, plan.total_micro))
        step_batches: list[list[int]] = []
        for micro in micro_indices:
            epoch = micro // plan.micro_per_epoch
            if epoch != batches_epoch:
                batches = epoch_batches(
                    num_examples,
                    seed=seed,
                    epoch=epoch,
                    batch_size=training.batch_size,
                    num_processes=accelerator.num_processes,
                    process_index=accelerator.process_index,
                    lengths=lengths if training.group_by_length else None,
                )
                batches_epoch = epoch
            step_batches.append(batches[micro % plan.micro_per_epoch])
        if begin_step is not None:
            begin_step(model, step_batches, step, plan.total_steps)
        results: list[MicroBatch] = []
        nonfinite = False
        for n, indices in enumerate(step_batches):
            # Gradients are all-reduced once per optimiser step, on its last micro-batch.
            sync = n < len(step_batches) - 1 and accelerator.num_processes > 1
            with accelerator.no_sync(model) if sync else contextlib.nullcontext():
                result = compute(model, indices, step, plan.total_steps)
                nonfinite |= not bool(torch.isfinite(result.loss.detach()).all())
                accelerator.backward(result.loss / len(step_batches))
            results.append(result)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        # Under fp16 the loss scaler owns overflowing gradients: it skips the step and lowers its scale.
        if accelerator.scaler is None:
            nonfinite |= not math.isfinite(float(grad_norm))
        if accelerator.num_processes > 1:
            flag = torch.tensor([float(nonfinite)], device=accelerator.device)
            nonfinite = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
        if nonfinite and training.nonfinite == "fail":
            last_ckpt = list_checkpoints(work_dir)
            where = f"the last complete checkpoint is {last_ckpt[-1][1]}" if last_ckpt else "no checkpoint was written"
            raise TrainingError(
                f"non-finite loss or gradient at optimiser step {step + 1} of {plan.total_steps} "
                f"(epoch {first // plan.micro_per_epoch}); {where}; lower training.learning_rate or set "
                "training.nonfinite: skip_step"
            )
        if nonfinite:
            loop_state["skipped_steps"] += 1
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1

        stats = _reduce_stats(accelerator, results)
        elapsed = time.perf_counter() - started
        row = {
            "step": step,
            "epoch": first / plan.micro_per_epoch,
            **stats,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": stats.get("tokens", 0.0) / max(elapsed, 1e-9),
            "nonfinite": nonfinite,
            "skipped_steps": loop_state["skipped_steps"],
        }
        history.append(row)
        if math.isfinite(row.get("loss", float("nan"))):
            loop_state["final_loss"] = row["loss"]
        loop_state["step"] = step
        if accelerator.is_main_process:
            append_text(metrics_path, dumps_json(row) + "\n", "training metrics")
        bar.update(1)
        bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}", refresh=False)

        stopping = stop_after is not None and step >= stop_after and step < plan.total_steps
        due = training.checkpoint_every and step % training.checkpoint_every == 0 and step < plan.total_steps
        if due or stopping:
            save_checkpoint(
                accelerator,
                work_dir,
                step,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                loop_state=loop_state,
                stateful=stateful,
                keep=training.keep_checkpoints,
            )
        if stopping:
            stopped_early = True
            break
    bar.close()
    final_state = {} if stopped_early else full_state_dict(model)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if training.gradient_checkpointing:
        _disable_gradient_checkpointing(unwrapped)
    return LoopResult(
        model=unwrapped,
        state_dict=final_state,
        steps=step,
        total_steps=plan.total_steps,
        skipped_steps=loop_state["skipped_steps"],
        final_loss=loop_state["final_loss"],
        history=history,
        resumed_from=resumed_from,
        stopped_early=stopped_early,
    )


def read_metrics(work_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``work_dir/metrics.jsonl`` (the whole run, across resumes)."""
    path = work_dir / METRICS
    if not path.exists():
        return []
    return read_jsonl(path)
