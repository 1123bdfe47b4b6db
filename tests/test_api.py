"""The component API (spa_recipes/api.py): contexts, capabilities, built-ins through entry points, separate judge
and evaluator configs, help text everywhere, and ``spa-recipe explain``."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from dataclasses import FrozenInstanceError
from importlib import metadata
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from spa_recipes import api
from spa_recipes import registry as registry_module
from spa_recipes.api import CONTEXTS, JudgeContext, LoggerContext, make_context, offers
from spa_recipes.cli import app
from spa_recipes.errors import PluginError, UserError
from spa_recipes.explain import explain
from spa_recipes.recipe import load_recipe
from spa_recipes.registry import BUILTIN_ENTRY_POINTS, DISTRIBUTION, ENTRY_POINT_GROUP, KINDS, Registry, get_registry
from spa_recipes.schema import ComponentSpec, Recipe

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "tiny_spa.yaml"


# Contexts -------------------------------------------------------------------------------------------


def test_every_kind_has_a_frozen_context_and_unknown_keywords_are_errors() -> None:
    assert set(CONTEXTS) == set(KINDS)
    context = make_context("judge", policy_path="p", dtype="float32")
    assert context == JudgeContext(policy_path="p", dtype="float32")
    with pytest.raises(FrozenInstanceError):
        context.dtype = "bfloat16"  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"evaluator context has no policy_path \(fields: world, dtype, device\)"):
        make_context("evaluator", policy_path="p")
    with pytest.raises(TypeError, match="logger context"):
        make_context("logger")  # run_dir is required
    assert make_context("logger", run_dir=Path("r")) == LoggerContext(Path("r"))


def test_every_builtin_builder_takes_config_and_its_kinds_context() -> None:
    """No keyword bags: each built-in builder is ``(cfg, ctx)``, ctx annotated with its kind's context."""
    for kind in KINDS:
        for component in get_registry().components(kind):
            builder = component.resolve_builder()
            target = builder.__init__ if inspect.isclass(builder) else builder
            params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
            where = f"{kind} {component.name} ({component.builder})"
            assert [p.kind for p in params] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2, where
            hints = typing.get_type_hints(target)
            allowed = typing.get_args(hints[params[1].name]) or (hints[params[1].name],)
            # A judge implementation may also serve as evaluator: it takes either context.
            assert CONTEXTS[kind] in allowed, where


# Capabilities ---------------------------------------------------------------------------------------


def test_capabilities_are_declared_on_configs_and_asked_by_name() -> None:
    registry = get_registry()
    assert registry.get("dataset", "toy_world").offers(api.DEMONSTRATIONS)
    assert not registry.get("dataset", "preference_file").offers(api.DEMONSTRATIONS)
    assert registry.get("judge", "reward_model").offers(api.TRAIN_ON_SEED)
    assert not registry.get("evaluator", "reward_model").offers(api.TRAIN_ON_SEED)
    assert registry.get("judge", "implicit").offers(api.POLICY_LOGPS)
    assert {c.name for c in registry.components("judge") if c.offers(api.STATS)} == {
        "llm_judge",
        "pairrm",
        "reward_model",
    }
    assert offers(registry.get("noise_detector", "batch_quantile").config(), api.EXTRAPOLATION)
    assert not offers(registry.get("noise_detector", "none").config, api.EXTRAPOLATION)
    with pytest.raises(ValueError, match="unknown capability 'train_on_sed'"):
        offers(registry.get("judge", "implicit").config, "train_on_sed")


def test_a_capability_unknown_to_the_kind_is_refused_at_registration() -> None:
    class Odd(api.ComponentConfig):
        capabilities = frozenset({api.TRAIN_ON_SEED})

    with pytest.raises(PluginError, match=r"refiner 'odd': Odd declares capabilities \['train_on_seed'\] unknown"):
        Registry().register("refiner", "odd", config=Odd, builder="x:y")


# Built-ins through entry points ------------------------------------------------------------------------


def test_builtins_come_from_this_distributions_entry_points() -> None:
    found = {ep.name for ep in metadata.distribution(DISTRIBUTION).entry_points if ep.group == ENTRY_POINT_GROUP}
    assert found == set(BUILTIN_ENTRY_POINTS)
    registry = Registry()
    registry.load_builtins()
    for kind in KINDS:
        assert registry.components(kind) and all(c.source == "built-in" for c in registry.components(kind))


