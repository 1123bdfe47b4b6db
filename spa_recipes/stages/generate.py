"""generate: K responses per prompt of the iteration's prompt set, from pi_{i-1}."""

from __future__ import annotations

from typing import Any

from spa_recipes.atomic import read_jsonl, write_jsonl_atomic
from spa_recipes.distributed import is_main_process
from spa_recipes.errors import DataError
from spa_recipes.runner.stage import StageContext, StageKind


def run(ctx: StageContext) -> dict[str, Any]:
    recipe = ctx.recipe
    generator = ctx.build(recipe.generation, "generator")
    prompts = read_jsonl(ctx.input("prompts"))
    rows = generator.generate(
        prompts,
        model_path=ctx.model("policy"),
        out_dir=ctx.output("shards"),
        seed=ctx.seed,
        dtype=recipe.models.dtype,
        max_prompt_length=recipe.training.iteration.max_prompt_length,
    )
    rows = with_prompt_fields(prompts, rows)
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


def with_prompt_fields(prompts: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generated rows with the other fields of their prompt rows (a ``demonstration``) put back.

    Generators return ``{"id", "prompt", "responses", ...}``; a prompt row's other fields belong to the
    stages after (the judges keep a row's fields, and SPIN's selector reads the demonstration). Done here,
    not in each generator, so that every generator (plugins too) and shards from before keep them.

    Raises:
        DataError: the generator returned other rows than it was given (count or ids).
    """
    if len(rows) != len(prompts) or any(p["id"] != r["id"] for p, r in zip(prompts, rows, strict=True)):
        raise DataError(f"generate: the generator's {len(rows)} rows are not its {len(prompts)} prompts, in order")
    return [{**prompt, **row} for prompt, row in zip(prompts, rows, strict=True)]


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
