"""spa-recipes plugin: the ``length_guard`` pair selector (min_max that refuses "longer wins" pairs).

Importing this package is cheap (pydantic only): ``spa-recipe validate`` imports it to read the config
model. The selector itself lives in :mod:`spa_length_guard.selector`, imported when a run builds it.
Everything it uses of spa-recipes is the public component API, :mod:`spa_recipes.api` (version 1).
"""

from __future__ import annotations

from typing import Any

from spa_length_guard.config import LengthGuardConfig
from spa_recipes.api import require_api

__all__ = ["LengthGuardConfig", "register"]

API_VERSION = "1"  # the spa_recipes.api version this plugin is written against


def register(registry: Any) -> None:
    """Entry point of the group ``spa_recipes.plugins``: declare the ``length_guard`` pair selector.

    Args:
        registry: the ``spa_recipes.registry.Registry`` being built.
    """
    require_api(API_VERSION, "spa-length-guard")
    registry.register(
        "pair_selector",
        "length_guard",
        config=LengthGuardConfig,
        builder="spa_length_guard.selector:LengthGuardSelector",
        help="min_max, minus pairs whose chosen is > max_length_ratio x longer (words)",
    )