def test_a_missing_builtin_entry_point_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.distribution(DISTRIBUTION)

    class Stale:  # an install made before the "loss" area had its entry point
        entry_points = [ep for ep in real.entry_points if ep.name != "loss"]

    monkeypatch.setattr(registry_module.metadata, "distribution", lambda name: Stale)
    with pytest.raises(PluginError, match="entry points loss of the group spa_recipes.plugins are not installed"):
        Registry().load_builtins()

    def not_installed(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(registry_module.metadata, "distribution", not_installed)
    with pytest.raises(PluginError, match="spa-recipes distribution is not installed; install the project"):
        Registry().load_builtins()


# Judge and evaluator roles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("evaluator", "problem"),
    [
        ("{name: llm_judge}", "evaluation.evaluator.model: required key is missing"),
        ("{name: reward_model}", "evaluation.evaluator.path: required key is missing"),
        ("{name: reward_model, path: x/y, train_on_seed: true}", "evaluation.evaluator.train_on_seed: unknown key"),
    ],
)
def test_evaluator_requirements_are_validated_apart_from_the_judges(evaluator: str, problem: str) -> None:
    with pytest.raises(UserError) as info:
        load_recipe(TINY, [f"evaluation.evaluator={evaluator}"])
    assert [p.removeprefix("command line: ") for p in info.value.problems] == [problem]
    # As a judge the same component may do without: the policy judges itself / judge_train trains one.
    assert load_recipe(TINY, ["judge={name: llm_judge}"]).judge.args.model is None
    assert load_recipe(TINY, ["evaluation.evaluator={name: llm_judge, model: org/judge}"]).evaluation.evaluator


def test_removed_models_keys_are_unknown() -> None:
    for key in ("models.tokenizer=org/tok", "models.trust_remote_code=true"):
        with pytest.raises(UserError, match=f"{key.split('=')[0]}: unknown key"):
            load_recipe(TINY, [key])


# Help text ------------------------------------------------------------------------------------------


def schema_leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object]]:
    """``(dotted key, field)`` of every leaf of a section model (component sections are leaves)."""
    leaves = []
    for name, field in model.model_fields.items():
        inner = [a for a in (typing.get_args(field.annotation) or (field.annotation,)) if a is not type(None)]
        section = len(inner) == 1 and isinstance(inner[0], type) and issubclass(inner[0], BaseModel)
        if section and inner[0] is not ComponentSpec:
            leaves += schema_leaves(inner[0], f"{prefix}{name}.")
        else:
            leaves.append((prefix + name, field))
    return leaves


def test_every_config_field_and_schema_leaf_has_help_text() -> None:
    missing = [
        f"{kind}.{c.name}.{name}"
        for kind in KINDS
        for c in get_registry().components(kind)
        for name, field in c.config.model_fields.items()
        if not field.description
    ]
    leaves = schema_leaves(Recipe)
    assert len(leaves) > 40
    missing += [key for key, field in leaves if not field.description]
    assert missing == []


# explain --------------------------------------------------------------------------------------------


def test_explain_a_component_in_process() -> None:
    text = explain("judge.pairrm", get_registry())
    lines = text.splitlines()
    assert lines[0] == "judge.pairrm: PairRM pairwise ranker (DeBERTa-v3), both orders averaged"
    assert "source: built-in" in lines and "capabilities: stats" in lines
    header = next(line for line in lines if line.startswith("field "))
    assert header.split() == ["field", "type", "default", "help"]
    path = next(line for line in lines if line.startswith("path "))
    assert path.split()[:3] == ["path", "str", "'llm-blender/PairRM'"]
    assert path.endswith("hub id or folder of the PairRM checkpoint")
    # The alias a recipe uses, and a required field.
    assert any(
        line.split()[:2] == ["lambda", "float"]
        for line in explain("noise_detector.batch_quantile", get_registry()).splitlines()
    )
    assert any("(required)" in line for line in explain("evaluator.llm_judge", get_registry()).splitlines())


def test_explain_sections_and_kinds() -> None:
    registry = get_registry()
    iteration = explain("training.iteration", registry)
    assert any(line.split()[:3] == ["learning_rate", "float", "5e-07"] for line in iteration.splitlines())
    assert "kind dataset" in explain("data", registry)
    assert "  pairrm " in explain("evaluator", registry)


def test_explain_unknown_is_one_line_with_a_suggestion() -> None:
    result = CliRunner().invoke(app, ["explain", "judge.pairm"])
    assert result.exit_code == 2
    for target, hint in [("judge.pairm", "pairrm"), ("judges.pairrm", "judge.pairrm"), ("modles", "models")]:
        with pytest.raises(UserError) as info:
            explain(target, get_registry())
        assert len(info.value.problems) == 1 and f"(did you mean '{hint}'?)" in info.value.problems[0]


def test_explain_through_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spa_recipes", "explain", "loss.dpo"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["loss.dpo: sigmoid DPO", "source: built-in"]
    assert result.stdout.splitlines()[-1].split()[:3] == ["beta", "float", "0.1"]
    refused = subprocess.run(
        [sys.executable, "-m", "spa_recipes", "explain", "loss.dop"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "error: explain: no loss named 'dop' (did you mean 'dpo'?); available: dpo"
    ]
