"""The embedded toy world: tokenizer, data, gold preference, the tiny Llama and the gold judge."""

from __future__ import annotations

import statistics

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from spa_recipes.api import JudgeContext, ModelContext
from spa_recipes.errors import DataError
from spa_recipes.evaluation import judge_compare
from spa_recipes.judges.base import Judge
from spa_recipes.registry import Registry
from spa_recipes.sequences import encode_prompt, encode_response, render_prompt
from spa_recipes.toyworld import ToyWorld
from spa_recipes.toyworld.config import GoldJudgeConfig, TinyLlamaConfig, ToyWorldConfig
from spa_recipes.toyworld.gold import GoldJudge
from spa_recipes.toyworld.model import build_tiny_llama
from spa_recipes.toyworld.world import (
    EMPTY_SCORE,
    FILLERS,
    MAX_WORDS,
    MIN_WORDS,
    RUDE,
    SPECIAL_TOKENS,
    TOPIC_WORDS,
    VOCABULARY,
)


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return ToyWorld(ToyWorldConfig(num_prompts=300, sft_demonstrations=1000, world_seed=3))


@pytest.fixture(scope="module")
def tokenizer(world: ToyWorld):
    return world.tokenizer()


def _prompt(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"#{topic} " + " ".join(TOPIC_WORDS[topic][:3])}]


# Tokenizer ----------------------------------------------------------------------------------------


def test_vocabulary_is_a_few_hundred_distinct_words(tokenizer) -> None:
    assert len(VOCABULARY) == len(set(VOCABULARY)) == 283
    assert len(tokenizer) == 283
    assert tokenizer.convert_ids_to_tokens(list(range(len(VOCABULARY)))) == VOCABULARY
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}) == 4


