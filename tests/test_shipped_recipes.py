"""Every shipped recipe loads and validates.

Recipes under recipes/base/ are partial by design: they hold the paper's hyperparameters and leave out
what names an experiment (run, models, data, split), so on their own they fail with "required key is
missing". Each base is validated through a small recipe that extends it and adds just those sections: any
key the base sets is then checked (names, types, components, cross-section rules) exactly as a real recipe
would check it. Every other recipe must validate on its own.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from spa_recipes.errors import RecipeError
from spa_recipes.paths import SHIPPED_RECIPES, shipped_recipes
from spa_recipes.recipe import load_recipe, recipe_to_dict

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
BASES = [p for p in RECIPES if p.parent.name == "base"]
COMPLETE = [p for p in RECIPES if p not in BASES]


def _id(path: Path) -> str:
    return str(path.relative_to(REPO / "recipes"))


def test_recipes_are_found() -> None:
    assert len(RECIPES) > 0 and COMPLETE and BASES
    assert shipped_recipes() == RECIPES  # what `spa-recipe ls` lists
    assert SHIPPED_RECIPES == REPO / "recipes"


# Model folders a shipped recipe expects a documented script to have made (relative to the working directory).
# scripts/smollm2_checkpoint.py makes SmolLM2's, for smollm2_spa_cpu.yaml and the recipes in smollm2/ that extend it.
SMOLLM2 = "runs/models/smollm2-135m-instruct"
MADE_BY_SCRIPTS = {
    "smollm2_spa_cpu.yaml": SMOLLM2,
    "smollm2_spa_lora_cpu.yaml": SMOLLM2,
    **{f"smollm2/{m}.yaml": SMOLLM2 for m in ("dice", "cream", "self_rewarding", "spin")},
}


@pytest.mark.parametrize("path", COMPLETE, ids=_id)
def test_complete_recipe_validates(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = MADE_BY_SCRIPTS.get(_id(path))
    if folder:
        monkeypatch.chdir(tmp_path)
        with pytest.raises(RecipeError, match=f"models.sft: no such folder: {folder}"):
            load_recipe(path)  # before the script has run: a clear error, before anything loads
        (tmp_path / folder).mkdir(parents=True)
    recipe = load_recipe(path)
    assert recipe.run.name
    assert recipe_to_dict(recipe)["run"]["name"] == recipe.run.name


@pytest.mark.parametrize("path", BASES, ids=_id)
def test_base_recipe_validates_when_extended(path: Path, tmp_path: Path) -> None:
    wrapper = tmp_path / "extends_base.yaml"
    wrapper.write_text(
        textwrap.dedent(f"""\
        extends: {path}
        run: {{name: base_check}}
        models: {{sft: some/sft-model}}
        data: {{name: toy_world}}
        split: {{prompts_per_iteration: 100}}
    """)
    )
    shown = recipe_to_dict(load_recipe(wrapper))
    # Every value the base writes out (interpolations aside) is what the validated recipe holds.
    leaves = _leaves(yaml.safe_load(path.read_text()))
    assert leaves
    for dotted, value in leaves.items():
        if dotted == "extends" or (isinstance(value, str) and "${" in value):
            continue
        node = shown
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix: node}
    found: dict[str, object] = {}
    for key, value in node.items():
        found.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return found
