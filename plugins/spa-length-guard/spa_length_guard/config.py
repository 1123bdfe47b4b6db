"""The ``length_guard`` arguments: the one source of their defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spa_recipes.api import ComponentConfig


class LengthGuardConfig(ComponentConfig):
    """min_max pair selection with a cap on how much longer (in words) chosen may be than rejected."""

    max_length_ratio: float = Field(
        1.5, gt=0.0, description="drop a pair whose chosen has more than this many times the rejected's words"
    )
    symmetric: bool = Field(False, description="also drop a pair whose rejected is that much longer than chosen")
    ties: Literal["keep", "drop"] = Field("keep", description="pairs whose scores are equal")
    drop_identical: bool = Field(True, description="drop pairs whose two responses are the same text")
