"""The noise detectors: configs and registration (torch-free; the detectors are in :mod:`spa_recipes.noise`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from spa_recipes.api import EXTRAPOLATION, ComponentConfig


class NoneDetectorConfig(ComponentConfig):
    """No pair is ever flagged."""


class QuantileDetectorConfig(ComponentConfig):
    """Flag the least-confident fraction of pairs, by the policy's margin or the DND extrapolation."""

    capabilities = frozenset({EXTRAPOLATION})

    k: float = Field(0.10, gt=0.0, lt=1.0, description="fraction of least-confident pairs to flag")
    confidence: Literal["policy", "extrapolated"] = Field(
        "extrapolated", description="margin source: the policy (coupled) or the DND extrapolation"
    )
    lambda_: float | list[float] = Field(
        0.0,
        alias="lambda",
        description="DND extrapolation strength, one value or one per iteration (paper: 0.5, 0.25, 0.125)",
    )


class RollingQuantileConfig(QuantileDetectorConfig):
    """The released code's rule: a per-process window of the last margins."""

    window: int = Field(50, gt=1, description="margins kept per process")
    until_full: Literal["zero_threshold", "flag_nothing"] = Field(
        "zero_threshold",
        description="before the window fills: threshold 0, so negative margins are flagged (SPEC's reading of the "
        "released code), or flag nothing",
    )


class BatchQuantileConfig(QuantileDetectorConfig):
    """The paper's reading: the bottom K% of each global batch, gathered across processes."""


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the built-in noise detectors."""
    r = registry.register
    r(
        "noise_detector",
        "none",
        config=NoneDetectorConfig,
        builder="spa_recipes.noise:NoNoiseDetector",
        help="flags nothing",
    )
    r(
        "noise_detector",
        "rolling_quantile",
        config=RollingQuantileConfig,
        builder="spa_recipes.noise:RollingQuantileDetector",
        help="released code: window of the last 50 margins",
    )
    r(
        "noise_detector",
        "batch_quantile",
        config=BatchQuantileConfig,
        builder="spa_recipes.noise:BatchQuantileDetector",
        help="paper: bottom K% of each global batch",
    )
