"""eval_baseline: the baseline's (pi_init's) responses on the hold-out prompts, which every eval compares with."""

from __future__ import annotations

from typing import Any

from spa_recipes.distributed import is_main_process
from spa_recipes.runner.stage import StageContext, StageKind
from spa_recipes.stages.evaluate import RESPOND_READS, respond
from spa_recipes.stages.generate import response_stats


def run(ctx: StageContext) -> dict[str, Any]:
    rows = respond(ctx)
    return response_stats(rows) if is_main_process() else {}


KIND = StageKind(
    "eval_baseline",
    run,
    inputs=("prompts", "policy"),
    outputs={"responses": "responses.jsonl", "shards": "shards"},
    scratch=("shards",),
    reads=RESPOND_READS,
    collective=True,
)
