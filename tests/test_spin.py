"""SPIN's pieces: prompt demonstrations from the data sources, the ``none`` judge, the ``demonstration`` pair
selector, the validation error without demonstrations, and one shrunk real run of the toy world."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from spa_recipes.api import PROMPT_DEMONSTRATIONS, offers
from spa_recipes.data.config import PreferenceFileConfig
from spa_recipes.data.preferences import PreferenceFile
from spa_recipes.errors import DataError, RecipeError
from spa_recipes.judges.config import NoJudgeConfig
from spa_recipes.judges.none import NoJudge
from spa_recipes.pairs import DemonstrationSelector
from spa_recipes.pairs_config import DemonstrationSelectorConfig
from spa_recipes.recipe import load_recipe
from spa_recipes.rules.config import RulePromptsConfig
from spa_recipes.rules.world import RulePrompts
from spa_recipes.toyworld.config import ToyWorldConfig
from spa_recipes.toyworld.world import ToyWorld, prompt_topic

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny_spa.yaml"


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Demonstrations on prompt rows ------------------------------------------------------------------------


def test_toy_world_rows_carry_deterministic_demonstrations() -> None:
    cfg = ToyWorldConfig(num_prompts=50, sft_demonstrations=0, world_seed=3)
    first, second = ToyWorld(cfg).rows(), ToyWorld(cfg).rows()
    assert first == second
    assert all(isinstance(r["demonstration"], str) and r["demonstration"] for r in first)
    assert len({r["demonstration"] for r in first}) == len(first)  # one per row, not one text for all
    # Drawn as the SFT demonstrations are: 8-24 words, mostly words of the language.
    assert all(8 <= len(r["demonstration"].split()) <= 24 for r in first)
    assert prompt_topic(first[0]["prompt"])  # a world prompt
    # Seeded by row id: another world seed gives other text; the rows' pairs do not move with it.
    other = ToyWorld(ToyWorldConfig(num_prompts=50, sft_demonstrations=0, world_seed=4)).rows()
    assert [r["demonstration"] for r in other] != [r["demonstration"] for r in first]
    assert offers(cfg, PROMPT_DEMONSTRATIONS)


def test_rule_world_demonstration_is_the_answer_with_the_rule() -> None:
    cfg = RulePromptsConfig(num_prompts=20)
    rows = RulePrompts(cfg).rows()
    assert rows == RulePrompts(cfg).rows()
    assert all(r["demonstration"] == r["chosen"] != r["rejected"] for r in rows)
    assert offers(cfg, PROMPT_DEMONSTRATIONS)


def test_preference_file_demonstration_column(tmp_path: Path) -> None:
    rows = [{"prompt": f"q {i}", "chosen": f"good {i}", "rejected": f"bad {i}", "demo": f"demo {i}"} for i in range(4)]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    with_column = PreferenceFileConfig(path=str(path), demonstration_column="demo")
    assert [r["demonstration"] for r in PreferenceFile(with_column).rows()] == [f"demo {i}" for i in range(4)]
    assert offers(with_column, PROMPT_DEMONSTRATIONS)
    # The chosen column may serve; without a column there is none, and the config says so.
    chosen = PreferenceFileConfig(path=str(path), demonstration_column="chosen")
    assert [r["demonstration"] for r in PreferenceFile(chosen).rows()] == [f"good {i}" for i in range(4)]
    without = PreferenceFileConfig(path=str(path))
    assert "demonstration" not in PreferenceFile(without).rows()[0]
    assert not offers(without, PROMPT_DEMONSTRATIONS)
    assert offers(PreferenceFileConfig, PROMPT_DEMONSTRATIONS)  # the kind can offer it


def test_preference_file_row_without_demonstration_is_one_line_error(tmp_path: Path) -> None:
    rows = [{"prompt": f"q {i}", "chosen": f"good {i}", "rejected": f"bad {i}", "demo": f"d {i}"} for i in range(3)]
    rows[1]["demo"] = None
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    source = PreferenceFile(PreferenceFileConfig(path=str(path), demonstration_column="demo"))
    with pytest.raises(DataError) as info:
        source.rows()
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "row 1 " in message and "'demo'" in message
    with pytest.raises(DataError):  # asking again raises again
        source.rows()
    missing = PreferenceFile(PreferenceFileConfig(path=str(path), demonstration_column="answer"))
    with pytest.raises(DataError, match="no record has demonstration_column 'answer'"):
        missing.rows()


# The none judge ----------------------------------------------------------------------------------------


def test_none_judge_scores_zero_and_keeps_fields() -> None:
    rows = [
        {"id": "a", "prompt": [], "responses": ["x", "y", "z"], "demonstration": "d"},
        {"id": "b", "prompt": [], "responses": ["u", "v", "w"]},
    ]
    judged = NoJudge(NoJudgeConfig()).score(rows)
    assert [r["scores"] for r in judged] == [[0.0] * 3] * 2
    assert [r["valid"] for r in judged] == [[True] * 3] * 2
    assert judged[0]["demonstration"] == "d" and judged[1]["id"] == "b"
    assert "scores" not in rows[0]  # the input rows are left alone


# The demonstration selector ------------------------------------------------------------------------------


def _judged(row_id: str, responses: list[str], valid: list[bool], demonstration: str | None) -> dict:
    row = {"id": row_id, "prompt": [{"role": "user", "content": row_id}], "responses": responses}
    row |= {"scores": [float(i) for i in range(len(responses))], "valid": valid}
    return row if demonstration is None else {**row, "demonstration": demonstration}


def test_demonstration_selector_pairs_demonstration_with_a_sample() -> None:
    rows = [
        _judged("plain", ["s0", "s1"], [True, True], "demo"),
        _judged("first_invalid", ["s0", "s1"], [False, True], "demo"),
        _judged("first_is_demo", ["demo", "s1"], [True, True], "demo"),
        _judged("all_demo", ["demo", "demo"], [True, True], "demo"),
        _judged("none_valid", ["s0", "s1"], [False, False], "demo"),
        _judged("no_demo", ["s0", "s1"], [True, True], None),
    ]
    pairs, counts = DemonstrationSelector(DemonstrationSelectorConfig()).select(rows, seed=0)
    assert [(p["id"], p["chosen"], p["rejected"], p["rejected_index"]) for p in pairs] == [
        ("plain", "demo", "s0", 0),
        ("first_invalid", "demo", "s1", 1),
        ("first_is_demo", "demo", "s1", 1),
    ]
    assert all(p["chosen_index"] == -1 and p["chosen_score"] == 0.0 for p in pairs)
    assert [p["rejected_score"] for p in pairs] == [0.0, 1.0, 1.0]
    assert set(pairs[0]) == {
        "id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "chosen_index", "rejected_index",
    }  # fmt: skip
    assert counts == {
        "rows": 6,
        "pairs": 3,
        "invalid_responses": 3,
        "dropped_invalid": 1,
        "dropped_identical": 1,
        "kept_identical": 0,
        "dropped_tie": 0,
        "kept_tie": 0,
        "dropped_no_demonstration": 1,
    }
    kept, kept_counts = DemonstrationSelector(DemonstrationSelectorConfig(drop_identical=False)).select(rows, seed=0)
    assert [p["id"] for p in kept] == ["plain", "first_invalid", "first_is_demo", "all_demo"]
    assert kept[-1]["rejected"] == "demo" and kept_counts["kept_identical"] == 1


# Validation ----------------------------------------------------------------------------------------------


def test_selector_needs_a_source_with_demonstrations(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        run: {{name: r}}
        models: {{sft: some/model}}
        data: {{name: preference_file, path: {path}}}
        split: {{prompts_per_iteration: 4}}
        judge: {{name: none}}
        pair_selector: {{name: demonstration}}
    """)
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith("pair_selector:") and "preference_file" in problem and "demonstration_column" in problem
    load_recipe(recipe, ["data.demonstration_column=chosen"])  # with a column, the same recipe is valid


# A real run ---------------------------------------------------------------------------------------------
