"""The data mixers: configs and registration (the mixers are in :mod:`spa_recipes.mixers`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from spa_recipes.api import ComponentConfig


class NoMixerConfig(ComponentConfig):
    """Each iteration trains on its own pairs only."""


class ReplayConfig(ComponentConfig):
    """Experience replay: a share of each iteration's training pairs comes from a pool of earlier pairs (DICE)."""

    fraction: float = Field(
        0.5, gt=0.0, lt=1.0, description="gamma: the share of an iteration's training pairs that are replayed"
    )
    source: Literal["seed", "previous_iteration"] = Field(
        "seed",
        description="the pool: the human-labelled seed pairs (DICE), or the previous iteration's self-labelled pairs "
        "(iteration 1 then replays nothing)",
    )
    cap_generated: bool = Field(
        True,
        description="DICE's rule: keep at most |pool| x (1 - fraction) of the iteration's own pairs (a seeded "
        "draw), so that the replayed share never needs more pairs than the pool has; false: keep them all and "
        "replay as many as the pool allows",
    )


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the built-in data mixers."""
    r = registry.register
    r(
        "data_mixer",
        "none",
        config=NoMixerConfig,
        builder="spa_recipes.mixers:NoMixer",
        help="each iteration trains on its own pairs",
    )
    r(
        "data_mixer",
        "replay",
        config=ReplayConfig,
        builder="spa_recipes.mixers:Replay",
        help="replay a fraction of seed pairs (DICE) or of the previous iteration's pairs",
    )
