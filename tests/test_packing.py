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
    can_pack,
    forward_packed,
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
    """``n`` (prompt, response) sequences of mixed lengths (2-12 prompt words, 0-20 response words)."""
    rng = random.Random(seed)
    words = lambda k: " ".join(f"w{rng.randrange(1, 50)}" for _ in range(k))  # noqa: E731
    prompts = [[{"role": "user", "content": words(rng.randrange(2, 13))}] for _ in range(n)]
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
    batch = pack(seqs, PAD, width=6)
    # Longest first, first fit: [5 | 1], [3, 2 | pad].
    assert batch.input_ids.tolist() == [[6, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, PAD]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 0]]
    assert batch.sequence.tolist() == [[2, 2, 2, 2, 2, 3], [0, 0, 0, 1, 1, -1]]
    # Every sequence's first token is never predicted (from the one before it in the row).
    assert batch.labels.tolist() == [[-100, -100, 8, 9, 10, -100], [-100, 2, 3, -100, 5, -100]]
    assert (batch.count, batch.longest, batch.packed, batch.positions) == (4, 5, True, 12)
    # Default width: twice the longest; one per row: right padding, and positions run on through it.
    assert pack(seqs, PAD).input_ids.shape == (2, 10)
    alone = pack(seqs, PAD, together=False)
    assert alone.input_ids.tolist() == [[6, 7, 8, 9, 10], [1, 2, 3, PAD, PAD], [4, 5, PAD, PAD, PAD], [11] + [PAD] * 4]
    assert alone.position_ids.tolist() == [list(range(5))] * 4 and not alone.packed
    assert pack(seqs, PAD, width=2).input_ids.shape[1] == 5  # never narrower than the longest


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
        for width, together in [(None, True), (1, True), (200, True), (None, False)]:
            batch = pack(seqs, PAD, width=width, together=together)
            logps, got_lengths = sequence_logps(model, batch)
            assert logps.dtype == torch.float32
            torch.testing.assert_close(logps, expected, atol=tol, rtol=0)
            assert torch.equal(got_lengths, lengths)
    assert pack(seqs, PAD, width=200).input_ids.shape[0] < len(seqs) // 3  # it did pack


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
            logps, _ = sequence_logps(model, pack(seqs, PAD))
        else:
            logps = one_at_a_time(model, seqs)
        (logps * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-4, rtol=1e-4, msg=name)


def test_lm_head_runs_only_where_a_response_token_is_predicted(tiny: str) -> None:
    model = load_model(tiny, dtype="float32")
    seqs = encoded(tiny, n=6, seed=2)
    seen: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[1]))
    batch = pack(seqs, PAD)
    try:
        with torch.no_grad():
            forward_packed(model, batch)
            full = forward_packed(model, batch, trim=False)
    finally:
        hook.remove()
    needed = (batch.labels[:, 1:] != -100).any(0).sum().item()
    assert seen == [needed, batch.input_ids.shape[1]] and needed < batch.input_ids.shape[1]
    with torch.no_grad():
        trimmed = forward_packed(model, batch)
    torch.testing.assert_close(trimmed.logits, full.logits, atol=1e-5, rtol=0)
    assert torch.equal(trimmed.targets, full.targets)


def test_token_logps_and_sums_equal_the_full_formula_with_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 13, generator=g)
    targets = torch.randint(0, 13, (7,), generator=g)
    # Three sequences: tokens at offsets 1, 2, 3 of sequence 0; 1, 2 of sequence 2; none in sequence 1.
    out = PackedLogits(logits, targets, torch.tensor([0, 0, 0, 2, 2, 0, 2]), torch.tensor([1, 2, 3, 1, 2, 4, 3]))
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


def test_can_pack_only_transformers_models(tiny: str) -> None:
    model = load_model(tiny, dtype="float32")
    assert can_pack(model)

    class RemoteCode(type(model)):  # a model class from outside transformers (trust_remote_code)
        pass

    model.__class__ = RemoteCode
    assert not can_pack(model)
    plain = torch.nn.Linear(2, 2)
    assert not can_pack(plain)


def test_dpo_packed_trains_the_same_weights_as_one_sequence_per_row(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs, _ = planted_pairs(24, 0.0, seed=3)
    packed = run_dpo(tiny, tmp_path / "packed", pairs, section(batch_size=8))
    monkeypatch.setattr(preference, "can_pack", lambda model: False)  # the one-per-row layout (a model that cannot)
    alone = run_dpo(tiny, tmp_path / "alone", pairs, section(batch_size=8))
    assert packed["final_loss"] == pytest.approx(alone["final_loss"], abs=1e-5)
    a, b = load_model(str(tmp_path / "packed" / "out")), load_model(str(tmp_path / "alone" / "out"))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)
    assert packed["final_loss"] < 0.69  # it trained: below log 2, the loss of equal log-ratios
