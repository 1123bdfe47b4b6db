"""report: results.json, report.md and plots/*.png, by the same code as ``spa-recipe report``."""

from __future__ import annotations

from typing import Any

from spa_recipes.reporting import build_report
from spa_recipes.runner.stage import StageContext, StageKind


def run(ctx: StageContext) -> dict[str, Any]:
    report = build_report(ctx.run_dir, list(ctx.graph))
    results = report.runs[0].results
    last = results["models"][-1] if results["models"] else {}
    return {
        "models": len(results["models"]),
        "final_win_rate": last.get("win_rate"),
        "plots": len(report.plots),
        "length_warnings": len(report.warnings),  # shown with the stage's line; the warnings are in report.md
    }


# Its inputs are every stage before it (wired by the graph); it reads the run's recipe.yaml for its title.
KIND = StageKind("report", run, reads=("run.name", "evaluation.baseline"))
