"""report: results.json, report.md and plots/*.png, by the same code as ``spa-recipe report``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa_recipes.reporting import build_report
from spa_recipes.runner.graph import Stage


def run(ctx: Any, stage: Stage, out: Path) -> dict[str, Any]:
    report = build_report(ctx.run_dir, list(ctx.stages))
    results = report.runs[0].results
    last = results["models"][-1] if results["models"] else {}
    return {"models": len(results["models"]), "final_win_rate": last.get("win_rate"), "plots": len(report.plots)}
