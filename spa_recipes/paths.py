"""Where the shipped recipes live."""

from __future__ import annotations

import difflib
from pathlib import Path

from spa_recipes.errors import UserError

# The project's recipes/: in a checkout spa_recipes/recipes links to it, and a wheel carries a copy there.
SHIPPED_RECIPES = (Path(__file__).parent / "recipes").resolve()


def shipped_recipes() -> list[Path]:
    """Every shipped recipe file, sorted."""
    return sorted(SHIPPED_RECIPES.rglob("*.yaml")) if SHIPPED_RECIPES.is_dir() else []


def find_shipped_recipe(name: str) -> Path:
    """A shipped recipe by its relative path, with or without ``.yaml``.

    Raises:
        UserError: no such shipped recipe.
    """
    candidate = SHIPPED_RECIPES / (name if name.endswith(".yaml") else f"{name}.yaml")
    if candidate.is_file():
        return candidate
    names = [str(p.relative_to(SHIPPED_RECIPES)) for p in shipped_recipes()]
    close = difflib.get_close_matches(name, [n.removesuffix(".yaml") for n in names], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"no shipped recipe '{name}'{hint}; shipped: {', '.join(names)}")
