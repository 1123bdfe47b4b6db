"""Declared stages: fingerprints derived from what each stage kind reads, and reads held to the declaration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spa_recipes.recipe import load_recipe, recipe_to_dict
from spa_recipes.runner.graph import build_graph
from spa_recipes.runner.stage import RecipeView, Stage, StageKind, UndeclaredRead

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny_spa.yaml"


def fingerprints(overrides: list[str]) -> tuple[dict[str, str], list[Stage]]:
    stages = build_graph(load_recipe(TINY, overrides))
    return {s.name: s.fingerprint for s in stages}, stages


def leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [leaf for key, value in tree.items() for leaf in leaves(value, f"{prefix}{key}.")]
    return [(prefix[:-1], tree)]


CHOICES = ["bfloat16", "float32", "previous", "none", "linear", "constant", "skip_step", "drop", "keep"]


def changed_value(value: Any) -> list[Any]:
    """Other values to try for a leaf, the first valid one is used."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2]
    if isinstance(value, float):
        return [value * 0.5, value + 0.5]
    if isinstance(value, str):  # free text, or one of a fixed set of choices
        return [value + "x", *CHOICES]
    if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
        return [[*value[:-1], value[-1] * 0.5]]
    return []


def readers(stages: list[Stage], key: str, changed_entry: int | None) -> set[str]:
    """Stages whose kind declares ``key``, a key above it, or one below it.

    ``changed_entry``: the (1-based) entry changed in a list value; a kind that reads the key per iteration
    reads only its own iteration's entry.
    """
    return {
        s.name
        for s in stages
        if any(key == d or key.startswith(d + ".") or d.startswith(key + ".") for d in s.kind.reads)
        and not (changed_entry and key in s.kind.per_iteration and s.iteration not in (0, changed_entry))
    }


def downstream(stages: list[Stage], names: set[str]) -> set[str]:
    out = set(names)
    for stage in stages:  # execution order: upstream stages come first
        if out & set(stage.upstream()):
            out.add(stage.name)
    return out


def test_every_leaf_of_the_tiny_recipe_changes_exactly_the_stages_that_read_it() -> None:
    base, stages = fingerprints([])
    resolved = recipe_to_dict(load_recipe(TINY))
    tested, untested = [], []
    for key, value in leaves(resolved):
        if key.endswith(".name") and key != "run.name":
            continue  # choosing another component is not a value change; its arguments are
        for candidate in changed_value(value):
            if candidate == value:
                continue
            try:
                after, after_stages = fingerprints([f"{key}={json.dumps(candidate)}"])
            except Exception:  # noqa: BLE001 - this candidate is not a valid value for the key
                continue
            common = set(base) & set(after)
            changed = {name for name in common if base[name] != after[name]}
            entry = len(value) if isinstance(value, list) else None  # changed_value changes a list's last entry
            expected = downstream(after_stages, readers(after_stages, key, entry)) & common
            assert changed == expected, f"{key}: changed {sorted(changed)}, declared readers give {sorted(expected)}"
            tested.append(key)
            break
        else:
            if key != "iterations":
                untested.append(key)
    # Every leaf with a number or a flag, and most text, was changed; what is left is null or a fixed choice.
    assert len(tested) > 60, (len(tested), untested)
    # (iterations cannot change alone: per-iteration lists must have one entry per iteration; logging.loggers is
    # a list of components, read by the runner, not by a stage.)
    assert all(value is None or isinstance(value, str | list) for key, value in leaves(resolved) if key in untested), [
        (key, value) for key, value in leaves(resolved) if key in untested
    ]


def test_max_prompt_length_is_declared_by_every_stage_that_cuts_prompts() -> None:
    """The drift that motivated declarations: generation and evaluation cut prompts to it, the split skips longer
    ones, the judge encodes with it; each declares it, so each re-runs when it changes."""
    _, stages = fingerprints([])
    key = "training.iteration.max_prompt_length"
    expected = {"split", "eval_baseline", "eval_seed_dpo"} | {
        f"iter{i}_{s}" for i in (1, 2, 3) for s in ("generate", "judge", "train", "eval")
    }
    assert readers(stages, key, None) == expected


def test_a_per_iteration_value_re_runs_only_its_iteration() -> None:
    base, _ = fingerprints(["noise_detector.lambda=[0.5,0.5,0.5]"])
    after, stages = fingerprints(["noise_detector.lambda=[0.5,0.5,0.25]"])
    assert {name for name in base if base[name] != after[name]} == {"iter3_train", "iter3_eval", "report"}


def test_a_stage_cannot_read_an_undeclared_value() -> None:
    recipe = load_recipe(TINY)
    kind = StageKind("probe", lambda ctx: {}, reads=("generation", "training.iteration.max_length", "judge.beta"))
    view = RecipeView(recipe, kind)
    assert view.generation.args.temperature == 1.0  # a declared subtree
    assert view.training.iteration.max_length == 64  # a declared leaf, reached through its parents
    assert view.judge.args.beta == recipe.judge.args.beta  # a component's arguments sit beside its name
    with pytest.raises(UndeclaredRead, match="'training.iteration.max_prompt_length'"):
        view.training.iteration.max_prompt_length  # noqa: B018
    with pytest.raises(UndeclaredRead, match="'judge.batch_size'"):
        view.judge.args.batch_size  # noqa: B018
    with pytest.raises(UndeclaredRead, match="'run'"):
        view.run.seed  # noqa: B018
    lam = StageKind("probe", lambda ctx: {}, reads=("noise_detector.lambda",))  # the key, not the attribute lambda_
    assert RecipeView(recipe, lam).noise_detector.args.lambda_ == recipe.noise_detector.args.lambda_


def test_the_graph_wires_only_declared_inputs_and_outputs() -> None:
    _, stages = fingerprints([])
    by_name = {s.name: s for s in stages}
    for stage in stages:
        assert set(stage.inputs) <= set(stage.kind.inputs), stage.name
        for source in stage.inputs.values():
            if not isinstance(source, str):
                assert source.name in by_name[source.stage].kind.outputs, (stage.name, source)
    judge = by_name["iter2_judge"]
    assert {role: str(s) for role, s in judge.inputs.items()} == {
        "responses": "iter2_generate.responses",
        "policy": "iter1_train.model",
        "sft": "sft.model",
        "previous": "seed_dpo.model",
    }
