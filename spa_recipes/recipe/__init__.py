"""Loading a recipe: YAML layers and overrides (:mod:`.layers`), then validation (:mod:`.validation`) with
every problem at once, one line each (:mod:`.messages`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from spa_recipes.recipe.layers import Sources, apply_overrides, read_layer, resolve_interpolations
from spa_recipes.recipe.validation import ALLOW_IMPORT_ENV, launched_processes, validate
from spa_recipes.schema import ComponentSpec, Recipe

__all__ = ["ALLOW_IMPORT_ENV", "launched_processes", "load_recipe", "recipe_to_dict", "validate"]


def load_recipe(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    allow_import: Sequence[str] = (),
    num_processes: int | None = None,
) -> Recipe:
    """Load, merge, override, resolve and validate a recipe file.

    Args:
        path: the recipe YAML.
        overrides: ``key.sub=value`` or ``~key`` strings, applied last.
        allow_import: module prefixes whose ``module:Class`` paths a recipe may name as components.
        num_processes: the launch to check the batch layout for (default: this launch's ``WORLD_SIZE``).

    Raises:
        RecipeError: one line per problem, each naming the file, line or dotted key.
        PluginError: an installed plugin fails to import or register.
    """
    sources = Sources()
    cfg = read_layer(Path(path).resolve(), sources, ())
    cfg = apply_overrides(cfg, overrides, sources)
    data = resolve_interpolations(cfg)
    return validate(data, sources=sources, allow_import=allow_import, num_processes=num_processes)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe with every default, components expanded (what ``spa-recipe show`` prints)."""

    def expand(value: Any) -> Any:
        if isinstance(value, ComponentSpec):
            return {"name": value.name, **value.args.model_dump(by_alias=True, mode="json")}
        if isinstance(value, BaseModel):
            return {(f.alias or n): expand(getattr(value, n)) for n, f in type(value).model_fields.items()}
        if isinstance(value, list):
            return [expand(v) for v in value]
        return value

    return expand(recipe)
