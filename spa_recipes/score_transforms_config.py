"""The score transforms: configs and registration (the transforms are in :mod:`spa_recipes.score_transforms`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from spa_recipes.api import ComponentConfig


class NoTransformConfig(ComponentConfig):
    """The judge's scores as they are."""


class LengthRegularizedConfig(ComponentConfig):
    """DICE's length-regularised score ``r - alpha * |y|`` (arXiv 2406.09760)."""

    alpha: float | Literal["auto"] = Field(
        "auto",
        description="penalty per unit of length; auto: per iteration, the value of the sweep 0..alpha_max (step "
        "alpha_step) that makes chosen and rejected responses most equal in mean length (DICE)",
    )
    unit: Literal["chars", "words", "tokens"] = Field("chars", description="how |y| is counted (DICE: characters)")
    alpha_max: float = Field(1.0, gt=0.0, description="auto: the largest alpha tried")
    alpha_step: float = Field(0.001, gt=0.0, description="auto: the sweep's step")


class LengthNormalizedConfig(ComponentConfig):
    """The judge's score divided by the response length in tokens (a per-token reward)."""


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the built-in score transforms."""
    r = registry.register
    r(
        "score_transform",
        "none",
        config=NoTransformConfig,
        builder="spa_recipes.score_transforms:NoTransform",
        help="the judge's scores as they are",
    )
    r(
        "score_transform",
        "length_regularized",
        config=LengthRegularizedConfig,
        builder="spa_recipes.score_transforms:LengthRegularized",
        help="DICE: score - alpha * length, alpha fixed or chosen to equalise chosen and rejected lengths",
    )
    r(
        "score_transform",
        "length_normalized",
        config=LengthNormalizedConfig,
        builder="spa_recipes.score_transforms:LengthNormalized",
        help="score / response tokens",
    )
