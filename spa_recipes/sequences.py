"""Prompt/response tokenization and sequence log-probabilities: the one place both training and judging use.

A prompt is a list of chat messages (``[{"role": "user", "content": ...}]``); a response is the text of
the assistant turn. The prompt is rendered with the tokenizer's chat template and its generation
prompt; the response tokens are followed by EOS. Prompts longer than ``max_prompt_length`` are cut at
the start (the end of a prompt carries the instruction and the generation prompt); responses are cut
at the end so that prompt + response fit ``max_length`` (EOS is kept as the last token).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

Messages = list[dict[str, str]]


def render_prompt(tokenizer: Any, messages: Messages) -> str:
    """The chat-template text of a prompt, ending with the assistant generation prompt."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer: Any, messages: Messages, max_prompt_length: int | None = None) -> list[int]:
    """Token ids of a prompt (chat template + generation prompt), cut at the start to ``max_prompt_length``."""
    ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    return _cut_prompt(ids, max_prompt_length)


def _cut_prompt(ids: list[int], max_prompt_length: int | None) -> list[int]:
    """The last ``max_prompt_length`` ids of a prompt (its end holds the instruction and generation prompt)."""
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        ids = ids[len(ids) - max_prompt_length :]
    return ids


def encode_response(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a response followed by EOS."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def join_prompt_response(
    prompt_ids: list[int], response_ids: list[int], max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one sequence; labels are -100 on the prompt.

    A response that does not fit is cut at the end but keeps its final token (EOS).
    """
    if max_length is not None and len(prompt_ids) + len(response_ids) > max_length:
        room = max(max_length - len(prompt_ids), 1)
        response_ids = response_ids[: room - 1] + response_ids[-1:]
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids


def collate(sequences: Sequence[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``(input_ids, labels)`` pairs to the longest in the batch."""
    width = max(len(ids) for ids, _ in sequences)
    # Padded Python lists, then one tensor each: a tensor per row costs more than the padding.
    input_ids = torch.tensor([[*ids] + [pad_token_id] * (width - len(ids)) for ids, _ in sequences], dtype=torch.long)
    labels = torch.tensor([[*lab] + [-100] * (width - len(lab)) for _, lab in sequences], dtype=torch.long)
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in sequences], dtype=torch.long)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def shift_for_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align logits at position t with the label at t+1.

    Returns:
        ``(logits[:, :-1], labels[:, 1:] with -100 replaced by 0, loss_mask)``.
    """
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != -100
    return logits[:, :-1], shifted_labels.masked_fill(~mask, 0), mask


def encode_sequences(
    tokenizer: Any,
    prompts: Sequence[Messages],
    responses: Sequence[str],
    max_prompt_length: int | None = None,
    max_length: int | None = None,
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` of each (prompt, response) pair, as :func:`join_prompt_response` builds them.

    The same ids as ``join_prompt_response(encode_prompt(...), encode_response(...), max_length)`` per
    pair, computed faster: each distinct prompt is rendered and tokenized once (a prompt with K sampled
    responses comes K times), and the texts are tokenized in two batched tokenizer calls.

    Args:
        tokenizer: a tokenizer with a chat template.
        prompts: chat messages per pair.
        responses: assistant text per pair.
        max_prompt_length: prompts longer than this are cut at the start.
        max_length: prompt + response longer than this are cut at the end, EOS kept.

    Returns:
        One ``(input_ids, labels)`` per pair, in input order.

    Raises:
        ValueError: if ``prompts`` and ``responses`` differ in length.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    # Key prompts by content: the same messages may arrive as distinct (equal) objects.
    keys = [json.dumps(p, sort_keys=True) for p in prompts]
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    texts = [render_prompt(tokenizer, prompts[i]) for i in first.values()]
    prompt_ids: dict[str, list[int]] = {}
    if texts:
        for key, ids in zip(first, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True):
            prompt_ids[key] = _cut_prompt(ids, max_prompt_length)
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if responses else []
    eos = tokenizer.eos_token_id
    return [
        join_prompt_response(prompt_ids[key], ids + [eos], max_length)
        for key, ids in zip(keys, response_ids, strict=True)
    ]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices cut into batches of sequences of similar length, so right padding stays small.

    Longest first (the largest batch comes first, so running out of memory shows at once); equal
    lengths keep their input order, so the batches are a fixed function of ``lengths``.

    Args:
        lengths: the length of each sequence.
        batch_size: sequences per batch (the last one may be smaller).

    Returns:
        Lists of indices into ``lengths``, every index exactly once.

    Raises:
        ValueError: if ``batch_size`` is not positive.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def sequence_logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of response-token log-probs, and the number of response tokens.

    The log-softmax runs only over the logits rows at response positions (prompt and padding rows are
    never normalised), in float32; the per-token log-probs are put back in place, with zeros elsewhere,
    and summed per sequence. Differentiable with respect to ``logits``.

    Args:
        logits: ``[batch, seq, vocab]`` from a forward pass over ``input_ids``.
        labels: ``[batch, seq]`` as built by :func:`join_prompt_response` (-100 on prompt and padding).

    Returns:
        ``(logps [batch] float32, lengths [batch])``.
    """
    logits, targets, mask = shift_for_logps(logits, labels)
    rows = logits[mask].float()  # [response tokens, vocab], a copy
    if torch.is_grad_enabled() and rows.requires_grad:
        rows = F.log_softmax(rows, dim=-1)
    else:  # scoring: normalise the copy in place, one buffer of that size instead of two
        rows = torch.log_softmax(rows, dim=-1, out=rows)
    token_logps = rows.gather(1, targets[mask].unsqueeze(-1)).squeeze(-1)
    # Back in place and summed along the sequence, the order a full-position sum would add them in.
    placed = torch.zeros(mask.shape, dtype=token_logps.dtype, device=token_logps.device)
    return placed.masked_scatter(mask, token_logps).sum(-1), mask.sum(-1)


