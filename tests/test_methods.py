"""SPA's neighbours as components: score transforms (DICE), ranking consistency (CREAM), replay, their recipes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_runner import SHRUNK, spa
from test_training import params, planted_pairs, run_dpo, section

from spa_recipes.api import RefinerContext
from spa_recipes.atomic import read_jsonl
from spa_recipes.mixers import Replay
from spa_recipes.mixers_config import ReplayConfig
from spa_recipes.pairs import MinMaxSelector, ranking_consistency
from spa_recipes.pairs_config import PairSelectorConfig
from spa_recipes.recipe import load_recipe
from spa_recipes.refiners import ConsistencyRefiner
from spa_recipes.refiners_config import ConsistencyRefinerConfig
from spa_recipes.runner.graph import build_graph
from spa_recipes.score_transforms import LengthNormalized, LengthRegularized
from spa_recipes.score_transforms_config import LengthNormalizedConfig, LengthRegularizedConfig
from spa_recipes.toyworld.config import ToyWorldConfig
from spa_recipes.toyworld.world import ToyWorld

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "w1"}]


def judged(rid: str, responses: list[str], scores: list[float], **extra: object) -> dict:
    return {
        "id": rid,
        "prompt": PROMPT,
        "responses": responses,
        "scores": scores,
        "valid": [True] * len(responses),
        "finished": [True] * len(responses),
        "num_tokens": [len(r.split()) + 1 for r in responses],
        **extra,
    }


def select(rows: list[dict], **cfg: object) -> tuple[list[dict], dict[str, int]]:
    return MinMaxSelector(PairSelectorConfig(**cfg)).select(rows, seed=0)


# CREAM: the consistency of two rankings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "previous", "expected"),
    [
        ([3, 2, 1], [30, 20, 10], 1.0),  # the same order
        ([3, 2, 1], [1, 2, 3], 0.0),  # the opposite order
        ([1, 2, 3], [1, 3, 2], 2 / 3),  # 2 concordant, 1 discordant of 3: tau 1/3
        ([1, 1, 2], [1, 2, 3], (2 / 6**0.5 + 1) / 2),  # tau-b with one tie: 2 / sqrt(2 * 3)
        ([1, 2], [2, 1], 0.0),  # K = 2: disagree
        ([1, 2], [0, 0], 1.0),  # the previous model ranks nothing apart: the label stands
    ],
)
def test_ranking_consistency_is_scaled_kendall_tau_b(current, previous, expected) -> None:
    assert ranking_consistency(current, previous, list(range(len(current)))) == pytest.approx(expected)


def test_pairs_record_consistency_only_where_the_judge_returned_previous_scores() -> None:
    rows = [
        judged("a", ["w2", "w3"], [1.0, 0.0], previous_scores=[0.5, 0.2]),
        judged("b", ["w2", "w3"], [1.0, 0.0], previous_scores=[0.2, 0.5]),
        judged("c", ["w2", "w3"], [1.0, 0.0], previous_scores=None),
    ]
    pairs, _ = select(rows)
    assert [p.get("consistency") for p in pairs] == [1.0, 0.0, None]


def test_consistency_refiner_smooths_by_one_minus_c() -> None:
    pairs = [{"id": "a", "consistency": 1.0}, {"id": "b", "consistency": 0.0}, {"id": "c", "consistency": 0.5}]
    pairs.append({"id": "seed-1"})  # a replayed human pair: no consistency, never smoothed
    flags = torch.zeros(4, dtype=torch.bool)
    ids = ["seed-1", "c", "b", "a"]
    per_pair = ConsistencyRefiner(ConsistencyRefinerConfig(average="pair"), RefinerContext(pairs=tuple(pairs)))
    smoothing, weights = per_pair.refine(flags, 0, 10, ids=ids)
    assert smoothing.tolist() == [0.0, 0.5, 1.0, 0.0] and weights.tolist() == [1.0] * 4
    dataset = ConsistencyRefiner(ConsistencyRefinerConfig(average="dataset"), RefinerContext(pairs=tuple(pairs)))
    assert dataset.refine(flags, 5, 10, ids=ids)[0].tolist() == [0.0, 0.5, 0.5, 0.5]


def test_consistency_zero_trains_like_the_swapped_labels(tmp_path: Path, tiny: str) -> None:
    """C = 0: C * DPO(y+, y-) + (1 - C) * DPO(y-, y+) is DPO on the reversed pair, through the real trainer."""
    pairs, _ = planted_pairs(16, 0.0)
    reversed_labels = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
    marked = [{**p, "consistency": 0.0} for p in pairs]
    refiner = ConsistencyRefiner(ConsistencyRefinerConfig(average="pair"), RefinerContext(pairs=tuple(marked)))
    run_dpo(tiny, tmp_path / "cream", marked, section(), refiner=refiner, refiner_per_pair=True)
    run_dpo(tiny, tmp_path / "swapped", reversed_labels, section())
    cream, swapped = params(tmp_path / "cream" / "out"), params(tmp_path / "swapped" / "out")
    for name, value in cream.items():
        torch.testing.assert_close(value, swapped[name], rtol=1e-4, atol=1e-5)  # lr 5e-3: a step moves ~1e-3
    assert not torch.equal(cream["lm_head.weight"], params(Path(tiny))["lm_head.weight"])  # it did train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    from helpers_tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", vocab=64, hidden=32))


# DICE: length-regularised scores, truncated responses, replay ----------------------------------------


def length_rows() -> list[dict]:
    """Ten rows of a 10- and a 30-character response; the long one scores 0.15, 0.25, ..., 1.05 higher."""
    short, long = "a" * 10, "b" * 30
    return [judged(str(k), [short, long], [0.0, 0.1 * k + 0.05]) for k in range(1, 11)]


def test_auto_alpha_equalises_chosen_and_rejected_lengths() -> None:
    rows = length_rows()
    transform = LengthRegularized(LengthRegularizedConfig(alpha="auto", unit="chars"))
    out, stats = transform.transform(rows, lambda r: select(r)[0])
    # The long response stays chosen while 0.1 k + 0.05 > 20 alpha: 5 of 10 rows first at alpha = 0.028.
    assert stats["alpha"] == pytest.approx(0.028)
    assert stats["length_gap_chars_before"] == 20.0 and stats["length_gap_chars"] == 0.0
    assert out[0]["scores"] == pytest.approx([0.0 - 0.028 * 10, 0.15 - 0.028 * 30])
    assert rows[0]["scores"] == [0.0, 0.1 * 1 + 0.05]  # the input rows are left alone


def test_fixed_alpha_and_length_normalised_scores() -> None:
    rows = [judged("r", ["w2 w3", "w4"], [1.0, 2.0], valid=[True, False])]
    out, stats = LengthRegularized(LengthRegularizedConfig(alpha=0.5, unit="words")).transform(rows, lambda r: [])
    assert out[0]["scores"] == [1.0 - 0.5 * 2, 2.0] and stats["alpha"] == 0.5  # an invalid score stays as it is
    out, _ = LengthNormalized(LengthNormalizedConfig()).transform(rows, lambda r: [])
    assert out[0]["scores"] == [1.0 / 3, 2.0]  # 2 words + EOS


def test_drop_truncated_leaves_out_responses_without_eos() -> None:
    rows = [judged("r", ["w2 w2 w2 w2", "w3 w3", "w4"], [3.0, 2.0, 1.0], finished=[False, True, True])]
    pairs, counts = select(rows)
    assert pairs[0]["chosen"] == "w2 w2 w2 w2" and counts["chosen_truncated"] == 1
    assert (pairs[0]["chosen_finished"], pairs[0]["rejected_finished"]) == (False, True)
    pairs, counts = select(rows, drop_truncated=True)
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("w3 w3", "w4")
    assert counts["truncated_responses"] == 1 and counts["chosen_truncated"] == 0
    one_left = [judged("s", ["w2", "w3"], [1.0, 0.0], finished=[False, True])]
    assert select(one_left, drop_truncated=True)[1]["dropped_invalid"] == 1


def pair(i: int, prefix: str) -> dict:
    return {"id": f"{prefix}{i}", "prompt": PROMPT, "chosen": "w2", "rejected": "w3"}


def test_replay_follows_dices_rule_and_is_deterministic() -> None:
    generated = [pair(i, "g") for i in range(500)]
    seed_pairs = [pair(i, "s") for i in range(50)]
    replay = Replay(ReplayConfig(fraction=0.5, source="seed"))
    mixed, counts = replay.mix(generated, seed_pairs, seed=3, iteration=1)
    # n_gen = min(N (1 - gamma), |generated|) = 25, plus gamma n_gen / (1 - gamma) = 25 seed pairs.
    assert counts == {"generated": 25, "generated_left_out": 475, "replayed": 25, "replay_short": 0}
    assert len({p["id"] for p in mixed}) == 50
    assert [p["source"] for p in mixed if p["id"].startswith("s")] == ["seed"] * 25
    assert replay.mix(generated, seed_pairs, seed=3, iteration=1)[0] == mixed  # a rerun mixes the same pairs
    assert replay.mix(generated, seed_pairs, seed=3, iteration=2)[0] != mixed
    uncapped = Replay(ReplayConfig(fraction=0.25, source="seed", cap_generated=False))
    _, counts = uncapped.mix(generated, seed_pairs, seed=3, iteration=1)
    assert counts == {"generated": 500, "generated_left_out": 0, "replayed": 50, "replay_short": 117}
    _, counts = Replay(ReplayConfig(source="previous_iteration")).mix(generated, [], seed=3, iteration=1)
    assert counts["generated"] == 500 and counts["replayed"] == 0


def test_the_mix_stage_is_placed_only_with_a_mixer() -> None:
    def stages(*overrides: str) -> dict:
        return {s.name: s for s in build_graph(load_recipe(ROOT / "recipes/tiny_spa.yaml", list(overrides)))}

    assert not any(name.endswith("_mix") for name in stages())
    seeded = stages("data_mixer.name=replay")
    assert str(seeded["iter2_mix"].inputs["pool"]) == "split.seed"
    assert str(seeded["iter2_train"].inputs["pairs"]) == "iter2_mix.pairs"
    previous = stages("data_mixer.name=replay", "data_mixer.source=previous_iteration")
    assert "pool" not in previous["iter1_mix"].inputs
    assert str(previous["iter3_mix"].inputs["pool"]) == "iter2_pairs.pairs"


# The recipes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dice", "cream", "self_rewarding", "spin"])
def test_method_recipes_validate(method: str) -> None:
    for recipe in (ROOT / "recipes/methods" / f"{method}.yaml", ROOT / "recipes/tiny" / f"{method}.yaml"):
        result = spa("validate", str(recipe))
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("method", ["dice", "cream", "self_rewarding", "spin"])
def test_tiny_method_runs_shrunk(method: str, reference_run: Path, tmp_path: Path) -> None:
    """Each method from its tiny recipe, continuing a copy of the shrunk SPA run (split, sft, seed DPO are shared)."""
    run_dir = tmp_path / "t"
    shutil.copytree(reference_run, run_dir)
    # These methods have no noise detector; SPIN has no seed DPO (training.seed.epochs=1 would bring it back).
    dropped = ("noise_detector.", "training.seed.") if method == "spin" else ("noise_detector.",)
    shrunk = [o for o in SHRUNK if not o.startswith(dropped)]
    result = spa(
        "run", str(ROOT / "recipes/tiny" / f"{method}.yaml"), *shrunk, f"run.output_dir={tmp_path}", "run.name=t",
        "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "> seed_dpo" not in result.stdout and "> sft" not in result.stdout  # shared with the SPA run
    results = json.loads((run_dir / "results.json").read_text())
    assert [m["iteration"] for m in results["models"]] == ([1, 2] if method == "spin" else [0, 1, 2])
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    if method == "dice":
        assert manifest["iter2_pairs"]["summary"]["score_transform_alpha"] >= 0.0
        mixed = read_jsonl(run_dir / "iter2_mix" / "pairs.jsonl")
        assert {p.get("source") for p in mixed} == {None, "seed"}
    if method == "cream":
        assert all("consistency" not in p for p in read_jsonl(run_dir / "iter1_pairs" / "pairs.jsonl"))
        assert all(0.0 <= p["consistency"] <= 1.0 for p in read_jsonl(run_dir / "iter2_pairs" / "pairs.jsonl"))
    if method == "self_rewarding":
        scored = read_jsonl(run_dir / "iter1_judge" / "scores.jsonl")
        assert {len(row["scores"]) for row in scored} == {4}
    if method == "spin":  # chosen = the prompt's demonstration, as the world drew it
        world = {
            r["id"]: r["demonstration"] for r in ToyWorld(ToyWorldConfig(num_prompts=200, sft_demonstrations=0)).rows()
        }
        pairs = read_jsonl(run_dir / "iter1_pairs" / "pairs.jsonl")
        assert pairs and all(p["chosen"] == world[p["id"]] and p["chosen_index"] == -1 for p in pairs)
