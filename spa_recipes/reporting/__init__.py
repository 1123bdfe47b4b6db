"""Reports of runs: ``report.md`` with tables and PNG plots, for one run or several side by side.

Used by the runner's report stage (every finished run has its report) and by ``spa-recipe report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spa_recipes.atomic import write_json_atomic, write_text_atomic
from spa_recipes.errors import UserError
from spa_recipes.reporting.collect import RunData, collect_run
from spa_recipes.reporting.length_hacking import TRUNCATED_SHARE_LIMIT, WORDS_GROWTH_LIMIT, length_warnings
from spa_recipes.reporting.markdown import render_comparison, render_run
from spa_recipes.reporting.plots import plot_compare, plot_run

__all__ = [
    "TRUNCATED_SHARE_LIMIT",
    "WORDS_GROWTH_LIMIT",
    "Report",
    "RunData",
    "build_report",
    "collect_run",
    "compare_runs",
    "length_warnings",
]


@dataclass
class Report:
    """What a report wrote: its markdown file, its plots (name -> PNG), the tables it was made from, and its
    warnings about length hacking (also in the markdown; the CLI prints them)."""

    markdown: Path
    plots: dict[str, Path]
    runs: list[RunData]
    warnings: list[str] = field(default_factory=list)


def build_report(run_dir: Path | str, stage_names: list[str] | None = None, *, plots: bool = True) -> Report:
    """Write ``results.json``, ``report.md`` and ``plots/*.png`` into a run directory.

    Args:
        run_dir: the run directory.
        stage_names: the run's stages in execution order (the runner passes its graph's); None: from its recipe.yaml.
        plots: draw the PNG plots (matplotlib); False writes the tables only.

    Returns:
        The files written.

    Raises:
        UserError: ``run_dir`` is not a run directory.
    """
    data = collect_run(run_dir, stage_names)
    drawn = plot_run(data, data.run_dir / "plots") if plots else {}
    write_json_atomic(data.run_dir / "results.json", data.results)
    markdown = data.run_dir / "report.md"
    write_text_atomic(markdown, render_run(data, drawn))
    return Report(markdown, drawn, [data], length_warnings(data))


def compare_runs(run_dirs: list[Path | str], out_dir: Path | str) -> Report:
    """Several runs side by side: ``out_dir/report.md`` (comparison tables) and ``out_dir/plots/*.png`` (overlaid).

    Args:
        run_dirs: run directories, in the order to show them (at least one).
        out_dir: folder for the comparison (created).

    Returns:
        The files written.

    Raises:
        UserError: no run given, or one is not a run directory.
    """
    if not run_dirs:
        raise UserError("--compare needs at least one run directory")
    runs = [collect_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labelled = list(zip(run_labels(runs), runs, strict=True))
    drawn = plot_compare(labelled, out_dir / "plots")
    markdown = out_dir / "report.md"
    write_text_atomic(markdown, render_comparison(labelled, drawn, out_dir))
    warnings = [f"{label}: {warning}" for label, data in labelled for warning in length_warnings(data)]
    return Report(markdown, drawn, runs, warnings)


def run_labels(runs: list[RunData]) -> list[str]:
    """Each run's name; the folder's path instead where names repeat (the same recipe run with overrides)."""
    names = [r.name for r in runs]
    labels = [r.name if names.count(r.name) == 1 else str(r.run_dir) for r in runs]
    # Identical paths as well (the same run given twice): number them.
    return [label if labels.count(label) == 1 else f"{label} #{k + 1}" for k, label in enumerate(labels)]
