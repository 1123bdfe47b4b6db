"""The implicit-reward judge against a direct computation with the two models, and the sequence scoring under it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import spa_recipes.judges.implicit as implicit
from spa_recipes.api import JudgeContext
from spa_recipes.judges import Judge
from spa_recipes.judges.config import ImplicitJudgeConfig
from spa_recipes.judges.implicit import ImplicitRewardJudge
from spa_recipes.modeling import load_model, load_tokenizer
from spa_recipes.sequences import (
    collate,
    encode_prompt,
    encode_response,
    encode_responses,
    encode_sequences,
    join_prompt_response,
    length_sorted_batches,
    score_sequences,
)

ROWS = [
    {"id": "r0", "prompt": [{"role": "user", "content": "w1 w2"}], "responses": ["w3 w4 w5", "w6"]},
    {"id": "r1", "prompt": [{"role": "user", "content": "w7"}], "responses": ["", "w8 w9 w10 w11 w12 w13"]},
    {"id": "r2", "prompt": [{"role": "user", "content": "w14 w15 w16"}], "responses": ["w17 w18", "w17 w18"]},
]


def direct_logps(path: str, rows: list[dict]) -> list[list[float]]:
    """Sum of log-probs of each response + EOS after its chat-templated prompt, one sequence at a time."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for row in rows:
        text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        logps = []
        for response in row["responses"]:
            answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt + answer])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            logps.append(sum(logprobs[len(prompt) + j - 1, tok].item() for j, tok in enumerate(answer)))
        out.append(logps)
    return out


def make_judge(models: dict[str, str], previous: str | None = "c", **cfg) -> ImplicitRewardJudge:
    context = JudgeContext(
        policy_path=models["a"],
        sft_path=models["b"],
        previous_path=models[previous] if previous else None,
        dtype="float32",
        device="cpu",
    )
    return ImplicitRewardJudge(ImplicitJudgeConfig(**cfg), context)


def assert_scores(rows: list[dict], expected: list[list[float]]) -> None:
    for row, exp in zip(rows, expected, strict=True):
        assert row["scores"] == pytest.approx(exp, abs=1e-4)


def test_implicit_judge_against_sft_reference(tiny_models: dict[str, str]) -> None:
    judge = make_judge(tiny_models, beta=0.1, batch_size=2)
    assert isinstance(judge, Judge)
    policy, sft = direct_logps(tiny_models["a"], ROWS), direct_logps(tiny_models["b"], ROWS)
    rows = judge.score(ROWS)
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"]
    assert all(r["responses"] == src["responses"] for r, src in zip(rows, ROWS, strict=True))
    assert_scores(
        rows, [[0.1 * (p - s) for p, s in zip(ps, ss, strict=True)] for ps, ss in zip(policy, sft, strict=True)]
    )
    for row, ps in zip(rows, policy, strict=True):
        assert row["policy_logps"] == pytest.approx(ps, abs=1e-4)
        assert row["valid"] == [True, True]
    # Identical responses get identical rewards.
    assert rows[2]["scores"][0] == rows[2]["scores"][1]


def test_implicit_judge_previous_and_none_references(tiny_models: dict[str, str]) -> None:
    policy = direct_logps(tiny_models["a"], ROWS)
    previous = direct_logps(tiny_models["c"], ROWS)
    sft = direct_logps(tiny_models["b"], ROWS)
    rows = make_judge(tiny_models, reference="previous", beta=0.5).score(ROWS)
    assert_scores(
        rows, [[0.5 * (p - q) for p, q in zip(ps, qs, strict=True)] for ps, qs in zip(policy, previous, strict=True)]
    )
    # Iteration 1: the model before the policy is the SFT model.
    rows = make_judge(tiny_models, previous=None, reference="previous", beta=0.5).score(ROWS)
    assert_scores(
        rows, [[0.5 * (p - s) for p, s in zip(ps, ss, strict=True)] for ps, ss in zip(policy, sft, strict=True)]
    )
    rows = make_judge(tiny_models, reference="none", beta=0.2).score(ROWS)
    assert_scores(rows, [[0.2 * p for p in ps] for ps in policy])


