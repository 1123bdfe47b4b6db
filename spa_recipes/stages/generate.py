"""generate: K responses per prompt of the iteration's prompt set, from pi_{i-1}."""

from __future__ import annotations

from typing import Any

from spa_recipes.atomic import read_jsonl, write_jsonl_atomic
from spa_recipes.distributed import is_main_process
from spa_recipes.runner.stage import StageContext, StageKind


def run(ctx: StageContext) -> dict[str, Any]:
    recipe = ctx.recipe
    generator = ctx.build(recipe.generation, "generator")
    rows = generator.generate(
        read_jsonl(ctx.input("prompts")),
        model_path=ctx.model("policy"),
        out_dir=ctx.output("shards"),
        seed=ctx.seed,
        dtype=recipe.models.dtype,
        max_prompt_length=recipe.training.iteration.max_prompt_length,
    )
    if is_main_process():  # every process has all rows; main alone writes them
        write_jsonl_atomic(ctx.output("responses"), rows)
    return response_stats(rows)


KIND = StageKind(
    "generate",
    run,
    inputs=("prompts", "policy"),
    outputs={"responses": "responses.jsonl", "shards": "shards"},
    scratch=("shards",),
    reads=("generation", "models.dtype", "training.iteration.max_prompt_length", "run.seed"),
    collective=True,
)


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
