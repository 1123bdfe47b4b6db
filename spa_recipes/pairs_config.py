"""The pair selectors: config and registration (torch-free; the selectors are in :mod:`spa_recipes.pairs`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from spa_recipes.api import ComponentConfig


class PairSelectorConfig(ComponentConfig):
    """How judged rows become pairs: ties, identical texts and truncated responses."""

    ties: Literal["keep", "drop"] = Field("keep", description="pairs whose scores are equal")
    drop_identical: bool = Field(True, description="drop pairs whose two responses are the same text")
    drop_truncated: bool = Field(
        False,
        description="leave out responses that did not end with EOS (cut at max_new_tokens) before choosing, as DICE "
        "does: a judge that rewards length otherwise learns to prefer responses that never finish",
    )


class DemonstrationSelectorConfig(ComponentConfig):
    """SPIN's pairs: chosen = the prompt's demonstration, rejected = the model's sample (scores unused)."""

    drop_identical: bool = Field(True, description="drop pairs whose sample is the demonstration's text")


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the built-in pair selectors."""
    registry.register(
        "pair_selector",
        "min_max",
        config=PairSelectorConfig,
        builder="spa_recipes.pairs:MinMaxSelector",
        help="chosen = highest score, rejected = lowest",
    )
    registry.register(
        "pair_selector",
        "max_random",
        config=PairSelectorConfig,
        builder="spa_recipes.pairs:MaxRandomSelector",
        help="chosen = highest score, rejected = a random other response",
    )
    registry.register(
        "pair_selector",
        "demonstration",
        config=DemonstrationSelectorConfig,
        builder="spa_recipes.pairs:DemonstrationSelector",
        help="SPIN: chosen = the prompt's demonstration, rejected = the model's sample (use judge: none)",
    )
