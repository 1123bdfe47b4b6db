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
from spa_recipes.refiners_config import DropRefinerConfig, LabelSmoothingConfig, NoRefinerConfig


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
