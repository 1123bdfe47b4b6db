"""The training loop the trainers share: accumulation, clipping, the non-finite policy, checkpoints on schedule,
and per-step metrics.

A trainer (preference.py, sft.py, reward.py) sets up its model and data and hands :func:`run_training_loop` one
function, ``compute(model, indices, step, total_steps) -> MicroBatch``: the loss of one micro-batch (the
examples at ``indices``) under the prepared model and its statistics. The rest is written once, here and in
the modules the loop reads top to bottom:

- :mod:`spa_recipes.training.data_order`: which examples each micro-batch of each optimiser step holds;
- :mod:`spa_recipes.training.optimization`: accelerator and mixed precision, float32 master weights,
  gradient checkpointing, AdamW and the learning-rate schedule;
- :mod:`spa_recipes.training.checkpoints`: checkpoints with exact resume.

Steps. An optimiser step is ``gradient_accumulation_steps`` micro-batches (the last one may be shorter; its
micro-batches are averaged over their own count); gradients are all-reduced once, on its last micro-batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spa_recipes.atomic import append_text, atomic_dir, dumps_json, read_jsonl
from spa_recipes.errors import TrainingError
from spa_recipes.interrupt import Interrupted, stop_agreed
from spa_recipes.modeling import save_model
from spa_recipes.progress import progress_bar
from spa_recipes.schema import TrainingSection
from spa_recipes.training.checkpoints import (
    Stateful,
    full_state_dict,
    list_checkpoints,
    resume_newest,
    save_checkpoint,
)
from spa_recipes.training.data_order import DataOrder, Plan, plan_steps
from spa_recipes.training.optimization import (
    build_optimizer,
    build_scheduler,
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    float32_master_weights,
)

METRICS = "metrics.jsonl"


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


# Metrics --------------------------------------------------------------------------------------------


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop rows of steps after ``after_step`` (written by a run that was cut off before its next checkpoint)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= after_step]
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(work_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``work_dir/metrics.jsonl`` (the whole run, across resumes)."""
    path = work_dir / METRICS
    if not path.exists():
        return []
    return read_jsonl(path)


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


def save_trained(accelerator: Any, result: LoopResult, tokenizer: Any, output_dir: Path, dtype: str) -> None:
    """Save a finished loop's model (with ``tokenizer``) atomically to ``output_dir`` in ``dtype``; nothing after
    a deliberate stop. Every process must call it."""
    if not result.stopped_early and accelerator.is_main_process:
        with atomic_dir(output_dir) as tmp:
            save_model(result.model, tokenizer, tmp, result.state_dict, dtype=dtype)
    accelerator.wait_for_everyone()


def _backward_step(
    accelerator: Any,
    model: Any,
    step_batches: list[list[int]],
    compute: Callable[[Any, list[int], int, int], MicroBatch],
    step: int,
    plan: Plan,
    max_norm: float,
) -> tuple[list[MicroBatch], Any, bool]:
    """Forward and backward of one optimiser step's micro-batches, then clipping: ``(results, grad_norm,
    nonfinite)``, ``nonfinite`` agreed by every process."""
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
    return results, grad_norm, nonfinite


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
        Interrupted: a stop was requested (SIGTERM, Ctrl-C); raised after the optimiser step in progress, once a
            checkpoint of that step is written.
    """
    from accelerate.utils import set_seed

    stateful = stateful or {}
    work_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_steps(num_examples, training, accelerator.num_processes)
    set_seed(seed)
    float32_master_weights(model)
    if training.gradient_checkpointing:
        enable_gradient_checkpointing(model)
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
    resumed = resume_newest(
        accelerator,
        work_dir,
        fingerprint=fingerprint,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        stateful=stateful,
    )
    if resumed is not None:
        loop_state, resumed_from = resumed
    metrics_path = work_dir / METRICS
    if accelerator.is_main_process:
        truncate_metrics(metrics_path, loop_state["step"])

    step = loop_state["step"]
    history: list[dict[str, Any]] = []
    bar = progress_bar(
        plan.total_steps, description, initial=step, unit="step", enabled=progress and accelerator.is_main_process
    )
    max_norm = training.max_grad_norm if training.max_grad_norm is not None else float("inf")
    order = DataOrder(
        plan,
        num_examples,
        seed=seed,
        batch_size=training.batch_size,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        lengths=lengths if training.group_by_length else None,
    )
    stopped_early = False

    while step < plan.total_steps:
        started = time.perf_counter()
        first = order.first_micro(step)
        step_batches = order.step_batches(step)
        if begin_step is not None:
            begin_step(model, step_batches, step, plan.total_steps)
        results, grad_norm, nonfinite = _backward_step(accelerator, model, step_batches, compute, step, plan, max_norm)
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
        # SIGTERM or Ctrl-C (spa_recipes.interrupt): a checkpoint at this step, then stop; every process agrees.
        signalled = step < plan.total_steps and stop_agreed()
        if due or stopping or signalled:
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
        if signalled:
            bar.close()
            raise Interrupted(f"at step {step} of {plan.total_steps}")
        if stopping:
            stopped_early = True
            break
    bar.close()
    final_state = {} if stopped_early else full_state_dict(model)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if training.gradient_checkpointing:
        disable_gradient_checkpointing(unwrapped)
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
