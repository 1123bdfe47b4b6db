"""dpo: seed DPO (plain sigmoid DPO on the labelled seed set) or one SPA iteration's training.

An iteration trains pi_i from pi_{i-1} with reference pi_{i-1} on the self-labelled pairs, with the
recipe's noise detector and refiner. When the loss needs no reference logits (no extrapolation), the
judge's log pi_{i-1} values are reused as the cached reference log-probs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa_recipes.atomic import read_jsonl
from spa_recipes.builtins import NoneDetectorConfig, NoRefinerConfig
from spa_recipes.noise import NoNoiseDetector, lambda_for_iteration
from spa_recipes.refiners import NoRefiner
from spa_recipes.runner.graph import Stage
from spa_recipes.training.preference import train_preference


def run(ctx: Any, stage: Stage, out: Path) -> dict[str, Any]:
    recipe = ctx.recipe
    if stage.iteration == 0:
        pairs = read_jsonl(ctx.stage_dir("split") / "seed.jsonl")
        training = recipe.training.seed
        detector, refiner = NoNoiseDetector(NoneDetectorConfig()), NoRefiner(NoRefinerConfig())  # plain DPO
        lam, ref_logps = 0.0, None
    else:
        pairs = read_jsonl(ctx.stage_dir(f"iter{stage.iteration}_pairs") / "pairs.jsonl")
        training = recipe.training.iteration
        detector = ctx.build(recipe.noise_detector, "noise_detector")
        refiner = ctx.build(recipe.refiner, "refiner")
        lam = lambda_for_iteration(recipe.noise_detector.args, stage.iteration)
        ref_logps = _judge_logps(pairs)
    summary = train_preference(
        pairs,
        policy_path=ctx.model_path(stage.model),
        reference_path=ctx.model_path(stage.reference),
        output_dir=out / "model",
        work_dir=out / "work",
        training=training,
        loss=ctx.build(recipe.loss, "loss"),
        noise_detector=detector,
        refiner=refiner,
        lam=lam,
        seed=ctx.seed_for(stage),
        dtype=recipe.models.dtype,
        description=stage.name,
        ref_logps=ref_logps,
    )
    return {"pairs": len(pairs), "lambda": lam, **{k: v for k, v in summary.items() if not isinstance(v, dict | list)}}


def _judge_logps(pairs: list[dict[str, Any]]) -> dict[str, tuple[float, float]] | None:
    """log pi_{i-1} of chosen and rejected as the judge computed them (the same model and tokenization)."""
    if not pairs or "chosen_policy_logp" not in pairs[0]:
        return None
    return {p["id"]: (p["chosen_policy_logp"], p["rejected_policy_logp"]) for p in pairs}
