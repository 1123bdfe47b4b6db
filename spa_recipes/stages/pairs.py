"""pairs: turn judged responses into preference pairs (chosen, rejected) with the recipe's selector."""

from __future__ import annotations

from typing import Any

from spa_recipes.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic
from spa_recipes.errors import DataError
from spa_recipes.runner.stage import StageContext, StageKind


def run(ctx: StageContext) -> dict[str, Any]:
    selector = ctx.build(ctx.recipe.pair_selector, "pair_selector")
    pairs, counts = selector.select(read_jsonl(ctx.input("scores")), seed=ctx.seed)
    write_jsonl_atomic(ctx.output("pairs"), pairs)
    write_json_atomic(ctx.output("counts"), counts)
    if not pairs:
        raise DataError(f"{ctx.stage.name}: no pairs left after selection ({counts}); check pair_selector settings")
    return dict(counts)


KIND = StageKind(
    "pairs",
    run,
    inputs=("scores",),
    outputs={"pairs": "pairs.jsonl", "counts": "counts.json"},
    reads=("pair_selector", "run.seed"),
)
