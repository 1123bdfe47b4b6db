"""Refiners: what happens to a pair the noise detector flagged (SPEC.md, "Self-refinement").

Each refiner turns the flags of one micro-batch into a label smoothing ``s`` and a loss weight ``w``
per pair. SPA's ``a_t`` is 0 during the first ``warmup_fraction`` of the optimiser steps (nothing is
refined: ``s = 0, w = 1`` for every pair) and ``alpha`` after; unflagged pairs always get ``s = 0, w = 1``.
Step ``t`` (0-based, optimiser steps already taken) is in the warm-up while ``t < warmup_fraction *
total_steps``; e.g. 10 steps with warm-up 0.2: steps 0 and 1 are not refined, steps 2..9 are.
"""

from __future__ import annotations

import torch

from spa_recipes.api import RefinerContext
from spa_recipes.refiners_config import (
    ConsistencyRefinerConfig,
    DropRefinerConfig,
    LabelSmoothingConfig,
    NoRefinerConfig,
)


def _unrefined(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(flags.shape, dtype=torch.float32, device=flags.device),
        torch.ones(flags.shape, dtype=torch.float32, device=flags.device),
    )


def _in_warmup(step: int, total_steps: int, warmup_fraction: float) -> bool:
    return step < warmup_fraction * total_steps


class NoRefiner:
    """Flagged pairs are trained on as labelled."""

    def __init__(self, cfg: NoRefinerConfig | None = None, ctx: RefinerContext = RefinerContext()) -> None:
        pass

    def refine(self, flags: torch.Tensor, step: int, total_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(smoothing 0, weight 1)`` for every pair."""
        return _unrefined(flags)


class LabelSmoothingRefiner:
    """SPA self-refinement: after the warm-up, flagged pairs get label smoothing ``alpha``.

    Args:
        cfg: a :class:`~spa_recipes.refiners_config.LabelSmoothingConfig` (alpha, warmup_fraction).
    """

    def __init__(self, cfg: LabelSmoothingConfig, ctx: RefinerContext = RefinerContext()) -> None:
        self.alpha = float(cfg.alpha)
        self.warmup_fraction = float(cfg.warmup_fraction)

    def refine(self, flags: torch.Tensor, step: int, total_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(smoothing, weights)`` per pair: ``alpha`` on flagged pairs after the warm-up, else 0; weights 1.

        Args:
            flags: ``[batch]`` bool, True for pairs flagged as noisy.
            step: optimiser steps taken so far (0-based index of the current step).
            total_steps: optimiser steps of the whole stage.
        """
        smoothing, weights = _unrefined(flags)
        if not _in_warmup(step, total_steps, self.warmup_fraction):
            smoothing = flags.float() * self.alpha
        return smoothing, weights


class DropRefiner:
    """After the warm-up, flagged pairs get weight 0 (they are left out of the loss).

    Args:
        cfg: a :class:`~spa_recipes.refiners_config.DropRefinerConfig` (warmup_fraction).
    """

    def __init__(self, cfg: DropRefinerConfig, ctx: RefinerContext = RefinerContext()) -> None:
        self.warmup_fraction = float(cfg.warmup_fraction)

    def refine(self, flags: torch.Tensor, step: int, total_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(smoothing 0, weights)`` per pair: weight 0 on flagged pairs after the warm-up, else 1."""
        smoothing, weights = _unrefined(flags)
        if not _in_warmup(step, total_steps, self.warmup_fraction):
            weights = (~flags).float()
        return smoothing, weights


class ConsistencyRefiner:
    """CREAM's consistency regularisation: ``s = 1 - C`` on every pair, flagged or not, from the first step.

    With ``s = 1 - C`` the loss is ``C * DPO(y+, y-) + (1 - C) * DPO(y-, y+)``. ``C`` is the pair's ``consistency``
    (:func:`spa_recipes.pairs.ranking_consistency`, set when the judge returns ``previous_scores``); a pair
    without one (no previous model to compare with, or a replayed pair) counts as fully consistent (C = 1).
    With ``average: dataset`` every pair that has a C gets the mean C of those pairs.

    Args:
        cfg: a :class:`~spa_recipes.refiners_config.ConsistencyRefinerConfig`.
        ctx: ``pairs``, the stage's training pairs.
    """

    def __init__(self, cfg: ConsistencyRefinerConfig, ctx: RefinerContext = RefinerContext()) -> None:
        measured = {str(p["id"]): float(p["consistency"]) for p in ctx.pairs if "consistency" in p}
        if cfg.average == "dataset" and measured:
            mean = sum(measured.values()) / len(measured)
            measured = dict.fromkeys(measured, mean)
        self.smoothing = {str(p["id"]): 1.0 - measured.get(str(p["id"]), 1.0) for p in ctx.pairs}

    def refine(
        self, flags: torch.Tensor, step: int, total_steps: int, ids: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 - C, weight 1)`` per pair of the micro-batch ``ids``."""
        if ids is None:
            raise ValueError("the consistency refiner needs the micro-batch's pair ids (it offers per_pair)")
        _, weights = _unrefined(flags)
        smoothing = torch.tensor([self.smoothing[str(i)] for i in ids], dtype=torch.float32, device=flags.device)
        return smoothing, weights
