"""The loggers: configs and registration (torch-free; the loggers are in :mod:`spa_recipes.loggers`).

Selecting a logger whose package is missing fails when the recipe is validated, not after a stage.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, model_validator

from spa_recipes.api import ComponentConfig


class JsonlLoggerConfig(ComponentConfig):
    """One line per finished stage (its summary) in <run_dir>/metrics.jsonl; always on."""


def _needs_package(package: str, logger: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"logger '{logger}' needs the {package} package: pip install 'spa-recipes[tracking]'")


class TensorBoardLoggerConfig(ComponentConfig):
    """TensorBoard event files: stage summaries per iteration and each training stage's per-step metrics."""

    log_dir: str | None = Field(None, description="folder for the event files; None: <run_dir>/tensorboard")
    log_steps: bool = Field(True, description="also write each training stage's per-step metrics")

    @model_validator(mode="after")
    def _installed(self) -> TensorBoardLoggerConfig:
        _needs_package("tensorboard", "tensorboard")
        return self


class WandbLoggerConfig(ComponentConfig):
    """Weights & Biases: stage summaries per iteration and each training stage's per-step metrics."""

    project: str = Field("spa-recipes", min_length=1, description="W&B project")
    entity: str | None = Field(None, description="W&B team or user; None: the account's default")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: files under <run_dir>/wandb, `wandb sync` them later"
    )
    name: str | None = Field(None, description="W&B run name; None: the run's name")
    tags: list[str] = Field(default_factory=list, description="W&B run tags")
    log_steps: bool = Field(True, description="also log each training stage's per-step metrics")

    @model_validator(mode="after")
    def _installed(self) -> WandbLoggerConfig:
        _needs_package("wandb", "wandb")
        return self


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the built-in loggers."""
    r = registry.register
    r(
        "logger",
        "jsonl",
        config=JsonlLoggerConfig,
        builder="spa_recipes.loggers:JsonlLogger",
        help="metrics.jsonl per stage",
    )
    r(
        "logger",
        "tensorboard",
        config=TensorBoardLoggerConfig,
        builder="spa_recipes.loggers:TensorBoardLogger",
        help="TensorBoard event files (optional extra: pip install spa-recipes[tracking])",
    )
    r(
        "logger",
        "wandb",
        config=WandbLoggerConfig,
        builder="spa_recipes.loggers:WandbLogger",
        help="Weights & Biases, offline by default (optional extra: pip install spa-recipes[tracking])",
    )
