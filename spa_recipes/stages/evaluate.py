"""eval: a model's responses on the hold-out prompts, compared with the baseline's under the evaluator.

For an iteration it also measures the self-labels' agreement with the evaluator (gold, in the toy world):
the share of the iteration's pairs whose chosen response the evaluator prefers (ties count half), the share the
evaluator ties (both responses equally good to it: no label can be right or wrong there), and the agreement on
the others, the decisive pairs (where a judge at chance scores 50).
"""

from __future__ import annotations

from typing import Any

from spa_recipes.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic
from spa_recipes.distributed import is_main_process
from spa_recipes.evaluation import evaluate_pairs, judge_compare
from spa_recipes.runner.stage import StageContext, StageKind


def run(ctx: StageContext) -> dict[str, Any]:
    rows = respond(ctx)
    if not is_main_process():  # the other processes only help generate; main compares and writes
        return {}
    recipe = ctx.recipe
    baseline = read_jsonl(ctx.input("baseline"))
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
        model_finished=[f for row in rows for f in row["finished"]],
        baseline_finished=[f for row in baseline for f in row["finished"]],
        prompt_ids=[str(row["id"]) for row in rows for _ in range(k)],
    )
    stage = ctx.stage
    metrics.update(
        model=stage.input_name("policy"), iteration=stage.iteration, evaluator=recipe.evaluation.evaluator.name
    )
    if ctx.has_input("pairs"):
        pairs = read_jsonl(ctx.input("pairs"))
        outcomes = compare([p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs])
        metrics.update(agreement([o for o in outcomes if o is not None]))
    write_json_atomic(ctx.output("eval"), metrics)
    return {k: v for k, v in metrics.items() if k in {"win_rate", "lc_win_rate", "n", "agreement_with_gold"}}


def agreement(outcomes: list[float]) -> dict[str, Any]:
    """The evaluator's verdicts on self-labelled pairs (1: it prefers the chosen, 0.5: tie, 0: the rejected) as
    ``agreement_with_gold`` (ties half), ``gold_ties`` and ``agreement_decisive`` (on the pairs it does not tie),
    in percent (None where there is nothing to count), and ``pairs_judged``."""
    decisive = [o for o in outcomes if o != 0.5]
    return {
        "agreement_with_gold": _percent(sum(outcomes), len(outcomes)),
        "gold_ties": _percent(len(outcomes) - len(decisive), len(outcomes)),
        "agreement_decisive": _percent(sum(decisive), len(decisive)),
        "pairs_judged": len(outcomes),
    }


def _percent(part: float, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


# What generating the hold-out responses reads (eval_baseline reads the same).
RESPOND_READS = (
    "evaluation.samples_per_prompt",
    "evaluation.temperature",
    "evaluation.max_new_tokens",
    "generation",
    "models.dtype",
    "training.iteration.max_prompt_length",
    "run.seed",
)

KIND = StageKind(
    "eval",
    run,
    # policy: the model evaluated; baseline: eval_baseline's responses; pairs: the iteration's, for agreement.
    inputs=("prompts", "policy", "baseline", "pairs"),
    outputs={"responses": "responses.jsonl", "eval": "eval.json", "shards": "shards"},
    scratch=("shards",),
    reads=("evaluation", "generation", "models.dtype", "training.iteration.max_prompt_length", "run.seed", "data"),
    collective=True,
)


def respond(ctx: StageContext) -> list[dict[str, Any]]:
    """The ``policy`` input's responses to the hold-out prompts, with the evaluation's sampling settings."""
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
    # The same sampling seed for every model: differences come from the models, not the draws.
    rows = generator.generate(
        read_jsonl(ctx.input("prompts")),
        model_path=ctx.model("policy"),
        out_dir=ctx.output("shards"),
        seed=recipe.run.seed + 17,
        dtype=recipe.models.dtype,
        max_prompt_length=recipe.training.iteration.max_prompt_length,
    )
    if is_main_process():
        write_jsonl_atomic(ctx.output("responses"), rows)
    return rows
