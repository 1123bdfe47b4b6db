"""The refiners: configs and registration (torch-free; the refiners are in :mod:`spa_recipes.refiners`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from spa_recipes.api import PER_PAIR, ComponentConfig


class NoRefinerConfig(ComponentConfig):
    """Flagged pairs are trained on as labelled."""


class LabelSmoothingConfig(ComponentConfig):
    """SPA's self-refinement: flagged pairs' labels smoothed by alpha after a warm-up."""

    alpha: float = Field(0.1, ge=0.0, le=0.5, description="label smoothing of flagged pairs")
    warmup_fraction: float = Field(0.2, ge=0.0, le=1.0, description="share of steps with no refinement")


class DropRefinerConfig(ComponentConfig):
    """Flagged pairs get zero weight after a warm-up."""

    warmup_fraction: float = Field(0.2, ge=0.0, le=1.0, description="share of steps with no refinement")


class ConsistencyRefinerConfig(ComponentConfig):
    """CREAM: every pair's label is smoothed by 1 - C, C the consistency of two models' rankings (arXiv 2410.12735)."""

    capabilities = frozenset({PER_PAIR})

    average: Literal["dataset", "pair"] = Field(
        "dataset",
        description="C per pair, or C averaged over the stage's pairs (with K = 2 a pair's own C is 0 or 1, "
        "so per pair it either keeps or reverses the label)",
    )


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the built-in refiners."""
    r = registry.register
    r(
        "refiner",
        "none",
        config=NoRefinerConfig,
        builder="spa_recipes.refiners:NoRefiner",
        help="flagged pairs keep their labels",
    )
    r(
        "refiner",
        "label_smoothing",
        config=LabelSmoothingConfig,
        builder="spa_recipes.refiners:LabelSmoothingRefiner",
        help="SPA self-refinement: smooth flagged labels by alpha",
    )
    r(
        "refiner",
        "drop",
        config=DropRefinerConfig,
        builder="spa_recipes.refiners:DropRefiner",
        help="flagged pairs get zero weight",
    )
    r(
        "refiner",
        "consistency",
        config=ConsistencyRefinerConfig,
        builder="spa_recipes.refiners:ConsistencyRefiner",
        help="CREAM: smooth each label by 1 - consistency of the judge's and the previous model's rankings",
    )
