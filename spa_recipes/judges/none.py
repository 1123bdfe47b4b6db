"""The ``none`` judge: no judgement at all, for pair selectors that do not read scores (SPIN's ``demonstration``).

It loads no model and takes no time: every response scores 0.0 and is valid, so the judge stage still writes
``scores.jsonl`` in the shape the pairs stage reads, with each row's other fields (its demonstration) kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa_recipes.api import EvaluatorContext, JudgeContext
from spa_recipes.judges.config import NoJudgeConfig

Row = dict[str, Any]


class NoJudge:
    """Scores every response 0.0, all valid (the judge contract, :class:`spa_recipes.judges.base.Judge`)."""

    def __init__(self, cfg: NoJudgeConfig, ctx: JudgeContext | EvaluatorContext = JudgeContext()) -> None:
        self.cfg = cfg

    def score(self, rows: list[Row], out_dir: Path | None = None) -> list[Row]:
        """The rows, in order, with ``"scores"`` (K zeros) and ``"valid"`` (K True) added; ``out_dir`` is unused."""
        return [{**row, "scores": [0.0] * len(r), "valid": [True] * len(r)} for row in rows for r in [row["responses"]]]
