"""Loggers: where a run's per-stage summaries go. JSONL is always on; others are selected by recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spa_recipes.builtins import JsonlLoggerConfig


class JsonlLogger:
    """Appends one JSON line per finished stage to ``<run_dir>/metrics.jsonl``."""

    def __init__(self, cfg: JsonlLoggerConfig, *, run_dir: Path, **_: Any) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"

    def log_stage(self, stage: str, seconds: float, summary: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, "seconds": seconds, **summary}, sort_keys=True, default=str) + "\n")

    def close(self) -> None:
        pass
