"""Padding-free packing: the layout, and the same log-probs, losses and gradients as one sequence per forward pass."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers_tiny import make_tiny_model
from test_training import planted_pairs, run_dpo, section

import spa_recipes.training.preference as preference
from spa_recipes.modeling import load_model, load_tokenizer
from spa_recipes.packing import (
    PackedLogits,
    forward_packed,
    layout_for,
    output_head,
    pack,
    sequence_logps,
    sequence_sums,
    token_logps,
)
from spa_recipes.sequences import encode_sequences

PAD = 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("packing") / "model", vocab=64, hidden=32, seed=5))


def encoded(tiny: str, n: int = 24, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``n`` (prompt, response) sequences of mixed lengths (2-12 prompt words, 0-20 response words); a prompt
    has 1-3 responses, not always next to each other."""
    rng = random.Random(seed)
    words = lambda k: " ".join(f"w{rng.randrange(1, 50)}" for _ in range(k))  # noqa: E731
    prompts: list[list[dict[str, str]]] = []
    while len(prompts) < n:
        prompts += [[{"role": "user", "content": words(rng.randrange(2, 13))}]] * rng.randrange(1, 4)
    prompts = prompts[:n]
    rng.shuffle(prompts)
    responses = [words(rng.randrange(0, 21)) for _ in range(n)]
    return encode_sequences(load_tokenizer(tiny), prompts, responses)


def one_at_a_time(model: torch.nn.Module, sequences: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """The plain formula, each sequence alone in its own forward pass: no padding, no packing."""
    out = []
    for ids, labels in sequences:
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        out.append(sum(logprobs[t - 1, ids[t]] for t in range(1, len(ids)) if labels[t] != -100))
    return torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in out])


def test_pack_lays_out_rows_first_fit_with_restarting_positions() -> None:
    seqs = [([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5]), ([6, 7, 8, 9, 10], [-100, -100, 8, 9, 10]), ([11], [11])]
    batch = pack(seqs, PAD, width=6, layout="packed")
    # Longest first, first fit: [5 | 1], [3, 2 | pad].
    assert batch.input_ids.tolist() == [[6, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, PAD]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 0]]
    assert batch.attention_mask is None and batch.packed
    # Each response token predicted from the position before it in its own sequence; a sequence's first
    # token never (sequence 3 is one token: nothing to predict).
    targets = zip(*(t.tolist() for t in (batch.target_row, batch.target_source, batch.target_token)), strict=True)
    assert sorted(targets) == [(0, 1, 8), (0, 2, 9), (0, 3, 10), (1, 0, 2), (1, 1, 3), (1, 3, 5)]
    assert (batch.count, batch.longest, batch.positions) == (4, 5, 12)
    # Default width: twice the longest (rows of [5, 3, 2], [1]: 20 positions) or the longest ([5], [3, 2], [1]:
    # 15), the fewer positions; rows cut to the fullest. One per row: right padding, positions run on through it.
    assert pack(seqs, PAD, layout="packed").input_ids.shape == (3, 5)
    assert pack(seqs[:3], PAD, layout="packed").input_ids.shape == (1, 10)
    assert pack(seqs[2:3], PAD, layout="packed").input_ids.shape == (1, 5)
    alone = pack(seqs, PAD, layout="padded")
    assert alone.input_ids.tolist() == [[1, 2, 3, PAD, PAD], [4, 5, PAD, PAD, PAD], [6, 7, 8, 9, 10], [11] + [PAD] * 4]
    assert alone.position_ids.tolist() == [list(range(5))] * 4 and not alone.packed
    assert pack(seqs, PAD, width=2, layout="packed").input_ids.shape[1] == 5  # never narrower than the longest


