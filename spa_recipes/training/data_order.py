"""Data order: how many micro-batches and optimiser steps a run has, and which examples each one holds.

Each epoch is a permutation of the examples drawn from ``torch.Generator`` seeded with ``(seed, epoch)``; it
is padded with its own head to a multiple of the process count (as ``DistributedSampler`` does) and dealt out
in micro-batches of ``batch_size`` per process. With ``group_by_length`` the permutation is then cut into
windows of ``GROUP_WINDOW`` global batches, each window sorted by example length and cut into global batches,
and the full global batches are shuffled by the same generator (the one short batch, if any, stays last):
each micro-batch holds examples of similar length, so little of it is padding. The order is a pure function
of (seed, epoch, process count, lengths), so a checkpoint stores only where in it training stands.

``epochs`` may be fractional: the run is ``ceil(epochs * micro_batches_per_epoch)`` micro-batches, grouped by
``gradient_accumulation_steps`` into optimiser steps (the last one may be shorter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spa_recipes.errors import UserError
from spa_recipes.schema import TrainingSection

GROUP_WINDOW = 32  # global batches sorted together: long enough to find similar lengths, short enough to mix


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


class DataOrder:
    """This process's micro-batches of each optimiser step, drawing each epoch's order once.

    Args:
        plan: the run's step counts (:func:`plan_steps`).
        num_examples: dataset size.
        seed: seed of every epoch's permutation.
        batch_size: examples per micro-batch per process.
        num_processes: processes of the launch.
        process_index: this process.
        lengths: each example's length, for length grouping; None: no grouping.
    """

    def __init__(
        self,
        plan: Plan,
        num_examples: int,
        *,
        seed: int,
        batch_size: int,
        num_processes: int,
        process_index: int,
        lengths: list[int] | None,
    ) -> None:
        self.plan = plan
        self.num_examples = num_examples
        self.seed = seed
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.lengths = lengths
        self._epoch = -1
        self._batches: list[list[int]] = []

    def first_micro(self, step: int) -> int:
        """The run-wide index of optimiser step ``step``'s first micro-batch."""
        return step * self.plan.accumulation

    def step_batches(self, step: int) -> list[list[int]]:
        """The micro-batches (example indices) of optimiser step ``step`` (0-based) on this process."""
        first = self.first_micro(step)
        found = []
        for micro in range(first, min(first + self.plan.accumulation, self.plan.total_micro)):
            epoch = micro // self.plan.micro_per_epoch
            if epoch != self._epoch:
                self._batches = epoch_batches(
                    self.num_examples,
                    seed=self.seed,
                    epoch=epoch,
                    batch_size=self.batch_size,
                    num_processes=self.num_processes,
                    process_index=self.process_index,
                    lengths=self.lengths,
                )
                self._epoch = epoch
            found.append(self._batches[micro % self.plan.micro_per_epoch])
        return found
