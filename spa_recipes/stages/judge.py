"""judge: score every response with the recipe's judge (implicit: beta * log pi_{i-1}/pi_ref)."""

from __future__ import annotations

from typing import Any

from spa_recipes.api import STATS, offers
from spa_recipes.atomic import read_jsonl, write_jsonl_atomic
from spa_recipes.distributed import is_main_process
from spa_recipes.runner.stage import StageContext, StageKind


def run(ctx: StageContext) -> dict[str, Any]:
    recipe = ctx.recipe
    judge = ctx.build(
        recipe.judge,
        "judge",
        policy_path=ctx.model("policy"),
        sft_path=ctx.model("sft"),
        previous_path=ctx.model("previous"),
        dtype=recipe.models.dtype,
        max_prompt_length=recipe.training.iteration.max_prompt_length,
        max_length=recipe.training.iteration.max_length,
        world=ctx.source,
        shard_size=recipe.generation.args.shard_size,
        trained_path=ctx.model("trained_judge") if ctx.has_input("trained_judge") else None,
    )
    scored = judge.score(read_jsonl(ctx.input("responses")), out_dir=ctx.output("shards"))
    if is_main_process():  # every process has all rows; main alone writes them
        write_jsonl_atomic(ctx.output("scores"), scored)
    valid = [v for row in scored for v in row["valid"]]
    gaps = [max(row["scores"]) - min(row["scores"]) for row in scored if all(row["valid"])]
    return {
        "responses": len(valid),
        "invalid": len(valid) - sum(valid),
        "mean_score_gap": sum(gaps) / max(len(gaps), 1),
        **(judge.stats if offers(recipe.judge.args, STATS) else {}),  # e.g. pairwise order disagreement, HTTP retries
    }


KIND = StageKind(
    "judge",
    run,
    # policy: pi_{i-1}; sft: pi_init; previous: the model before pi_{i-1}; trained_judge: judge_train's model.
    inputs=("responses", "policy", "sft", "previous", "trained_judge"),
    outputs={"scores": "scores.jsonl", "shards": "shards"},
    scratch=("shards",),
    reads=(
        "judge",
        "data",  # the world, for judges that consult it (gold)
        "models.dtype",
        "training.iteration.max_prompt_length",
        "training.iteration.max_length",
        "generation.shard_size",
    ),
    collective=True,
)
