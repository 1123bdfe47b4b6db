"""The recipe language: extends, precedence, overrides, interpolation, component switching, show, import allow-list."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

from spa_recipes.errors import RecipeError
from spa_recipes.recipe import ALLOW_IMPORT_ENV, load_recipe, recipe_to_dict

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "tiny_spa.yaml"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spa_recipes", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or dict(os.environ),
        timeout=60,
    )


# Interpolation --------------------------------------------------------------------------------------


def test_interpolation_follows_the_key_it_names() -> None:
    # base/spa_paper.yaml sets judge.beta: ${loss.beta}; the value is resolved after the overrides.
    recipe = load_recipe(TINY, ["loss.beta=0.25"])
    assert recipe.loss.args.beta == 0.25
    assert recipe.judge.args.beta == 0.25
    # Setting the interpolated key itself replaces the interpolation.
    recipe = load_recipe(TINY, ["judge.beta=0.05"])
    assert (recipe.judge.args.beta, recipe.loss.args.beta) == (0.05, 0.1)


def test_interpolation_inside_a_string(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        """\
        extends: tiny_spa.yaml
        run: {name: "tiny_seed${run.seed}", seed: 3}
    """,
    )
    assert load_recipe(path).run.name == "tiny_seed3"
    assert load_recipe(path, ["run.seed=11"]).run.name == "tiny_seed11"


# extends and precedence -----------------------------------------------------------------------------


def test_extends_single_inherits_the_base() -> None:
    recipe = load_recipe(TINY)
    # From base/spa_paper.yaml only:
    assert recipe.noise_detector.name == "rolling_quantile"
    assert recipe.noise_detector.args.lambda_ == [0.5, 0.25, 0.125]
    assert recipe.refiner.args.alpha == 0.1
    # Set by both; the recipe wins:
    assert recipe.generation.args.max_new_tokens == 32
    tiny = yaml.safe_load(TINY.read_text())
    assert recipe.training.iteration.learning_rate == tiny["training"]["iteration"]["learning_rate"] != 5.0e-7


def test_precedence_defaults_bases_recipe_command_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        "bases/a.yaml",
        """\
        extends: tiny_spa.yaml        # not beside a.yaml: found among the shipped recipes
        training:
          iteration: {warmup_ratio: 0.2, epochs: 2, learning_rate: 1.0e-3, batch_size: 2}
    """,
    )
    write(
        tmp_path,
        "bases/b.yaml",
        """\
        training:
          iteration: {epochs: 3, learning_rate: 2.0e-3, batch_size: 3}
    """,
    )
    path = write(
        tmp_path,
        "r.yaml",
        """\
        extends: [bases/a.yaml, bases/b.yaml]
        training:
          iteration: {learning_rate: 3.0e-3, batch_size: 4}
    """,
    )
    it = load_recipe(path, ["training.iteration.batch_size=7"]).training.iteration
    assert it.weight_decay == 0.0  # set nowhere: the schema default
    assert it.warmup_ratio == 0.2  # first base only
    assert it.epochs == 3  # a later base beats an earlier one
    assert it.learning_rate == 3.0e-3  # the recipe beats its bases
    assert it.batch_size == 7  # the command line beats everything
    # Component arguments follow the same rule: nothing sets judge.length_normalize.
    assert load_recipe(path).judge.args.length_normalize is False


def test_local_base_shadows_the_shipped_one(tmp_path: Path) -> None:
    write(
        tmp_path, "base/spa_paper.yaml", (REPO / "recipes/base/spa_paper.yaml").read_text().replace("k: 0.10", "k: 0.3")
    )
    path = write(tmp_path, "r.yaml", TINY.read_text())
    assert load_recipe(path).noise_detector.args.k == 0.3
    assert load_recipe(TINY).noise_detector.args.k == 0.1


# Overrides ------------------------------------------------------------------------------------------


def test_overrides_nested_lists_and_strings() -> None:
    recipe = load_recipe(
        TINY,
        [
            "training.seed.learning_rate=3.0e-4",
            "split.prompts_per_iteration=[10, 20, 30]",
            "noise_detector.lambda=[0.4, 0.2, 0.1]",
            "run.name=my run with spaces",
            'run.output_dir="/tmp/out: quoted"',
            "models.base.hidden_size=32",
        ],
    )
    assert recipe.training.seed.learning_rate == 3.0e-4
    assert recipe.split.prompts_per_iteration == [10, 20, 30]
    assert recipe.noise_detector.args.lambda_ == [0.4, 0.2, 0.1]
    assert recipe.run.name == "my run with spaces"
    assert recipe.run.output_dir == "/tmp/out: quoted"
    assert recipe.models.base.args.hidden_size == 32
    tiny = yaml.safe_load(TINY.read_text())
    assert recipe.models.base.args.num_layers == tiny["models"]["base"]["num_layers"]  # the sibling keys stay


def test_override_delete_and_null() -> None:
    recipe = load_recipe(TINY, ["~evaluation.evaluator"])
    assert recipe.evaluation.evaluator is None
    # ~key removes what the layers set, so the schema default comes back ...
    recipe = load_recipe(TINY, ["~training.seed"])
    assert recipe.training.seed is not None and recipe.training.seed.epochs == 3.0
    assert recipe.training.seed.learning_rate == 5e-7
    # ... and null is how a stage is turned off.
    recipe = load_recipe(TINY, ["training.seed=null", "judge.reference=previous"])
    assert recipe.training.seed is None


def test_an_override_can_add_a_whole_section() -> None:
    recipe = load_recipe(TINY, ["noise_detector={name: batch_quantile, k: 0.2}"])
    assert recipe.noise_detector.name == "batch_quantile"
    assert recipe.noise_detector.args.k == 0.2


# Switching a component ------------------------------------------------------------------------------


def test_switching_component_on_the_command_line_drops_old_args() -> None:
    # tiny_spa's implicit judge carries reference, beta and batch_size; the gold judge takes no arguments.
    recipe = load_recipe(TINY, ["judge.name=gold"])
    assert recipe.judge.name == "gold"
    assert recipe.judge.args.model_dump() == {}
    # Naming the same component keeps its arguments.
    assert load_recipe(TINY, ["judge.name=implicit"]).judge.args.batch_size == 64


def test_switching_component_in_a_recipe_drops_the_base_args(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        """\
        extends: tiny_spa.yaml
        noise_detector: {name: batch_quantile, k: 0.2}
    """,
    )
    args = load_recipe(path).noise_detector.args
    assert args.k == 0.2
    assert args.lambda_ == 0.0  # the base's [0.5, 0.25, 0.125] belonged to rolling_quantile
    assert not hasattr(args, "window")
    # A layer over it that switches back gets rolling_quantile's defaults, not the base's values.
    recipe = load_recipe(path, ["noise_detector.name=rolling_quantile"])
    assert (recipe.noise_detector.args.k, recipe.noise_detector.args.window) == (0.1, 50)


# Problems, all at once ------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(TINY, ["judge.bta=1", "run.sed=2", "iterations=x", "refiner.alpha=0.9", "trainig.seed=1"])
    problems = info.value.problems
    assert len(problems) == 5
    for key in ["judge.bta", "run.sed", "iterations", "refiner.alpha", "trainig"]:
        assert sum(p.removeprefix("command line: ").startswith(f"{key}:") for p in problems) == 1, problems


# show -----------------------------------------------------------------------------------------------


def test_show_prints_every_default_and_reloads(tmp_path: Path) -> None:
    result = run_cli("show", str(TINY))
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["judge"]["length_normalize"] is False
    assert shown["training"]["seed"]["weight_decay"] == 0.0
    assert shown["noise_detector"]["lambda"] == [0.5, 0.25, 0.125]  # the YAML name, not lambda_
    assert shown["logging"]["loggers"] == [{"name": "jsonl"}]
    assert "${" not in result.stdout  # interpolations are resolved
    # What show prints is a recipe: it validates and shows the same again.
    path = write(tmp_path, "shown.yaml", result.stdout)
    assert recipe_to_dict(load_recipe(path)) == shown
    assert recipe_to_dict(load_recipe(TINY)) == shown


# Speed and imports ----------------------------------------------------------------------------------


def test_validation_imports_no_torch_and_is_fast() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); from spa_recipes.recipe import load_recipe; "
        f"load_recipe({str(TINY)!r}); print(time.perf_counter() - t); "
        "print(sorted(m for m in ('torch', 'transformers', 'accelerate', 'datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seconds, heavy = result.stdout.splitlines()
    assert heavy == "[]"
    assert float(seconds) < 2.0
    start = time.perf_counter()
    assert run_cli("validate", str(TINY)).returncode == 0
    assert time.perf_counter() - start < 2.0


# Allow-listed import paths --------------------------------------------------------------------------


def _component_module(folder: Path) -> str:
    """A module on ``folder`` with a pair selector class whose pydantic ``Config`` holds its arguments."""
    name = f"spa_test_selector_{uuid.uuid4().hex[:8]}"  # the process-wide registry remembers each name
    write(
        folder,
        f"{name}.py",
        """\
        from pydantic import BaseModel, ConfigDict


        class LongestFirst:
            class Config(BaseModel):
                model_config = ConfigDict(extra="forbid")
                margin: float = 0.5

            def __init__(self, cfg, **_):
                self.cfg = cfg


        class NotPydantic:
            Config = dict
    """,
    )
    return name


def test_import_path_needs_allow_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _component_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    override = f"pair_selector={{name: '{module}:LongestFirst', margin: 2.0}}"
    with pytest.raises(RecipeError, match=f"--allow-import {module}"):
        load_recipe(TINY, [override])
    # A prefix that is only a string prefix, not a parent package, does not allow it.
    with pytest.raises(RecipeError, match="is an import path"):
        load_recipe(TINY, [override], allow_import=[module[:-2]])
    recipe = load_recipe(TINY, [override], allow_import=[module])
    assert recipe.pair_selector.args.margin == 2.0
    assert type(recipe.pair_selector.args).__qualname__ == "LongestFirst.Config"
    with pytest.raises(RecipeError, match=r"pair_selector\.margn: unknown key \(did you mean 'margin'\?\)"):
        load_recipe(TINY, [f"pair_selector={{name: '{module}:LongestFirst', margn: 2.0}}"], allow_import=[module])
    monkeypatch.setenv(ALLOW_IMPORT_ENV, f"some.other,{module}")
    assert load_recipe(TINY, [override]).pair_selector.args.margin == 2.0


def test_allow_listed_import_that_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _component_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RecipeError, match=f"pair_selector.name: cannot import '{module}:Nope': AttributeError"):
        load_recipe(TINY, [f"pair_selector.name={module}:Nope"], allow_import=[module])
    with pytest.raises(RecipeError, match=f"'{module}:NotPydantic' has no pydantic `Config`"):
        load_recipe(TINY, [f"pair_selector.name={module}:NotPydantic"], allow_import=[module])


def test_batch_quantile_is_checked_against_the_launch_it_runs_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """floor(k x batch_size x accumulation x processes) must be at least 1: 0.1 x 4 x 1 flags nothing on one
    process; the same recipe launched on 8 processes (WORLD_SIZE, or --processes) flags 3 pairs a step."""
    layout = ["noise_detector.name=batch_quantile", "training.iteration.batch_size=4"]
    with pytest.raises(RecipeError, match=r"optimiser batch of 4 pairs .* flags floor\(0\.4\) = 0 pairs"):
        load_recipe(TINY, layout)
    assert load_recipe(TINY, layout, num_processes=8).noise_detector.name == "batch_quantile"
    monkeypatch.setenv("WORLD_SIZE", "8")
    load_recipe(TINY, layout)
    cli = [sys.executable, "-m", "spa_recipes", "validate", str(TINY), *layout]
    monkeypatch.delenv("WORLD_SIZE")
    assert subprocess.run(cli, capture_output=True, text=True, timeout=60).returncode == 2
    assert subprocess.run([*cli, "--processes", "8"], capture_output=True, text=True, timeout=60).returncode == 0
