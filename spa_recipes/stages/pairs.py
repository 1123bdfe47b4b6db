"""pairs: turn judged responses into preference pairs (chosen, rejected) with the recipe's selector.

The recipe's score transform acts first (e.g. DICE's length regularisation); it may tune itself on the
selector's outcome, so it is given the selection as a function.
"""

from __future__ import annotations

from typing import Any

from spa_recipes.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic
from spa_recipes.errors import DataError
from spa_recipes.runner.stage import StageContext, StageKind


def run(ctx: StageContext) -> dict[str, Any]:
    selector = ctx.build(ctx.recipe.pair_selector, "pair_selector")
    transform = ctx.build(ctx.recipe.score_transform, "score_transform")

    def select(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return selector.select(rows, seed=ctx.seed)[0]

    rows, transformed = transform.transform(read_jsonl(ctx.input("scores")), select)
    pairs, counts = selector.select(rows, seed=ctx.seed)
    write_jsonl_atomic(ctx.output("pairs"), pairs)
    summary = {**counts, **{f"score_transform_{k}": v for k, v in transformed.items()}}
    write_json_atomic(ctx.output("counts"), summary)
    if not pairs:
        raise DataError(f"{ctx.stage.name}: no pairs left after selection ({counts}); check pair_selector settings")
    return summary


KIND = StageKind(
    "pairs",
    run,
    inputs=("scores",),
    outputs={"pairs": "pairs.jsonl", "counts": "counts.json"},
    reads=("score_transform", "pair_selector", "run.seed"),
)