def test_chat_template_renders_the_prompt_and_generation_prompt(world: ToyWorld, tokenizer) -> None:
    prompt = world.rows()[0]["prompt"]
    content = prompt[0]["content"]
    assert render_prompt(tokenizer, prompt) == f"<bos> <user> {content} <assistant>"
    ids = encode_prompt(tokenizer, prompt)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "<user>", *content.split(), "<assistant>"]
    assert tokenizer.unk_token_id not in ids
    conversation = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "#food bread"},
        {"role": "assistant", "content": "cheese and bread"},
        {"role": "user", "content": "#food soup"},
    ]
    rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    expected = "<bos> <system> be kind <user> #food bread <assistant> cheese and bread <eos> <user> #food soup"
    assert rendered == expected + " <assistant>"
    with pytest.raises(Exception, match="roles"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_world_text_round_trips_through_ids(world: ToyWorld, tokenizer) -> None:
    texts = [t for row in world.rows()[:100] for t in (row["chosen"], row["rejected"])]
    texts += [d["response"] for d in world.demonstrations()[:100]]
    texts.append(" ".join(VOCABULARY[len(SPECIAL_TOKENS) :]))  # every non-special word once
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
        # As a generator stores a sampled response: ids ending in EOS, specials skipped.
        assert tokenizer.decode(encode_response(tokenizer, text), skip_special_tokens=True) == text
    assert tokenizer("orbit zzz", add_special_tokens=False)["input_ids"][1] == tokenizer.unk_token_id


# Data ---------------------------------------------------------------------------------------------


def test_world_is_deterministic_given_its_seed() -> None:
    cfg = ToyWorldConfig(num_prompts=40, sft_demonstrations=60, world_seed=11)
    a, b = ToyWorld(cfg), ToyWorld(cfg)
    assert a.rows() == b.rows()
    assert a.demonstrations() == b.demonstrations()
    other = ToyWorld(cfg.model_copy(update={"world_seed": 12}))
    assert other.rows() != a.rows()
    assert other.demonstrations() != a.demonstrations()
    # The two sets do not depend on each other's count; a longer dataset extends a shorter one.
    bigger = ToyWorld(cfg.model_copy(update={"num_prompts": 80, "sft_demonstrations": 30}))
    assert bigger.rows()[:40] == a.rows()
    assert bigger.demonstrations() == a.demonstrations()[:30]


def test_rows_have_the_preference_schema_and_distinct_prompts(world: ToyWorld) -> None:
    rows = world.rows()
    assert len(rows) == 300
    assert len({r["id"] for r in rows}) == 300
    assert len({r["prompt"][0]["content"] for r in rows}) == 300
    for row in rows:
        assert set(row) == {"id", "prompt", "chosen", "rejected", "demonstration"}
        assert [m["role"] for m in row["prompt"]] == ["user"]
        for response in (row["chosen"], row["rejected"]):
            assert MIN_WORDS <= len(response.split()) <= MAX_WORDS
    rows[0]["chosen"] = "mutated"  # callers get copies
    assert world.rows()[0]["chosen"] != "mutated"


def test_gold_orders_chosen_above_rejected(world: ToyWorld) -> None:
    for row in world.rows():
        assert world.gold_score(row["prompt"], row["chosen"]) > world.gold_score(row["prompt"], row["rejected"])


def test_demonstrations_are_disjoint_from_rows_and_spread_in_quality(world: ToyWorld) -> None:
    demos = world.demonstrations()
    assert len(demos) == 1000
    row_prompts = {r["prompt"][0]["content"] for r in world.rows()}
    assert not row_prompts & {d["prompt"][0]["content"] for d in demos}
    assert all(MIN_WORDS <= len(d["response"].split()) <= MAX_WORDS for d in demos)
    scores = [world.gold_score(d["prompt"], d["response"]) for d in demos]
    # A wide mix of better and worse responses, so that pi_init's samples disagree under the gold.
    assert statistics.pstdev(scores) > 0.3
    assert sum(s > 0.25 for s in scores) > 0.15 * len(scores)
    assert sum(s < -0.5 for s in scores) > 0.15 * len(scores)
    # Two demonstrations of the same topic beat each other about equally often.
    wins = sum(a > b for a, b in zip(scores[::2], scores[1::2], strict=True))
    assert 0.4 < wins / (len(scores) // 2) < 0.6


def test_too_many_prompts_is_refused() -> None:
    # The config refuses it at validation time; the world itself refuses it too (built without validation).
    with pytest.raises(ValidationError, match="num_prompts"):
        ToyWorldConfig(num_prompts=60_000)
    with pytest.raises(DataError, match="num_prompts"):
        ToyWorld(ToyWorldConfig.model_construct(num_prompts=60_000, sft_demonstrations=0, world_seed=0))


# Gold ---------------------------------------------------------------------------------------------


def test_gold_is_the_mean_per_word_value() -> None:
    world = ToyWorld(ToyWorldConfig(num_prompts=1, sft_demonstrations=0))
    space = _prompt("space")
    on, other = TOPIC_WORDS["space"], TOPIC_WORDS["food"]
    assert world.gold_score(space, " ".join(on[:5])) == 1.0
    assert world.gold_score(space, " ".join(other[:4])) == -0.5
    assert world.gold_score(space, " ".join(FILLERS[:4])) == 0.0
    assert world.gold_score(space, " ".join(RUDE[:4])) == -1.0
    assert world.gold_score(space, f"{on[0]} {other[0]} {FILLERS[0]} {RUDE[0]}") == pytest.approx(-0.125)
    # Not a response word (a tag, a special, an unknown word): as bad as a rude word.
    assert world.gold_score(space, "#space <eos> zzz") == -1.0
    # Length-neutral: repeating a response does not change its score.
    text = f"{on[0]} {FILLERS[0]} {other[1]}"
    assert world.gold_score(space, text) == world.gold_score(space, f"{text} {text} {text}")
    # The empty response is below every non-empty one.
    assert world.gold_score(space, "") == world.gold_score(space, "  ") == EMPTY_SCORE < -1.0
    # The same words are good for one topic and poor for another.
    assert world.gold_score(_prompt("food"), " ".join(other[:4])) == 1.0
    with pytest.raises(DataError, match="topic tag"):
        world.gold_score([{"role": "user", "content": "orbit comet"}], "orbit")


def test_gold_judge_meets_the_judge_contract(world: ToyWorld) -> None:
    judge = GoldJudge(GoldJudgeConfig(), JudgeContext(world=world))
    assert isinstance(judge, Judge)
    rows = [
        {"id": r["id"], "prompt": r["prompt"], "responses": [r["chosen"], r["rejected"], ""]} for r in world.rows()[:5]
    ]
    judged = judge.score(rows, None)
    assert [r["id"] for r in judged] == [r["id"] for r in rows]
    assert "scores" not in rows[0]  # the input rows are left as they were
    for row, original in zip(judged, world.rows()[:5], strict=True):
        chosen, rejected, empty = row["scores"]
        assert chosen == world.gold_score(original["prompt"], original["chosen"])
        assert chosen > rejected > empty == EMPTY_SCORE
        assert row["valid"] == [True, True, True]
    assert judge.score_responses([rows[0]["prompt"]], [rows[0]["responses"]]) == [judged[0]["scores"]]
    with pytest.raises(ValueError, match="response lists"):
        judge.score_responses([r["prompt"] for r in rows], [["a"]])
    original = world.rows()[0]
    assert judge.compare(original["prompt"], original["chosen"], original["rejected"]) == 1.0
    assert judge.compare(original["prompt"], original["rejected"], original["chosen"]) == 0.0
    assert judge.compare(original["prompt"], original["chosen"], original["chosen"]) == 0.5
    # Through the evaluation helper, as the gold evaluator is used.
    outcomes = judge_compare(judge)([original["prompt"]] * 2, ["", original["chosen"]], [original["rejected"]] * 2)
    assert outcomes == [0.0, 1.0]


def test_builtin_registrations_build_the_world_and_judges() -> None:
    registry = Registry()
    registry.load_builtins()
    world = registry.get("dataset", "toy_world").build(ToyWorldConfig(num_prompts=3, sft_demonstrations=2))
    assert isinstance(world, ToyWorld) and world.has_gold
    for kind in ("judge", "evaluator"):
        component = registry.get(kind, "gold")
        judge = component.build(component.config(), world=world)
        assert isinstance(judge, GoldJudge)


# Tiny model ---------------------------------------------------------------------------------------


def test_tiny_llama_saves_loads_and_generates_world_text(world: ToyWorld, tokenizer, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_tiny_llama(TinyLlamaConfig(), ModelContext(tokenizer))
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    prompts = [r["prompt"] for r in world.rows()[:4]]
    assert [encode_prompt(loaded_tok, p) for p in prompts] == [encode_prompt(tokenizer, p) for p in prompts]
    ids = torch.tensor([encode_prompt(loaded_tok, p) for p in prompts])  # world prompts are all 7 tokens
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, loaded(ids).logits)
        out = loaded.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, max_new_tokens=12
        )
    words = set(VOCABULARY) - set(SPECIAL_TOKENS)
    for text in loaded_tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True):
        assert set(text.split()) <= words
        assert loaded_tok.decode(loaded_tok(text, add_special_tokens=False)["input_ids"]) == text
