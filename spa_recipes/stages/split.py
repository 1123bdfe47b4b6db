"""split: one seeded shuffle into a labelled seed set, disjoint prompt-only sets per iteration, an eval hold-out.

The only stage besides evaluation that reads preference labels, and it keeps them for the seed set only.
"""

from __future__ import annotations

import random
from typing import Any

from spa_recipes.atomic import write_json_atomic, write_jsonl_atomic
from spa_recipes.data.cleaning import check_mostly_usable, clean_rows
from spa_recipes.errors import DataError
from spa_recipes.runner.stage import StageContext, StageKind


def run(ctx: StageContext) -> dict[str, Any]:
    recipe = ctx.recipe
    limit = recipe.training.iteration.max_prompt_length if recipe.split.long_prompts == "skip" else None
    cleaned = clean_rows(ctx.source.rows(), _prompt_tokens(ctx) if limit else None, limit)
    check_mostly_usable(cleaned, f"data '{recipe.data.name}'")
    rows, skipped = cleaned.rows, cleaned.skipped
    random.Random(recipe.run.seed).shuffle(rows)
    n = len(rows)
    t = recipe.iterations
    n_seed = _count(recipe.split.seed_size, n)
    per_iteration = recipe.split.prompts_per_iteration
    n_iter = [_count(per_iteration[i] if isinstance(per_iteration, list) else per_iteration, n) for i in range(t)]
    n_eval = _count(recipe.split.eval_holdout, n)
    needed = n_seed + sum(n_iter) + n_eval
    if needed > n:
        raise DataError(
            f"split: needs {needed} rows (seed {n_seed} + prompts {n_iter} + eval {n_eval}) but data "
            f"'{recipe.data.name}' has {n} usable rows ({sum(skipped.values())} skipped)"
        )
    seed_rows = rows[:n_seed]
    start = n_seed
    prompt_sets = []
    for size in n_iter:
        prompt_sets.append([_prompt_row(r) for r in rows[start : start + size]])
        start += size
    eval_rows = [{"id": r["id"], "prompt": r["prompt"]} for r in rows[n - n_eval :]] if n_eval else []

    ids = [r["id"] for r in seed_rows] + [r["id"] for s in prompt_sets for r in s] + [r["id"] for r in eval_rows]
    disjoint = len(ids) == len(set(ids)) and len({repr(r["prompt"]) for r in rows[:needed]}) == needed
    if not disjoint:
        raise DataError("split: seed, iteration and eval sets overlap")  # a bug if ever seen: rows are deduplicated
    write_jsonl_atomic(
        ctx.output("seed"),
        [{"id": r["id"], "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in seed_rows],
    )
    for i, prompts in enumerate(prompt_sets, start=1):
        write_jsonl_atomic(ctx.output("prompts", i), prompts)
    write_jsonl_atomic(ctx.output("eval"), eval_rows)
    stats = {
        "rows": n + sum(skipped.values()),
        "usable": n,
        "skipped": dict(skipped),
        "skipped_first_ids": cleaned.examples,
        "seed": n_seed,
        "prompts_per_iteration": n_iter,
        "eval": n_eval,
        "unused": n - needed,
        "disjoint": disjoint,
    }
    write_json_atomic(ctx.output("stats"), stats)
    summary = {"seed_pairs": n_seed, "prompts": sum(n_iter), "eval_prompts": n_eval, "skipped": sum(skipped.values())}
    return {**summary, "skipped_reasons": cleaned.describe()} if skipped else summary


KIND = StageKind(
    "split",
    run,
    outputs={"seed": "seed.jsonl", "prompts": "prompts_{index}.jsonl", "eval": "eval.jsonl", "stats": "stats.json"},
    # models.sft and the prompt limit: prompts longer than the policy's max_prompt_length tokens are skipped.
    reads=("data", "split", "iterations", "run.seed", "models.sft", "training.iteration.max_prompt_length"),
)


def _prompt_row(row: dict[str, Any]) -> dict[str, Any]:
    """An iteration prompt: id and prompt, and the source's ``demonstration`` when it has one (SPIN pairs it)."""
    kept = {"id": row["id"], "prompt": row["prompt"]}
    if isinstance(row.get("demonstration"), str):
        kept["demonstration"] = row["demonstration"]
    return kept


def _count(value: int | float, n: int) -> int:
    """A count as given (>= 1), or a fraction of ``n`` rows (< 1), rounded down."""
    return int(value) if value >= 1 else int(value * n)


def _prompt_tokens(ctx: StageContext) -> Any:
    """A prompt's length in pi_init's tokens, as generation and training encode it (chat template, BOS)."""
    from spa_recipes.modeling import load_tokenizer
    from spa_recipes.sequences import encode_prompt

    sft = ctx.recipe.models.sft
    tokenizer = load_tokenizer(sft) if sft is not None else ctx.source.tokenizer()  # no models.sft: the sft stage's
    return lambda messages: len(encode_prompt(tokenizer, messages))