def test_pack_shares_a_prompt_between_its_responses() -> None:
    # A pair (prompt 7 8, responses 1 2 / 3) and a sequence with another prompt (7 9).
    seqs = [([7, 8, 1, 2], [-100, -100, 1, 2]), ([7, 9, 5], [-100, -100, 5]), ([7, 8, 3], [-100, -100, 3])]
    batch = pack(seqs, PAD, width=8)
    assert batch.input_ids.tolist() == [[7, 8, 1, 2, 3, 7, 9, 5]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1, 2]]
    mask = batch.attention_mask[0, 0].int().tolist()
    assert mask[4] == [1, 1, 0, 0, 1, 0, 0, 0]  # the second response sees the prompt and itself, not the first
    assert mask[3] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert mask[7] == [0, 0, 0, 0, 0, 1, 1, 1]  # the other block: nothing of the first
    # Both responses' first tokens are predicted from the prompt's last position (column 1).
    targets = zip(*(t.tolist() for t in (batch.target_source, batch.target_token, batch.target_sequence)), strict=True)
    assert sorted(targets) == [(1, 1, 0), (1, 3, 2), (2, 2, 0), (6, 5, 1)]
    # More responses than fit in a row: another block, with the prompt again.
    many = [([7, 8, a, b], [-100, -100, a, b]) for a, b in [(1, 2), (3, 4), (5, 6)]]
    assert pack(many, PAD, width=6).input_ids.tolist() == [[7, 8, 1, 2, 3, 4], [7, 8, 5, 6, PAD, PAD]]
    # A sequence that comes again is computed once, and both copies get its targets.
    twice = pack([many[0], many[1], many[0]], PAD, width=8)
    assert twice.input_ids.tolist() == [[7, 8, 1, 2, 3, 4]]  # cut to the fullest row
    assert twice.target_sequence.tolist().count(0) == 2 and 2 not in twice.target_sequence.tolist()
    assert twice.copy_of.tolist() == [0, 1, 0]


@pytest.mark.parametrize(("dtype", "attention"), [("float32", "sdpa"), ("bfloat16", "sdpa"), ("float32", "eager")])
def test_packed_logps_equal_one_sequence_at_a_time(tiny: str, dtype: str, attention: str) -> None:
    model = load_model(tiny, dtype=dtype)
    model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    seqs = encoded(tiny)
    with torch.no_grad():
        expected = one_at_a_time(model, seqs)
        lengths = torch.tensor([sum(lab != -100 for lab in labels[1:]) for _, labels in seqs])
        tol = 1e-4 if dtype == "float32" else 0.15  # bf16: matmuls of other shapes round differently
        layouts = [(None, "shared"), (1, "shared"), (200, "shared"), (200, "packed"), (None, "padded")]
        if layout_for(model) == "packed":  # eager attention adds its masks: it gets position ids, not our mask
            layouts = [(None, "packed"), (200, "packed"), (None, "padded")]
        for width, layout in layouts:
            batch = pack(seqs, PAD, width=width, layout=layout)
            logps, got_lengths = sequence_logps(model, batch, head=output_head(model) if width else None)
            assert logps.dtype == torch.float32
            torch.testing.assert_close(logps, expected, atol=tol, rtol=0)
            assert torch.equal(got_lengths, lengths)
    shared = pack(seqs, PAD, width=200)
    assert shared.input_ids.shape[0] < len(seqs) // 3 and shared.attention_mask is not None  # it packed and shared
    assert shared.positions < pack(seqs, PAD, width=200, layout="packed").positions


def test_attention_does_not_cross_sequences(tiny: str) -> None:
    model = load_model(tiny, dtype="float32")
    seqs = encoded(tiny, n=8)
    changed = list(seqs)
    ids, labels = changed[0]
    changed[0] = ([ids[0]] + [(t + 7) % 50 + 1 for t in ids[1:]], labels)  # same length, other tokens
    with torch.no_grad():
        before, _ = sequence_logps(model, pack(seqs, PAD, width=1000))
        after, _ = sequence_logps(model, pack(changed, PAD, width=1000))
    assert pack(seqs, PAD, width=1000).input_ids.shape[0] == 1  # all eight in one row
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1:], after[1:], atol=1e-5, rtol=0)


def test_packed_loss_gradients_equal_one_sequence_at_a_time(tiny: str) -> None:
    seqs = encoded(tiny, n=12, seed=1)
    weights = torch.linspace(-1.0, 2.0, len(seqs))
    grads = []
    for packed in (False, True):
        model = load_model(tiny, dtype="float32").train()
        if packed:
            logps, _ = sequence_logps(model, pack(seqs, PAD), head=output_head(model))
        else:
            logps = one_at_a_time(model, seqs)
        (logps * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-4, rtol=1e-4, msg=name)


def test_lm_head_runs_only_where_a_response_token_is_predicted(tiny: str) -> None:
    model = load_model(tiny, dtype="float32")
    seqs = encoded(tiny, n=6, seed=2)
    seen: list[tuple[int, ...]] = []
    hook = model.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape[:2])))
    batch = pack(seqs, PAD)
    try:
        with torch.no_grad():
            trimmed = forward_packed(model, batch, head=output_head(model))
            full = forward_packed(model, batch)
    finally:
        hook.remove()
    assert seen == [(1, len(batch.target_token)), tuple(batch.input_ids.shape)]
    assert len(batch.target_token) < batch.input_ids.numel()
    torch.testing.assert_close(trimmed.logits, full.logits, atol=1e-5, rtol=0)
    assert torch.equal(trimmed.targets, full.targets)
    assert output_head(torch.nn.Linear(2, 2)) is None