def test_implicit_judge_previous_scores_for_cream(tiny_models: dict[str, str], tmp_path: Path) -> None:
    """The model before the policy scores against the same reference; none where it is the reference itself."""
    policy, previous, sft = (direct_logps(tiny_models[k], ROWS) for k in ("a", "c", "b"))
    rows = make_judge(tiny_models, beta=0.1, previous_scores=True).score(ROWS, out_dir=tmp_path / "shards")
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["policy", "previous", "reference"]
    assert_scores(
        rows, [[0.1 * (p - s) for p, s in zip(ps, ss, strict=True)] for ps, ss in zip(policy, sft, strict=True)]
    )
    for row, qs, ss in zip(rows, previous, sft, strict=True):
        assert row["previous_scores"] == pytest.approx([0.1 * (q - s) for q, s in zip(qs, ss, strict=True)], abs=1e-4)
    # Iteration 1: the model before the policy is the SFT model, the reference: its rewards would all be 0.
    rows = make_judge(tiny_models, previous=None, beta=0.1, previous_scores=True).score(ROWS)
    assert all(row["previous_scores"] is None for row in rows)
    assert "previous_scores" not in make_judge(tiny_models, beta=0.1).score(ROWS)[0]


def test_implicit_judge_length_normalize(tiny_models: dict[str, str]) -> None:
    policy, sft = direct_logps(tiny_models["a"], ROWS), direct_logps(tiny_models["b"], ROWS)
    lengths = [[len(r.split()) + 1 for r in row["responses"]] for row in ROWS]  # words + EOS
    rows = make_judge(tiny_models, length_normalize=True, beta=0.1).score(ROWS)
    expected = [
        [0.1 * (p - s) / n for p, s, n in zip(ps, ss, ns, strict=True)]
        for ps, ss, ns in zip(policy, sft, lengths, strict=True)
    ]
    assert_scores(rows, expected)
    for row, ps in zip(rows, policy, strict=True):  # the cached log-probs stay summed
        assert row["policy_logps"] == pytest.approx(ps, abs=1e-4)


