"""mix: an iteration's training pairs, its own self-labelled pairs plus pairs replayed from a pool (data_mixer).

Placed only when the recipe has a data mixer; the pool is the labelled seed set or the previous iteration's pairs
(``data_mixer.source``), wired by the graph.
"""

from __future__ import annotations

from typing import Any

from spa_recipes.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic
from spa_recipes.runner.stage import StageContext, StageKind


def run(ctx: StageContext) -> dict[str, Any]:
    mixer = ctx.build(ctx.recipe.data_mixer, "data_mixer")
    pool = read_jsonl(ctx.input("pool")) if ctx.has_input("pool") else []
    pairs, counts = mixer.mix(read_jsonl(ctx.input("pairs")), pool, seed=ctx.seed, iteration=ctx.stage.iteration)
    write_jsonl_atomic(ctx.output("pairs"), pairs)
    write_json_atomic(ctx.output("counts"), counts)
    return {"pairs": len(pairs), **counts}


KIND = StageKind(
    "mix",
    run,
    # pairs: the iteration's own; pool: what may be replayed (seed pairs, or the previous iteration's pairs).
    inputs=("pairs", "pool"),
    outputs={"pairs": "pairs.jsonl", "counts": "counts.json"},
    reads=("data_mixer", "run.seed"),
)