def takes_logits_to_keep(model: Any) -> bool:
    """Whether ``model``'s forward accepts ``logits_to_keep`` (transformers' causal LMs do)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def response_logits_to_keep(labels: torch.Tensor) -> int:
    """How many trailing positions' logits a batch needs: from the one before its earliest response token.

    The LM head then skips the prompt positions every row shares (with a large vocabulary the logits of a
    long prompt are the biggest tensor of the pass). Passed as a model's ``logits_to_keep``; always >= 1.
    """
    has_response = labels != -100
    width = labels.shape[1]
    first = int(torch.where(has_response.any(1), has_response.float().argmax(1), width).min())  # rows without: none
    return width - max(first - 1, 0)


def response_logits(
    model: Any, batch: dict[str, torch.Tensor], *, trim: bool, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """A forward pass over a collated batch: its logits, and the labels aligned with them.

    With ``trim`` (for a model that :func:`takes_logits_to_keep`) the logits start at the position before
    the batch's earliest response token (:func:`response_logits_to_keep`) and the labels are cut to match,
    so :func:`sequence_logps_from_logits` and :func:`shift_for_logps` work on them unchanged.
    ``kwargs`` go to the model (e.g. ``use_cache=False``).
    """
    if trim:
        kwargs["logits_to_keep"] = response_logits_to_keep(batch["labels"])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits
    return logits, batch["labels"][:, batch["labels"].shape[1] - logits.shape[1] :]


@torch.no_grad()
def score_encoded(
    model: Any,
    encoded: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int,
    pad_token_id: int,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs and response lengths of already encoded sequences under ``model``.

    Batches are formed from length-sorted sequences (:func:`length_sorted_batches`), so little of each
    forward pass is spent on padding; the results come back in input order. A model that takes
    ``logits_to_keep`` (transformers' causal LMs do) computes logits only from the batch's first response
    position on (:func:`response_logits_to_keep`).

    Args:
        model: a causal LM.
        encoded: ``(input_ids, labels)`` per sequence (:func:`encode_sequences`).
        batch_size: sequences per forward pass.
        pad_token_id: the id used for right padding.
        device: where to run; default the model's device.

    Returns:
        ``(logps [n], lengths [n])`` on the CPU, in the order of ``encoded``.
    """
    device = device or next(model.parameters()).device
    logps = torch.zeros(len(encoded))
    lengths = torch.zeros(len(encoded), dtype=torch.long)
    trims = takes_logits_to_keep(model)
    for indices in length_sorted_batches([len(ids) for ids, _ in encoded], batch_size):
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in indices], pad_token_id).items()}
        # No KV cache: nothing is generated after this pass, and building one costs ~3% of it.
        logits, labels = response_logits(model, batch, trim=trims, use_cache=False)
        lp, n = sequence_logps_from_logits(logits, labels)
        del logits  # not alive next to the next batch's logits (with a large vocabulary, the biggest tensor)
        where = torch.tensor(indices)
        logps[where] = lp.cpu()
        lengths[where] = n.cpu()
    return logps, lengths


def score_sequences(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Messages],
    responses: Sequence[str],
    *,
    batch_size: int,
    max_prompt_length: int | None = None,
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log-probs of each response given its prompt (EOS included), and the response lengths.

    :func:`encode_sequences` then :func:`score_encoded`; to score the same pairs under several models,
    encode once and call :func:`score_encoded` per model.

    Returns:
        ``(logps [n], lengths [n])`` on the CPU, in the order of the inputs.
    """
    encoded = encode_sequences(tokenizer, prompts, responses, max_prompt_length, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return score_encoded(model, encoded, batch_size=batch_size, pad_token_id=pad, device=device)