def test_token_logps_and_sums_equal_the_full_formula_with_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 13, generator=g)
    targets = torch.randint(0, 13, (7,), generator=g)
    # Three sequences: tokens at offsets 1, 2, 3 of sequence 0; 1, 2 of sequence 2; none in sequence 1.
    out = PackedLogits(
        logits, targets, torch.tensor([0, 0, 0, 2, 2, 0, 2]), torch.tensor([1, 2, 3, 1, 2, 4, 3]), torch.arange(3)
    )
    mine = logits.clone().requires_grad_(True)
    plain = logits.clone().requires_grad_(True)
    sums = sequence_sums(token_logps(mine, targets), out, count=3, width=5)
    token = F.log_softmax(plain, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    expected = torch.stack([token[[0, 1, 2, 5]].sum(), torch.tensor(0.0), token[[3, 4, 6]].sum()])
    torch.testing.assert_close(sums, expected, atol=1e-6, rtol=0)
    weights = torch.tensor([1.0, -2.0, 0.5])
    (sums * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(mine.grad, plain.grad, atol=1e-6, rtol=0)
    # Half-precision logits are normalised in float32; in place only when asked and without a gradient.
    half = token_logps(logits.bfloat16(), targets)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, token_logps(logits.bfloat16().float(), targets), atol=0, rtol=0)
    scratch = logits.clone()
    torch.testing.assert_close(token_logps(scratch, targets, in_place=True), token.detach(), atol=1e-6, rtol=0)
    assert not torch.equal(scratch, logits)  # overwritten by its log-softmax


def test_layout_for_the_attention_implementation(tiny: str) -> None:
    model = load_model(tiny, dtype="float32")
    assert layout_for(model) == "shared"
    model.set_attn_implementation("eager")
    assert layout_for(model) == "packed"

    class RemoteCode(type(model)):  # a model class from outside transformers (trust_remote_code)
        pass

    model.__class__ = RemoteCode
    assert layout_for(model) == "padded"
    assert layout_for(torch.nn.Linear(2, 2)) == "padded"


def test_dpo_packed_trains_the_same_weights_as_one_sequence_per_row(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs, _ = planted_pairs(24, 0.0, seed=3)
    packed = run_dpo(tiny, tmp_path / "packed", pairs, section(batch_size=8))
    monkeypatch.setattr(preference, "layout_for", lambda model: "padded")  # the layout of a model that cannot pack
    alone = run_dpo(tiny, tmp_path / "alone", pairs, section(batch_size=8))
    assert packed["final_loss"] == pytest.approx(alone["final_loss"], abs=1e-5)
    a, b = load_model(str(tmp_path / "packed" / "out")), load_model(str(tmp_path / "alone" / "out"))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)
    assert packed["final_loss"] < 0.69  # it trained: below log 2, the loss of equal log-ratios


def test_sft_counts_a_repeated_example_as_often_as_it_comes(tiny: str, tmp_path: Path) -> None:
    """Packing computes an example the micro-batch holds twice once; the SFT loss still weighs it twice."""
    from spa_recipes.training.sft import train_sft

    tokenizer = load_tokenizer(tiny)
    rows = [{"prompt": [{"role": "user", "content": f"w{i}"}], "response": f"w{i + 1} w{i + 2}"} for i in range(3)]
    twice = [rows[0], rows[0], rows[1], rows[2]]
    losses = []
    for name, examples in (("twice", twice), ("alone", [rows[0], rows[1], rows[2]])):
        summary = train_sft(
            examples,
            model=tiny,
            tokenizer=tokenizer,
            output_dir=tmp_path / name / "model",
            work_dir=tmp_path / name / "work",
            training=section(batch_size=4, learning_rate=1e-9),
            seed=0,
            progress=False,
        )
        losses.append(summary["first_loss"])
    model = load_model(tiny, dtype="float32")
    seqs = encode_sequences(tokenizer, [r["prompt"] for r in twice], [r["response"] for r in twice])
    with torch.no_grad():
        per_token = [(one_at_a_time(model, [s]).item(), sum(lab != -100 for lab in s[1][1:])) for s in seqs]
    expected = -sum(lp for lp, _ in per_token) / sum(n for _, n in per_token)
    assert losses[0] == pytest.approx(expected, abs=1e-4)
    assert losses[0] != pytest.approx(losses[1], abs=1e-4)
