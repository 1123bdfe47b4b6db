"""eval_baseline / eval: responses on the hold-out prompts, compared with the baseline's under the evaluator.

For an iteration it also measures the self-labels' agreement with the evaluator (gold, in the toy world):
the share of the iteration's pairs whose chosen response the evaluator prefers (ties count half).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa_recipes.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic
from spa_recipes.distributed import is_main_process
from spa_recipes.evaluation import evaluate_pairs, judge_compare
from spa_recipes.runner.graph import Stage
from spa_recipes.stages.generate import response_stats


def run(ctx: Any, stage: Stage, out: Path) -> dict[str, Any]:
    rows = _generate(ctx, stage, out)
    if not is_main_process():  # the other processes only help generate; main compares and writes
        return {}
    if stage.kind == "eval_baseline":
        return response_stats(rows)
    recipe = ctx.recipe
    baseline = read_jsonl(ctx.stage_dir("eval_baseline") / "responses.jsonl")
    evaluator = ctx.build(recipe.evaluation.evaluator, "evaluator", world=ctx.source, dtype=recipe.models.dtype)
    compare = judge_compare(evaluator)
    k = recipe.evaluation.samples_per_prompt
    prompts = [row["prompt"] for row in rows for _ in range(k)]
    metrics = evaluate_pairs(
        prompts,
        [r for row in rows for r in row["responses"]],
        [r for row in baseline for r in row["responses"]],
        compare,
        model_num_tokens=[n for row in rows for n in row["num_tokens"]],
        baseline_num_tokens=[n for row in baseline for n in row["num_tokens"]],
    )
    metrics.update(model=stage.model, iteration=stage.iteration, evaluator=recipe.evaluation.evaluator.name)
    if stage.iteration > 0:
        pairs = read_jsonl(ctx.stage_dir(f"iter{stage.iteration}_pairs") / "pairs.jsonl")
        outcomes = compare([p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs])
        judged = [o for o in outcomes if o is not None]
        metrics["agreement_with_gold"] = 100.0 * sum(judged) / len(judged) if judged else None
        metrics["pairs_judged"] = len(judged)
    write_json_atomic(out / "eval.json", metrics)
    return {k: v for k, v in metrics.items() if k in {"win_rate", "lc_win_rate", "n", "agreement_with_gold"}}


def _generate(ctx: Any, stage: Stage, out: Path) -> list[dict[str, Any]]:
    """The model's responses to the hold-out prompts, with the evaluation's sampling settings."""
    recipe = ctx.recipe
    evaluation = recipe.evaluation
    settings = recipe.generation.args.model_copy(
        update={
            "samples_per_prompt": evaluation.samples_per_prompt,
            "temperature": evaluation.temperature,
            "max_new_tokens": evaluation.max_new_tokens or recipe.generation.args.max_new_tokens,
        }
    )
    generator = ctx.build(recipe.generation, "generator", args=settings)
    prompts = read_jsonl(ctx.stage_dir("split") / "eval.jsonl")
    # The same sampling seed for every model: differences come from the models, not the draws.
    rows = generator.generate(
        prompts,
        model_path=ctx.model_path(stage.model),
        out_dir=out / "shards",
        seed=recipe.run.seed + 17,
        dtype=recipe.models.dtype,
        max_prompt_length=recipe.training.iteration.max_prompt_length,
    )
    if is_main_process():
        write_jsonl_atomic(out / "responses.jsonl", rows)
    return rows
