"""The SPA stage graph, built from a recipe alone.

    split -> [sft] -> [seed_dpo] -> [judge_train] -> eval_baseline -> [eval_seed_dpo]
          -> for i in 1..T: iter{i}_generate -> iter{i}_judge -> iter{i}_pairs -> iter{i}_train -> iter{i}_eval
          -> report

Each stage names its inputs (upstream stages), the model it loads and the reference it uses, and the
recipe values it depends on. Its fingerprint hashes those values with the fingerprints of its inputs,
so changing one override re-runs exactly the stages that depend on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from spa_recipes.recipe import recipe_to_dict
from spa_recipes.schema import Recipe


@dataclass
class Stage:
    """One node of the graph.

    Attributes:
        name: folder name in the run directory (``iter2_train``).
        kind: what runs it: split, sft, dpo, generate, judge, pairs, eval, report.
        inputs: upstream stage names.
        iteration: SPA iteration (0 for stages before the loop).
        model: stage whose model this stage loads (or a model path, for pi_init given in the recipe).
        reference: stage or path of the reference model (judge or DPO reference), when there is one.
        config: the recipe values this stage depends on (hashed into the fingerprint).
        sizes: human-readable data sizes for ``spa-recipe graph``.
    """

    name: str
    kind: str
    inputs: list[str]
    iteration: int = 0
    model: str | None = None
    reference: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    sizes: str = ""
    fingerprint: str = ""


def _per_iteration(value: Any, i: int) -> Any:
    return value[i - 1] if isinstance(value, list) else value


def build_graph(recipe: Recipe) -> list[Stage]:
    """The stages of a recipe in execution order, with fingerprints."""
    r = recipe_to_dict(recipe)
    t = recipe.iterations
    seed = recipe.run.seed
    split = r["split"]
    stages = [
        Stage(
            "split",
            "split",
            [],
            config={
                "data": r["data"],
                "data_file": _file_identity(r["data"]),
                "split": split,
                "iterations": t,
                "seed": seed,
            },
            sizes=f"seed {split['seed_size']} pairs, {t} x {split['prompts_per_iteration']} prompts, "
            f"{split['eval_holdout']} eval prompts",
        ),
    ]
    sft = sft_model(recipe)
    if recipe.training.sft is not None:
        stages.append(
            Stage(
                "sft",
                "sft",
                [],
                model=f"models.base ({recipe.models.base.name})",
                config={
                    "data": r["data"],
                    "base": r["models"]["base"],
                    "dtype": r["models"]["dtype"],  # mixed precision and the saved weights' dtype
                    "training": r["training"]["sft"],
                    "seed": seed,
                },
                sizes=f"{getattr(recipe.data.args, 'sft_demonstrations', '?')} demonstrations",
            )
        )
    sft_inputs = ["sft"] if recipe.training.sft is not None else []
    models = {"dtype": r["models"]["dtype"], "sft": r["models"]["sft"], "tokenizer": r["models"]["tokenizer"]}
    previous = sft
    if recipe.training.seed is not None:
        stages.append(
            Stage(
                "seed_dpo",
                "dpo",
                ["split", *sft_inputs],
                model=sft,
                reference=sft,
                config={"training": r["training"]["seed"], "loss": r["loss"], "models": models, "seed": seed},
                sizes=f"{split['seed_size']} labelled pairs",
            )
        )
        previous = "seed_dpo"
    judge_inputs = []
    if r["judge"].get("train_on_seed"):  # an external judge trained once on the seed labels, then fixed
        stages.append(
            Stage(
                "judge_train",
                "judge_train",
                ["split", *sft_inputs],
                model=sft,
                config={
                    "judge": r["judge"],
                    "models": models,
                    "seed": seed,
                    "training": _lengths(r["training"]["iteration"]),
                },
                sizes=f"{split['seed_size']} labelled pairs",
            )
        )
        judge_inputs = ["judge_train"]
    evaluation = {"evaluation": r["evaluation"], "generation": r["generation"], "models": models, "seed": seed}
    if recipe.evaluation.evaluator is not None:
        stages.append(
            Stage(
                "eval_baseline",
                "eval_baseline",
                ["split", *sft_inputs],
                model=sft,
                config=evaluation,
                sizes=f"{split['eval_holdout']} prompts",
            )
        )
        if recipe.training.seed is not None:
            stages.append(
                Stage(
                    "eval_seed_dpo", "eval", ["split", "seed_dpo", "eval_baseline"], model="seed_dpo", config=evaluation
                )
            )
    for i in range(1, t + 1):
        prefix = f"iter{i}"
        model_inputs = [previous] if any(s.name == previous for s in stages) else []
        prompts = _per_iteration(split["prompts_per_iteration"], i)
        judge_ref = {"sft": sft, "previous": previous_model(i, sft, recipe), "none": None}.get(
            r["judge"].get("reference", "sft"), sft
        )
        stages += [
            Stage(
                f"{prefix}_generate",
                "generate",
                ["split", *model_inputs],
                i,
                model=previous,
                config={"generation": r["generation"], "models": models, "seed": seed, "iteration": i},
                sizes=f"{prompts} prompts x {r['generation']['samples_per_prompt']}",
            ),
            Stage(
                f"{prefix}_judge",
                "judge",
                [f"{prefix}_generate", *model_inputs, *_stages_among(judge_ref, stages), *judge_inputs],
                i,
                model=previous,
                reference=judge_ref if r["judge"]["name"] == "implicit" else r["judge"]["name"],
                config={"judge": r["judge"], "models": models, "training": _lengths(r["training"]["iteration"])},
            ),
            Stage(
                f"{prefix}_pairs",
                "pairs",
                [f"{prefix}_judge"],
                i,
                config={"pair_selector": r["pair_selector"], "seed": seed},
            ),
            Stage(
                f"{prefix}_train",
                "dpo",
                [f"{prefix}_pairs", *model_inputs],
                i,
                model=previous,
                reference=previous,
                config={
                    "training": r["training"]["iteration"],
                    "loss": r["loss"],
                    "noise_detector": _detector_for(r["noise_detector"], i),
                    "refiner": r["refiner"],
                    "models": models,
                    "seed": seed,
                    "iteration": i,
                },
            ),
        ]
        if recipe.evaluation.evaluator is not None:
            stages.append(
                Stage(
                    f"{prefix}_eval",
                    "eval",
                    ["split", f"{prefix}_train", "eval_baseline", f"{prefix}_pairs"],
                    i,
                    model=f"{prefix}_train",
                    config=evaluation,
                )
            )
        previous = f"{prefix}_train"
    stages.append(
        Stage("report", "report", [s.name for s in stages if s.kind in {"eval", "split", "pairs"}], config={})
    )
    _fingerprint(stages)
    return stages


def sft_model(recipe: Recipe) -> str:
    """pi_init: the sft stage's model, or the recipe's models.sft."""
    return "sft" if recipe.training.sft is not None else str(recipe.models.sft)


def previous_model(i: int, sft: str, recipe: Recipe) -> str:
    """The model before the judging policy pi_{i-1}: pi_{i-2}, or pi_init for the first iteration(s)."""
    if i >= 3:
        return f"iter{i - 2}_train"
    if i == 2:
        return "seed_dpo" if recipe.training.seed is not None else sft
    return sft


def _file_identity(data: dict[str, Any]) -> list[int] | None:
    """Size and modification time of a local data file, so that editing it in place re-runs split."""
    from spa_recipes.data.files import find_data_file

    path = data.get("path")
    found = find_data_file(path) if isinstance(path, str) else None
    if found is None:
        return None
    stat = found.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _stages_among(name: str | None, stages: list[Stage]) -> list[str]:
    return [name] if any(s.name == name for s in stages) else []


def _detector_for(detector: dict[str, Any], i: int) -> dict[str, Any]:
    """The noise detector's settings as they apply to iteration ``i`` (its own lambda only)."""
    out = dict(detector)
    if "lambda" in out:
        out["lambda"] = _per_iteration(out["lambda"], i)
    return out


def _lengths(training: dict[str, Any]) -> dict[str, Any]:
    return {"max_length": training["max_length"], "max_prompt_length": training["max_prompt_length"]}


def _fingerprint(stages: list[Stage]) -> None:
    by_name: dict[str, Stage] = {}
    for stage in stages:
        payload = {
            "kind": stage.kind,
            "config": stage.config,
            "inputs": {name: by_name[name].fingerprint for name in stage.inputs if name in by_name},
            "model": stage.model,
            "reference": stage.reference,
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        stage.fingerprint = hashlib.sha256(blob).hexdigest()[:16]
        by_name[stage.name] = stage