def test_implicit_judge_does_not_depend_on_batching(tiny_models: dict[str, str]) -> None:
    one = make_judge(tiny_models, batch_size=1).score(ROWS)
    many = make_judge(tiny_models, batch_size=16).score(ROWS)
    for a, b in zip(one, many, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


def test_implicit_judge_resumes_from_shards(tiny_models: dict[str, str], tmp_path: Path) -> None:
    rows = ROWS * 3
    rows = [{**r, "id": f"{r['id']}-{i}"} for i, r in enumerate(rows)]
    judge = make_judge(tiny_models)
    judge.shard_size = 4
    first = judge.score(rows, tmp_path)
    assert sorted(p.name for p in (tmp_path / "reference").glob("shard-*")) == [
        f"shard-0000{i}.jsonl" for i in range(3)
    ]
    (tmp_path / "reference" / "shard-00001.jsonl").unlink()
    assert judge.score(rows, tmp_path) == first
    # Finished shards are reused without loading a model.
    gone = ImplicitRewardJudge(
        ImplicitJudgeConfig(), JudgeContext(policy_path="missing-a", sft_path="missing-b", shard_size=4)
    )
    assert gone.score(rows, tmp_path) == first
    # Shards of other rows are refused, not silently mixed in.
    with pytest.raises(ValueError, match="other rows"):
        judge.score([{**r, "id": r["id"] + "x"} for r in rows], tmp_path)


def test_non_finite_scores_are_invalid(tiny_models: dict[str, str], tmp_path: Path) -> None:
    # A reference whose output layer is broken (NaN weights) gives NaN log-probs for every response.
    broken = AutoModelForCausalLM.from_pretrained(tiny_models["b"])
    with torch.no_grad():
        broken.lm_head.weight[broken.config.eos_token_id] = float("nan")
    broken.save_pretrained(tmp_path / "broken")
    AutoTokenizer.from_pretrained(tiny_models["b"]).save_pretrained(tmp_path / "broken")
    judge = ImplicitRewardJudge(
        ImplicitJudgeConfig(),
        JudgeContext(policy_path=tiny_models["a"], sft_path=str(tmp_path / "broken"), dtype="float32"),
    )
    rows = judge.score(ROWS[:2])
    assert all(r["valid"] == [False, False] for r in rows)
    assert all(s != s for r in rows for s in r["scores"])  # NaN
    assert all(lp == lp for r in rows for lp in r["policy_logps"])  # the policy itself was fine


# Mixed lengths, a repeated prompt given as distinct equal objects, an empty response, and (with the limits
# used below) a prompt over max_prompt_length that still fits and a response cut at the end.
PROMPTS = [
    [{"role": "user", "content": "w1 w2"}],
    [{"role": "user", "content": " ".join(f"w{i}" for i in range(20, 32))}],
    [{"role": "user", "content": "w1 w2"}],
    [{"role": "user", "content": "w7"}],
    [{"role": "user", "content": "w3"}],
    [{"role": "user", "content": "w1 w2"}],
    [{"role": "user", "content": "w9 w8 w7 w6"}],
]
RESPONSES = ["w3 w4 w5", "w6", "", " ".join(f"w{i}" for i in range(33, 55)), "w10 w11", "w3 w4 w5", "w12"]


def test_encode_sequences_matches_encoding_each_pair(tiny_models: dict[str, str]) -> None:
    tokenizer = load_tokenizer(tiny_models["a"])
    for limits in [(None, None), (8, 20)]:
        expected = [encode_responses(tokenizer, p, [r], *limits)[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
        assert encode_sequences(tokenizer, PROMPTS, RESPONSES, *limits) == expected
    uncut = encode_sequences(tokenizer, PROMPTS, RESPONSES)
    assert uncut == [
        join_prompt_response(encode_prompt(tokenizer, p), encode_response(tokenizer, r))
        for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]
    # TRL's rule: only what exceeds 20 is cut. The 14-token prompt with a 2-token response fits whole; the
    # 3-token prompt with a 23-token response keeps its prompt, and the response is cut to 20 - 8, losing EOS.
    cut = encode_sequences(tokenizer, PROMPTS, RESPONSES, 8, 20)
    assert [len(ids) for ids, _ in uncut] == [8, 16, 5, 26, 6, 8, 8]
    assert [cut[i] == uncut[i] for i in range(len(cut))] == [True, True, True, False, True, True, True]
    ids, labels = cut[3]
    assert ids == uncut[3][0][:15] and labels.count(-100) == 3 and ids[-1] != tokenizer.eos_token_id
    assert encode_sequences(tokenizer, [], []) == []
    with pytest.raises(ValueError, match="7 prompts but 6 responses"):
        encode_sequences(tokenizer, PROMPTS, RESPONSES[:-1])


def test_length_sorted_batches() -> None:
    lengths = [3, 9, 3, 5, 9, 1, 5]
    assert length_sorted_batches(lengths, 3) == [[1, 4, 3], [6, 0, 2], [5]]
    assert length_sorted_batches([], 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(lengths, 0)


def test_collate_right_pads_mixed_lengths() -> None:
    batch = collate([([5, 6, 7], [-100, 6, 7]), ([8], [8])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


@pytest.mark.parametrize("limits", [(None, None), (8, 20)])
def test_score_sequences_matches_one_sequence_at_a_time(tiny_models: dict[str, str], limits: tuple) -> None:
    tokenizer = load_tokenizer(tiny_models["a"])
    model = load_model(tiny_models["a"], dtype="float32", device="cpu")
    expected, expected_lengths = [], []
    for p, r in zip(PROMPTS, RESPONSES, strict=True):
        ids, labels = encode_responses(tokenizer, p, [r], *limits)[0]
        prompt = ids[: labels.count(-100)]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        response = range(len(prompt), len(ids))
        expected.append(sum(logprobs[t - 1, ids[t]].item() for t in response))
        expected_lengths.append(len(response))
    # Batches of 3 over 7 mixed lengths: length sorting puts other sequences together than input order.
    for batch_size in (1, 3, 16):
        cut = {"max_prompt_length": limits[0], "max_length": limits[1]}
        logps, lengths = score_sequences(model, tokenizer, PROMPTS, RESPONSES, batch_size=batch_size, **cut)
        assert logps.tolist() == pytest.approx(expected, abs=1e-5)
        assert lengths.tolist() == expected_lengths
    logps, lengths = score_sequences(model, tokenizer, [], [], batch_size=4)
    assert logps.shape == lengths.shape == (0,)


def test_implicit_judge_tokenizes_each_response_once(
    tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counting(tokenizer, prompts, responses, *args, **kwargs):
        calls.append(len(responses))
        return encode_sequences(tokenizer, prompts, responses, *args, **kwargs)

    monkeypatch.setattr(implicit, "encode_sequences", counting)
    expected = make_judge(tiny_models).score(ROWS)
    assert calls == [6]  # one encoding, scored by the policy and the reference
    rows = [{**r, "id": f"{r['id']}-{i}"} for i, r in enumerate(ROWS * 3)]
    judge = make_judge(tiny_models)
    judge.shard_size = 4
    calls.clear()
    sharded = judge.score(rows, tmp_path)
    assert calls == [8, 8, 2]  # once per shard
    for row, exp in zip(sharded, expected * 3, strict=True):
        assert row["scores"] == pytest.approx(exp["scores"], abs=1e-5)
    calls.clear()
    make_judge(tiny_models, reference="none").score(ROWS)
    assert calls == [6]
