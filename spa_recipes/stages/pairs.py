"""pairs: turn judged responses into preference pairs (chosen, rejected) with the recipe's selector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa_recipes.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic
from spa_recipes.runner.graph import Stage


def run(ctx: Any, stage: Stage, out: Path) -> dict[str, Any]:
    rows = read_jsonl(ctx.stage_dir(f"iter{stage.iteration}_judge") / "scores.jsonl")
    selector = ctx.build(ctx.recipe.pair_selector, "pair_selector")
    pairs, counts = selector.select(rows, seed=ctx.seed_for(stage))
    write_jsonl_atomic(out / "pairs.jsonl", pairs)
    write_json_atomic(out / "counts.json", counts)
    if not pairs:
        from spa_recipes.errors import DataError

        raise DataError(f"{stage.name}: no pairs left after selection ({counts}); check pair_selector settings")
    return dict(counts)
