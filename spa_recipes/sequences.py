"""Prompt/response tokenization and sequence log-probabilities: the one place both training and judging use.

A prompt is a list of chat messages (``[{"role": "user", "content": ...}]``); a response is the text of
the assistant turn. The prompt is rendered with the tokenizer's chat template and its generation
prompt; the response tokens are followed by EOS. Prompts longer than ``max_prompt_length`` are cut at
the start (the end of a prompt carries the instruction and the generation prompt); responses are cut
at the end so that prompt + response fit ``max_length`` (EOS is kept as the last token).
"""

from __future__ import annotations

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
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def shift_for_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align logits at position t with the label at t+1.

    Returns:
        ``(logits[:, :-1], labels[:, 1:] with -100 replaced by 0, loss_mask)``.
    """
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != -100
    return logits[:, :-1], shifted_labels.masked_fill(~mask, 0), mask


def sequence_logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of response-token log-probs, and the number of response tokens.

    Args:
        logits: ``[batch, seq, vocab]`` from a forward pass over ``input_ids``.
        labels: ``[batch, seq]`` as built by :func:`join_prompt_response` (-100 on prompt and padding).
    """
    logits, targets, mask = shift_for_logps(logits, labels)
    token_logps = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


@torch.no_grad()
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

    Returns:
        ``(logps [n], lengths [n])`` on the CPU, in the order of the inputs.
    """
    device = device or next(model.parameters()).device
    encoded = [
        join_prompt_response(encode_prompt(tokenizer, p, max_prompt_length), encode_response(tokenizer, r), max_length)
        for p, r in zip(prompts, responses, strict=True)
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    logps, lengths = [], []
    for start in range(0, len(encoded), batch_size):
        batch = {k: v.to(device) for k, v in collate(encoded[start : start + batch_size], pad).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        lp, n = sequence_logps_from_logits(logits, batch["labels"])
        logps.append(lp.cpu())
        lengths.append(n.cpu())
    if not logps:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(logps), torch.cat(lengths)
