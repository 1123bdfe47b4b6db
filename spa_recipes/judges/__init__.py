"""Judges: score sampled responses so that pairs can be selected (see :mod:`spa_recipes.judges.base`)."""

from spa_recipes.judges.base import Judge

__all__ = ["Judge"]
