"""Where the shipped recipes live."""

from __future__ import annotations

from pathlib import Path

from spa_recipes.errors import UserError

# The project's recipes/ folder, beside the package (a source checkout or an editable install).
SHIPPED_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


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
    names = ", ".join(str(p.relative_to(SHIPPED_RECIPES)) for p in shipped_recipes())
    raise UserError(f"no shipped recipe '{name}'; shipped: {names}")
