"""spa-recipes plugin: the ``length_guard`` pair selector (min_max that refuses "longer wins" pairs).

Importing this package is cheap (pydantic only): ``spa-recipe validate`` imports it to read the config
model. The selector itself lives in :mod:`spa_length_guard.selector`, imported when a run builds it.
"""

from __future__ import annotations

from typing import Any

from spa_length_guard.config import LengthGuardConfig

__all__ = ["LengthGuardConfig", "register"]


def register(registry: Any) -> None:
    """Entry point of the group ``spa_recipes.plugins``: declare the ``length_guard`` pair selector.

    Args:
        registry: the ``spa_recipes.registry.Registry`` being built.
    """
    registry.register(
        "pair_selector",
        "length_guard",
        config=LengthGuardConfig,
        builder="spa_length_guard.selector:LengthGuardSelector",
        help="min_max, minus pairs whose chosen is > max_length_ratio x longer (words)",
    )
