"""Finding a data file a recipe names (light: imported by ``spa_recipes.data.config`` at validation time)."""

from __future__ import annotations

from pathlib import Path

from spa_recipes.paths import SHIPPED_RECIPES


def find_data_file(path: str) -> Path | None:
    """The file a recipe's ``path`` names, or None when there is none.

    A relative path is looked up from the working directory first, then under the shipped ``recipes/``
    folder, so that a shipped recipe's data (``data/...``) is found from any working directory.
    """
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [given, SHIPPED_RECIPES / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    return None


def not_found_message(path: str) -> str:
    """One line naming a missing data file and where it was looked for."""
    if Path(path).expanduser().is_absolute():
        return f"file not found: {path}"
    return f"file not found: {path} (looked in {Path.cwd()} and {SHIPPED_RECIPES})"
