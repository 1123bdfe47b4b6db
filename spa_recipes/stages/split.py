"""split: one seeded shuffle into a labelled seed set, disjoint prompt-only sets per iteration, an eval hold-out.

The only stage besides evaluation that reads preference labels, and it keeps them for the seed set only.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from spa_recipes.atomic import write_json_atomic, write_jsonl_atomic
from spa_recipes.errors import DataError
from spa_recipes.runner.stage import StageContext, StageKind


def run(ctx: StageContext) -> dict[str, Any]:
    recipe = ctx.recipe
    rows, skipped = clean_rows(ctx.source.rows())
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
        prompt_sets.append([{"id": r["id"], "prompt": r["prompt"]} for r in rows[start : start + size]])
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
        "seed": n_seed,
        "prompts_per_iteration": n_iter,
        "eval": n_eval,
        "unused": n - needed,
        "disjoint": disjoint,
    }
    write_json_atomic(ctx.output("stats"), stats)
    return {"seed_pairs": n_seed, "prompts": sum(n_iter), "eval_prompts": n_eval, "skipped": sum(skipped.values())}


KIND = StageKind(
    "split",
    run,
    outputs={"seed": "seed.jsonl", "prompts": "prompts_{index}.jsonl", "eval": "eval.jsonl", "stats": "stats.json"},
    reads=("data", "split", "iterations", "run.seed"),
)


def _count(value: int | float, n: int) -> int:
    """A count as given (>= 1), or a fraction of ``n`` rows (< 1), rounded down."""
    return int(value) if value >= 1 else int(value * n)


def clean_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Drop malformed and duplicate-prompt rows, counting each reason; the first copy of a prompt is kept."""
    kept, skipped, seen_prompts, seen_ids = [], Counter(), set(), set()
    for row in rows:
        reason = _problem(row)
        if reason is None:
            key = repr(row["prompt"])
            if key in seen_prompts:
                reason = "duplicate prompt"
            elif row["id"] in seen_ids:
                reason = "duplicate id"
        if reason:
            skipped[reason] += 1
            continue
        seen_prompts.add(repr(row["prompt"]))
        seen_ids.add(row["id"])
        kept.append(row)
    return kept, skipped


def _problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "not a mapping"
    if not isinstance(row.get("id"), str) or not row["id"]:
        return "missing id"
    prompt = row.get("prompt")
    if (
        not isinstance(prompt, list)
        or not prompt
        or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in prompt
        )
    ):
        return "malformed prompt"
    if not any(m["content"].strip() for m in prompt):
        return "empty prompt"
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return "chosen/rejected not text"
    if chosen == rejected:
        return "chosen equals rejected"
    return None
