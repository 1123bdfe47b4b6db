"""The contract every judge meets: score each of the K responses of a generated row.

A judge receives generated rows ``{"id", "prompt", "responses": [K str], ...}`` and returns the same
rows with two more fields, in the same order:

- ``"scores"``: K floats, higher is better; only differences within a row are compared.
- ``"valid"``: K bools; ``False`` where the judge could not judge that response (a parse failure, a
  non-finite score). An invalid judgement is never turned into a preference: pair selection leaves the
  response out and counts it.

Judges may add fields of their own (the implicit judge adds ``"policy_logps"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Row = dict[str, Any]


@runtime_checkable
class Judge(Protocol):
    """Anything with a ``score`` method of this shape is a judge."""

    def score(self, rows: list[Row], out_dir: Path | None = None) -> list[Row]:
        """Score every response of every row.

        Args:
            rows: generated rows (``"id"``, ``"prompt"``, ``"responses"``).
            out_dir: where to keep resumable shards of the work; ``None`` keeps nothing on disk.

        Returns:
            The rows, in order, each with ``"scores"`` and ``"valid"`` (K entries each) added.
        """
        ...
