"""The contract every judge meets: score each of the K responses of a generated row.

A judge receives generated rows ``{"id", "prompt", "responses": [K str], ...}`` and returns the same
rows with two more fields, in the same order:

- ``"scores"``: K floats, higher is better; only differences within a row are compared.
- ``"valid"``: K bools; ``False`` where the judge could not judge that response (a parse failure, a
  non-finite score). An invalid judgement is never turned into a preference: pair selection leaves the
  response out and counts it.

Judges may add fields of their own (the implicit judge adds ``"policy_logps"``).

Judges that keep their work in shards (:func:`judge_in_shards`) are data-parallel for free in a
multi-process run: each process judges its share of the shards and every process gets all rows back.
"""

from __future__ import annotations

from collections.abc import Callable
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


def judge_in_shards(
    rows: list[Row],
    judge_rows: Callable[[list[Row]], list[Row]],
    out_dir: Path | None,
    shard_size: int,
    desc: str,
) -> list[Row]:
    """Run a judge over rows, shard by shard and resumable when ``out_dir`` is given.

    Args:
        rows: generated rows (``"id"``, ``"prompt"``, ``"responses"``).
        judge_rows: maps a chunk of rows to one dict per row holding only the fields the judge adds
            (``"scores"``, ``"valid"``, ...).
        out_dir: folder of the shard files; ``None`` judges everything at once and keeps nothing on disk.
        shard_size: rows per shard (must stay the same across restarts of one ``out_dir``).
        desc: label of the progress bar.

    Returns:
        The input rows, in order, each merged with the fields its judgement added.

    Raises:
        ValueError: the shards on disk are for other rows (their ids differ).
    """
    from spa_recipes.generation.shards import run_sharded

    def shard(_: int, chunk: list[Row]) -> list[Row]:
        # Shards keep the id and the judgement only; the rows themselves are the caller's.
        return [{"id": row["id"], **added} for row, added in zip(chunk, judge_rows(chunk), strict=True)]

    judged = shard(0, rows) if out_dir is None else run_sharded(rows, shard_size, out_dir, shard, desc=desc)
    out = []
    for row, added in zip(rows, judged, strict=True):
        if added["id"] != row["id"]:
            raise ValueError(f"{out_dir}: judged shards are for other rows (row {row['id']!r}); remove the folder")
        out.append({**row, **added})
    return out
