"""judge: score every response with the recipe's judge (implicit: beta * log pi_{i-1}/pi_ref)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa_recipes.atomic import read_jsonl, write_jsonl_atomic
from spa_recipes.distributed import is_main_process
from spa_recipes.runner.graph import Stage, previous_model, sft_model


def run(ctx: Any, stage: Stage, out: Path) -> dict[str, Any]:
    recipe = ctx.recipe
    rows = read_jsonl(ctx.stage_dir(f"iter{stage.iteration}_generate") / "responses.jsonl")
    sft = sft_model(recipe)
    judge = ctx.build(
        recipe.judge,
        "judge",
        policy_path=ctx.model_path(stage.model),
        sft_path=ctx.model_path(sft),
        previous_path=ctx.model_path(previous_model(stage.iteration, sft, recipe)),
        dtype=recipe.models.dtype,
        max_prompt_length=recipe.training.iteration.max_prompt_length,
        max_length=recipe.training.iteration.max_length,
        world=ctx.source,
        shard_size=recipe.generation.args.shard_size,
        trained_path=ctx.model_path("judge_train") if "judge_train" in ctx.stages else None,
    )
    scored = judge.score(rows, out_dir=out / "shards")
    if is_main_process():  # every process has all rows; main alone writes them
        write_jsonl_atomic(out / "scores.jsonl", scored)
    valid = [v for row in scored for v in row["valid"]]
    gaps = [max(row["scores"]) - min(row["scores"]) for row in scored if all(row["valid"])]
    return {
        "responses": len(valid),
        "invalid": len(valid) - sum(valid),
        "mean_score_gap": sum(gaps) / max(len(gaps), 1),
        **getattr(judge, "stats", {}),  # e.g. order disagreement of pairwise judges, HTTP retries
    }
