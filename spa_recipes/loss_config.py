"""The preference loss: config and registration (torch-free; the loss is in :mod:`spa_recipes.loss`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from spa_recipes.api import ComponentConfig


class DPOLossConfig(ComponentConfig):
    """Sigmoid DPO with per-pair label smoothing."""

    beta: float = Field(0.1, gt=0.0, description="DPO temperature")


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the built-in loss."""
    registry.register("loss", "dpo", config=DPOLossConfig, builder="spa_recipes.loss:DPOLoss", help="sigmoid DPO")
