"""report: results.json and report.md from the evaluation and pair stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spa_recipes.atomic import write_json_atomic, write_text_atomic
from spa_recipes.runner.graph import Stage


def run(ctx: Any, stage: Stage, out: Path) -> dict[str, Any]:
    results = collect_results(ctx)
    write_json_atomic(ctx.run_dir / "results.json", results)
    write_text_atomic(ctx.run_dir / "report.md", render_markdown(ctx.recipe.run.name, results))
    last = results["models"][-1] if results["models"] else {}
    return {"models": len(results["models"]), "final_win_rate": last.get("win_rate")}


def collect_results(ctx: Any) -> dict[str, Any]:
    """Per evaluated model: win rates against the baseline; per iteration: pairs and agreement with gold."""
    models, iterations = [], []
    for name, stage in ctx.stages.items():
        path = ctx.stage_dir(name)
        if stage.kind == "eval":
            m = json.loads((path / "eval.json").read_text())
            models.append({
                "model": m["model"], "iteration": m["iteration"], "evaluator": m["evaluator"],
                "win_rate": m["win_rate"], "win_rate_se": m["win_rate_se"], "lc_win_rate": m["lc_win_rate"],
                "n": m["n"], "mean_words": m["mean_words_model"], "baseline_mean_words": m["mean_words_baseline"],
            })
            if m["iteration"] > 0:
                iterations.append({"iteration": m["iteration"], "agreement_with_gold": m.get("agreement_with_gold")})
        elif stage.kind == "pairs":
            counts = json.loads((path / "counts.json").read_text())
            iterations.append({"iteration": stage.iteration, "pairs": counts})
    merged: dict[int, dict[str, Any]] = {}
    for row in iterations:
        merged.setdefault(row["iteration"], {}).update(row)
    return {"run": ctx.recipe.run.name, "baseline": ctx.recipe.evaluation.baseline, "models": models,
            "iterations": [merged[i] for i in sorted(merged)]}


def render_markdown(name: str, results: dict[str, Any]) -> str:
    lines = [f"# {name}", "", f"Win rate against the {results['baseline']} model (ties count half).", "",
             "| model | iteration | win rate | LC win rate | n | mean words |", "|---|---|---|---|---|---|"]
    for m in results["models"]:
        lines.append(f"| {m['model']} | {m['iteration']} | {m['win_rate']:.1f} ± {m['win_rate_se']:.1f} | "
                     f"{m['lc_win_rate']:.1f} | {m['n']} | {m['mean_words']:.1f} |")
    lines += ["", "| iteration | pairs | agreement with gold |", "|---|---|---|"]
    for it in results["iterations"]:
        agreement = it.get("agreement_with_gold")
        shown = f"{agreement:.1f}" if agreement is not None else "-"
        lines.append(f"| {it['iteration']} | {it.get('pairs', {}).get('pairs', '-')} | {shown} |")
    return "\n".join(lines) + "\n"
