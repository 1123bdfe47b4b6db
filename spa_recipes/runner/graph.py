"""The SPA stage graph, built from a recipe alone: stage kinds placed and wired, top to bottom.

    split -> [sft] -> [seed_dpo] -> [judge_train] -> [eval_baseline] -> [eval_seed_dpo]
          -> for i in 1..T: iter{i}_generate -> iter{i}_judge -> iter{i}_pairs -> [iter{i}_mix] -> iter{i}_train
                            -> [iter{i}_eval]
          -> report

What each kind reads, takes and writes is declared in its module (:mod:`spa_recipes.stages`); this module
only decides which stages a recipe has and wires each input role to an upstream output or a model path.
Fingerprints are derived from the declarations (:func:`spa_recipes.runner.stage.fingerprint_stages`).
Adding a stage kind is its module plus the line here that places it.
"""

from __future__ import annotations

from spa_recipes.recipe import recipe_to_dict
from spa_recipes.runner.stage import Output, Source, Stage, StageKind, fingerprint_stages
from spa_recipes.schema import Recipe
from spa_recipes.stages import (
    eval_baseline,
    evaluate,
    generate,
    judge,
    judge_train,
    mix,
    pairs,
    report,
    seed_dpo,
    sft,
    split,
    train,
)


class _Graph(list[Stage]):
    def add(self, name: str, kind: StageKind, iteration: int = 0, sizes: str = "", **inputs: Source | None) -> Stage:
        stage = Stage(name, kind, iteration, {r: s for r, s in inputs.items() if s is not None}, sizes=sizes)
        unknown = set(stage.inputs) - set(kind.inputs)
        assert not unknown, f"{name}: kind '{kind.name}' declares no input {sorted(unknown)}"
        self.append(stage)
        return stage


def build_graph(recipe: Recipe) -> list[Stage]:
    """The stages of a recipe in execution order, with fingerprints."""
    r = recipe_to_dict(recipe)
    s, t = recipe.split, recipe.iterations
    g = _Graph()
    data = g.add(
        "split",
        split.KIND,
        sizes=f"seed {s.seed_size} pairs, {t} x {s.prompts_per_iteration} prompts, {s.eval_holdout} eval prompts",
    )
    # pi_init: made by the sft stage from models.base, or the recipe's models.sft.
    pi_init: Source = str(recipe.models.sft)
    if recipe.training.sft is not None:
        demonstrations = getattr(recipe.data.args, "sft_demonstrations", "?")
        pi_init = g.add("sft", sft.KIND, sizes=f"{demonstrations} demonstrations").out("model")
    # policies[i]: the policy that iteration i samples, judges with and trains from (pi_{i-1}); policies[0]: pi_init.
    policies: list[Source] = [pi_init, pi_init]
    if recipe.training.seed is not None:
        seed_pairs = data.out("seed")
        seed_model = g.add(
            "seed_dpo",
            seed_dpo.KIND,
            sizes=f"{s.seed_size} labelled pairs",
            pairs=seed_pairs,
            policy=pi_init,
            reference=pi_init,
        )
        policies[1] = seed_model.out("model")
    trained_judge = None
    if r["judge"].get("train_on_seed"):  # an external judge trained once on the seed labels, then fixed
        trained_judge = g.add(
            "judge_train", judge_train.KIND, sizes=f"{s.seed_size} labelled pairs", pairs=data.out("seed"), base=pi_init
        ).out("model")
    evaluated = recipe.evaluation.evaluator is not None
    baseline = None
    if evaluated:
        held_out = data.out("eval")
        baseline = g.add(
            "eval_baseline", eval_baseline.KIND, sizes=f"{s.eval_holdout} prompts", prompts=held_out, policy=pi_init
        ).out("responses")
        if recipe.training.seed is not None:
            g.add("eval_seed_dpo", evaluate.KIND, prompts=held_out, policy=policies[1], baseline=baseline)
    mixer = r["data_mixer"]
    previous_pairs: Source | None = None
    for i in range(1, t + 1):
        policy = policies[i]
        prompts = (
            s.prompts_per_iteration[i - 1] if isinstance(s.prompts_per_iteration, list) else s.prompts_per_iteration
        )
        responses = g.add(
            f"iter{i}_generate",
            generate.KIND,
            i,
            sizes=f"{prompts} prompts x {r['generation']['samples_per_prompt']}",
            prompts=data.out("prompts", i),
            policy=policy,
        ).out("responses")
        scores = g.add(
            f"iter{i}_judge",
            judge.KIND,
            i,
            responses=responses,
            policy=policy,
            sft=pi_init,
            previous=policies[i - 1],
            trained_judge=trained_judge,
        ).out("scores")
        chosen = g.add(f"iter{i}_pairs", pairs.KIND, i, scores=scores).out("pairs")
        training_pairs = chosen
        if mixer["name"] != "none":
            pool = data.out("seed") if mixer.get("source") == "seed" else previous_pairs
            training_pairs = g.add(f"iter{i}_mix", mix.KIND, i, pairs=chosen, pool=pool).out("pairs")
        previous_pairs = chosen
        trained = g.add(f"iter{i}_train", train.KIND, i, pairs=training_pairs, policy=policy, reference=policy).out(
            "model"
        )
        if evaluated:
            g.add(f"iter{i}_eval", evaluate.KIND, i, prompts=held_out, policy=trained, baseline=baseline, pairs=chosen)
        policies.append(trained)
    everything = [stage.name for stage in g]
    g.add("report", report.KIND).after = everything  # the report reads the whole run
    fingerprint_stages(g, r)
    return list(g)


def describe(source: Source | None) -> str:
    """An input as ``spa-recipe graph`` shows it."""
    return str(source) if isinstance(source, Output) else f"{source} (recipe)"
