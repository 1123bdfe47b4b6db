"""generate: K responses per prompt of the iteration's prompt set, from pi_{i-1}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa_recipes.atomic import read_jsonl, write_jsonl_atomic
from spa_recipes.distributed import is_main_process
from spa_recipes.runner.graph import Stage


def run(ctx: Any, stage: Stage, out: Path) -> dict[str, Any]:
    recipe = ctx.recipe
    prompts = read_jsonl(ctx.stage_dir("split") / f"prompts_{stage.iteration}.jsonl")
    generator = ctx.build(recipe.generation, "generator")
    rows = generator.generate(
        prompts,
        model_path=ctx.model_path(stage.model),
        out_dir=out / "shards",
        seed=ctx.seed_for(stage),
        dtype=recipe.models.dtype,
        max_prompt_length=recipe.training.iteration.max_prompt_length,
    )
    if is_main_process():  # every process has all rows; main alone writes them
        write_jsonl_atomic(out / "responses.jsonl", rows)
    return response_stats(rows)


def response_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, EOS rate and mean length (tokens, words) of generated rows."""
    responses = [r for row in rows for r in row["responses"]]
    finished = [f for row in rows for f in row["finished"]]
    tokens = [n for row in rows for n in row["num_tokens"]]
    n = max(len(responses), 1)
    return {
        "prompts": len(rows),
        "responses": len(responses),
        "eos_rate": sum(finished) / n,
        "mean_tokens": sum(tokens) / n,
        "mean_words": sum(len(r.split()) for r in responses) / n,
    }
