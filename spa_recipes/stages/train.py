"""train: one SPA iteration's training: pi_i from pi_{i-1}, reference pi_{i-1}, on the self-labelled pairs.

The recipe's noise detector and refiner act on the pairs (lambda as the iteration's). When the loss needs
no reference logits (no extrapolation) and every pair carries the judge's log pi_{i-1} values (replayed pairs
do not), they are reused as the cached reference log-probs.
"""

from __future__ import annotations

from typing import Any

from spa_recipes.api import PER_PAIR, offers
from spa_recipes.atomic import read_jsonl
from spa_recipes.noise import lambda_for_iteration
from spa_recipes.runner.stage import StageContext, StageKind
from spa_recipes.training.checkpoints import CHECKPOINTS
from spa_recipes.training.preference import train_preference

# What every training stage writes: the model, its work folder (per-step metrics.jsonl) and its checkpoints in it
# (the resume state, removed when the stage has finished).
TRAINING_OUTPUTS = {"model": "model", "work": "work", "checkpoints": f"work/{CHECKPOINTS}"}


def run(ctx: StageContext) -> dict[str, Any]:
    recipe = ctx.recipe
    pairs = read_jsonl(ctx.input("pairs"))
    lam = lambda_for_iteration(recipe.noise_detector.args, ctx.stage.iteration)
    return train_on(
        ctx,
        pairs,
        recipe.training.iteration,
        noise_detector=ctx.build(recipe.noise_detector, "noise_detector"),
        refiner=ctx.build(recipe.refiner, "refiner", pairs=tuple(pairs)),
        refiner_per_pair=offers(recipe.refiner.args, PER_PAIR),
        lam=lam,
        ref_logps=_judge_logps(pairs),
    )


KIND = StageKind(
    "train",
    run,
    inputs=("pairs", "policy", "reference"),
    outputs=TRAINING_OUTPUTS,
    scratch=("checkpoints",),
    reads=("training.iteration", "loss", "noise_detector", "refiner", "models.dtype", "models.adapter", "run.seed"),
    per_iteration=("noise_detector.lambda",),
    collective=True,
)


def train_on(ctx: StageContext, pairs: list[dict[str, Any]], training: Any, **noise: Any) -> dict[str, Any]:
    """DPO of the ``policy`` input against the ``reference`` input on ``pairs``; the stage's summary.

    Args:
        noise: ``noise_detector``, ``refiner``, ``refiner_per_pair``, ``lam`` and ``ref_logps`` (none given: plain
            DPO).
    """
    if not noise:  # plain DPO: the detector that flags nothing and the refiner that changes nothing
        noise = {"noise_detector": _none("noise_detector"), "refiner": _none("refiner"), "lam": 0.0}
    summary = train_preference(
        pairs,
        policy_path=ctx.model("policy"),
        reference_path=ctx.model("reference"),
        output_dir=ctx.output("model"),
        work_dir=ctx.output("work"),
        training=training,
        loss=ctx.build(ctx.recipe.loss, "loss"),
        seed=ctx.seed,
        dtype=ctx.recipe.models.dtype,
        adapter=ctx.recipe.models.adapter,
        description=ctx.stage.name,
        **noise,
    )
    lam = noise.get("lam", 0.0)
    return {"pairs": len(pairs), "lambda": lam, **{k: v for k, v in summary.items() if not isinstance(v, dict | list)}}


def _none(kind: str) -> Any:
    from spa_recipes.registry import get_registry

    component = get_registry().get(kind, "none")
    return component.build(component.config())


def _judge_logps(pairs: list[dict[str, Any]]) -> dict[str, tuple[float, float]] | None:
    """log pi_{i-1} of chosen and rejected as the judge computed them (the same model and tokenization); None
    unless every pair has them."""
    if not pairs or any("chosen_policy_logp" not in p for p in pairs):
        return None
    return {p["id"]: (p["chosen_policy_logp"], p["rejected_policy_logp"]) for p in pairs}
