"""Errors that are the user's to fix. The CLI prints them one line per problem and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in a recipe, an override, a file or an installed plugin (exit code 2).

    Args:
        problems: one line each; every line names its culprit (file, dotted key, row id).
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class RecipeError(UserError):
    """A recipe that does not load or does not validate."""


class PluginError(UserError):
    """A plugin that fails to import or to register, or a component that cannot be built."""


class DataError(UserError):
    """Input data that cannot be used (a missing file, a malformed row)."""


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss or gradient under ``nonfinite: fail``, a mismatched checkpoint)."""
