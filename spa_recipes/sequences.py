"""Prompt/response tokenization and sequence log-probabilities: the one place both training and judging use.

A prompt is a list of chat messages (``[{"role": "user", "content": ...}]``); a response is the text of
the assistant turn. The token ids follow the released SPA code (TRL 0.7's DPOTrainer for training and
judging, vLLM with text prompts for generation):

- **BOS exactly once.** The prompt is rendered with the tokenizer's chat template and its generation
  prompt and tokenized without special tokens; when the tokenizer puts a BOS in front of a text it
  encodes (``tokenizer(text)`` with special tokens, what vLLM does with a text prompt) and the template
  did not already write one, one is prepended (:func:`bos_prefix`). Zephyr/Mistral (template without
  BOS, tokenizer adds ``<s>``): one ``<s>``. Llama-3 (template writes ``<|begin_of_text|>``): that one,
  not a second. GPT-2-style tokenizers (Phi-2: bos == eos, nothing added) and tokenizers without a BOS
  (Qwen): none. Every path (generation, judging, SFT, DPO) gets its prompt ids from :func:`encode_prompt`.
- **Responses** are their text's tokens followed by EOS (TRL appends it to each answer).
- **Truncation, TRL 0.7's rule** (:func:`truncate`), applied to one prompt and the responses trained or
  scored against it together (a preference pair's chosen and rejected, a judged row's K samples, an SFT
  example's one response): nothing is cut unless prompt + the *longest* response exceed ``max_length``;
  then the prompt keeps its last ``max_prompt_length`` tokens (the end holds the instruction and the
  generation prompt; its leading BOS stays in front), and if prompt + longest still exceed ``max_length``
  every response is cut to its first ``max_length - max_prompt_length`` tokens, losing its EOS.
- **Generation** has no response yet: a prompt longer than ``max_prompt_length`` is cut the same way
  (:func:`encode_prompt`). (The released code's vLLM cuts nothing; it skips a prompt longer than the
  engine's ``max_model_len``.)

Where TRL 0.7.10 (the released code's copy) differs, on purpose: it prepends ``bos_token_id`` to every
prompt whatever the tokenizer or template does (two BOS after Llama-3's template, an ``<|endoftext|>`` that
Phi-2's own tokenizer never adds), and its keep-end cut drops the BOS of a cut prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from spa_recipes.packing import layout_for, output_head, pack, prompt_key
from spa_recipes.packing import sequence_logps as packed_sequence_logps

Messages = list[dict[str, str]]
Encoded = tuple[list[int], list[int]]
# Any short text: only whether the tokenizer's own encoding of it starts with BOS is read.
_BOS_PROBE = "a"


def render_prompt(tokenizer: Any, messages: Messages) -> str:
    """The chat-template text of a prompt, ending with the assistant generation prompt."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos_token_id]`` when the tokenizer puts a BOS in front of the texts it encodes, else ``[]``.

    The tokenizer's own encoding (special tokens on) is asked rather than ``add_bos_token``: a Llama
    tokenizer reloaded from ``tokenizer.json`` adds BOS through its post-processor while its
    ``add_bos_token`` may read False, and GPT-2-style tokenizers set a ``bos_token`` they never add.
    Only BOS is taken from it: an EOS some tokenizers append does not belong after a prompt.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    return [bos] if tokenizer(_BOS_PROBE, add_special_tokens=True)["input_ids"][:1] == [bos] else []


def _with_bos(ids: list[int], bos: list[int]) -> list[int]:
    """``bos + ids`` unless ``ids`` already start with it (a template that writes BOS itself)."""
    return ids if not bos or ids[:1] == bos else bos + ids


def encode_prompt(tokenizer: Any, messages: Messages, max_prompt_length: int | None = None) -> list[int]:
    """Token ids of a prompt (chat template + generation prompt, BOS once), cut to ``max_prompt_length``.

    The cut is the one generation makes (it has no response yet; :func:`cut_prompt`). Training and
    judging pass no limit here and cut with :func:`truncate`, which only cuts a prompt when needed.
    """
    ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    return cut_prompt(_with_bos(ids, bos_prefix(tokenizer)), max_prompt_length, tokenizer.bos_token_id)


def cut_prompt(ids: list[int], max_prompt_length: int | None, bos_token_id: int | None = None) -> list[int]:
    """A prompt cut to its last ``max_prompt_length`` ids (its end holds the instruction and generation prompt).

    A leading ``bos_token_id`` stays in front of the kept end (and counts towards the length): the model
    always sees BOS at position 0, as in generation. (TRL 0.7 cuts its BOS off with the start.)
    """
    if max_prompt_length is None or len(ids) <= max_prompt_length:
        return ids
    head = ids[:1] if bos_token_id is not None and ids[:1] == [bos_token_id] else []
    keep = max(max_prompt_length - len(head), 0)
    return head + ids[len(ids) - keep :]


def encode_response(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a response followed by EOS."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def truncate(
    prompt_ids: list[int],
    responses_ids: Sequence[list[int]],
    max_prompt_length: int | None,
    max_length: int | None,
    bos_token_id: int | None = None,
) -> tuple[list[int], list[list[int]]]:
    """TRL 0.7's truncation of one prompt and the responses that share it (a pair, a judged row, an SFT example).

    Only when prompt + the longest response exceed ``max_length``: the prompt keeps its last
    ``max_prompt_length`` ids (:func:`cut_prompt`); if prompt + longest still exceed ``max_length``, every
    response keeps its first ``max_length - max_prompt_length`` ids (a cut response loses its EOS).

    Args:
        prompt_ids: the prompt, uncut (:func:`encode_prompt` without a limit).
        responses_ids: the responses, each ending with EOS (:func:`encode_response`).
        max_prompt_length: the prompt's length once cut; needed with ``max_length``.
        max_length: prompt + response; ``None``: nothing is cut.
        bos_token_id: a leading BOS that a cut prompt keeps.

    Returns:
        ``(prompt_ids, responses_ids)``, cut where needed.

    Raises:
        ValueError: ``max_length`` without a smaller ``max_prompt_length``.
    """
    responses = list(responses_ids)
    if max_length is None:
        return prompt_ids, responses
    if max_prompt_length is None or max_prompt_length >= max_length:
        raise ValueError(f"max_length {max_length} needs a smaller max_prompt_length, got {max_prompt_length}")
    longest = max((len(r) for r in responses), default=0)
    if len(prompt_ids) + longest <= max_length:
        return prompt_ids, responses
    prompt_ids = cut_prompt(prompt_ids, max_prompt_length, bos_token_id)
    if len(prompt_ids) + longest > max_length:
        # TRL cuts to max_length - max_prompt_length whatever the prompt's own length.
        responses = [r[: max_length - max_prompt_length] for r in responses]
    return prompt_ids, responses


def join_prompt_response(
    prompt_ids: list[int], response_ids: list[int], max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one sequence; labels are -100 on the prompt.

    ``max_length``: a response that does not fit after the (already cut) prompt is cut at the end to the
    room left, losing its EOS. :func:`encode_responses` cuts by TRL's rule first and passes no limit.
    """
    if max_length is not None and len(prompt_ids) + len(response_ids) > max_length:
        response_ids = response_ids[: max(max_length - len(prompt_ids), 0)]
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids


def encode_responses(
    tokenizer: Any,
    messages: Messages,
    responses: Sequence[str],
    max_prompt_length: int | None = None,
    max_length: int | None = None,
) -> list[Encoded]:
    """``(input_ids, labels)`` of each response after one prompt, cut together by :func:`truncate`.

    A DPO pair is ``encode_responses(tok, prompt, [chosen, rejected], ...)``, an SFT example
    ``encode_responses(tok, prompt, [response], ...)``.

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: the prompt's chat messages.
        responses: assistant texts that share the prompt (and its cut).
        max_prompt_length: the prompt's length when it has to be cut.
        max_length: prompt + response; ``None``: nothing is cut.

    Returns:
        One ``(input_ids, labels)`` per response, in order.
    """
    prompt = encode_prompt(tokenizer, messages)
    answers = [encode_response(tokenizer, r) for r in responses]
    prompt, answers = truncate(prompt, answers, max_prompt_length, max_length, tokenizer.bos_token_id)
    return [join_prompt_response(prompt, a) for a in answers]


def collate(sequences: Sequence[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``(input_ids, labels)`` pairs to the longest in the batch."""
    width = max(len(ids) for ids, _ in sequences)
    # Padded Python lists, then one tensor each: a tensor per row costs more than the padding.
    input_ids = torch.tensor([[*ids] + [pad_token_id] * (width - len(ids)) for ids, _ in sequences], dtype=torch.long)
    labels = torch.tensor([[*lab] + [-100] * (width - len(lab)) for _, lab in sequences], dtype=torch.long)
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in sequences], dtype=torch.long)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def encode_sequences(
    tokenizer: Any,
    prompts: Sequence[Messages],
    responses: Sequence[str],
    max_prompt_length: int | None = None,
    max_length: int | None = None,
    group_sizes: Sequence[int] | None = None,
) -> list[Encoded]:
    """``(input_ids, labels)`` of each (prompt, response) pair, as :func:`encode_responses` builds them.

    The same ids as ``encode_responses(tokenizer, prompt, group_responses, ...)`` per group, computed
    faster: each distinct prompt is rendered and tokenized once (a prompt with K sampled responses comes
    K times), and the texts are tokenized in two batched tokenizer calls.

    Args:
        tokenizer: a tokenizer with a chat template.
        prompts: chat messages per pair.
        responses: assistant text per pair.
        max_prompt_length: the prompt's length when it has to be cut (:func:`truncate`).
        max_length: prompt + response; ``None``: nothing is cut.
        group_sizes: consecutive runs of pairs that share one prompt and are cut together (a judged
            row's K responses, as TRL cuts a pair); default: every pair alone.

    Returns:
        One ``(input_ids, labels)`` per pair, in input order.

    Raises:
        ValueError: if ``prompts`` and ``responses`` differ in length, or ``group_sizes`` does not add up
            to them.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    group_sizes = [1] * len(prompts) if group_sizes is None else list(group_sizes)
    if sum(group_sizes) != len(prompts) or any(n < 1 for n in group_sizes):
        raise ValueError(f"group sizes {group_sizes} do not split {len(prompts)} pairs")
    # Key prompts by content: the same messages may arrive as distinct (equal) objects.
    keys = [json.dumps(p, sort_keys=True) for p in prompts]
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    texts = [render_prompt(tokenizer, prompts[i]) for i in first.values()]
    bos = bos_prefix(tokenizer)
    prompt_ids: dict[str, list[int]] = {}
    if texts:
        for key, ids in zip(first, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True):
            prompt_ids[key] = _with_bos(ids, bos)
    eos = tokenizer.eos_token_id
    texts_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if responses else []
    answers = [ids + [eos] for ids in texts_ids]
    out: list[Encoded] = []
    start = 0
    for n in group_sizes:
        prompt, cut = truncate(
            prompt_ids[keys[start]], answers[start : start + n], max_prompt_length, max_length, tokenizer.bos_token_id
        )
        out += [join_prompt_response(prompt, a) for a in cut]
        start += n
    return out


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, groups: Sequence[Any] | None = None
) -> list[list[int]]:
    """Indices cut into batches of sequences of similar length, so right padding stays small.

    Longest first (the largest batch comes first, so running out of memory shows at once); equal
    lengths keep their input order, so the batches are a fixed function of ``lengths`` (and ``groups``).

    Args:
        lengths: the length of each sequence.
        batch_size: sequences per batch (the last one may be smaller).
        groups: a key per sequence (e.g. its prompt's ids): sequences with one key stay next to each other,
            in input order, ranked by the group's longest, so a packed batch computes their prompt once.

    Returns:
        Lists of indices into ``lengths``, every index exactly once.

    Raises:
        ValueError: if ``batch_size`` is not positive.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    members: dict[Any, list[int]] = {}
    for i in range(len(lengths)):
        members.setdefault(i if groups is None else groups[i], []).append(i)
    ranked = sorted(members.values(), key=lambda group: -max(lengths[i] for i in group))
    order = [i for group in ranked for i in group]
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


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

    Batches of ``batch_size`` sequences are formed from length-sorted sequences, those with one prompt kept
    together (:func:`length_sorted_batches`; the longest first, so running out of memory shows at once),
    and packed without padding, each prompt computed once per batch (:func:`spa_recipes.packing.pack`);
    the LM head runs only where a response token is predicted (:func:`spa_recipes.packing.forward_packed`).
    The results come back in input order.

    Args:
        model: a causal LM.
        encoded: ``(input_ids, labels)`` per sequence (:func:`encode_sequences`).
        batch_size: sequences per forward pass.
        pad_token_id: the id at the padding positions left at the end of a row.
        device: where to run; default the model's device.

    Returns:
        ``(logps [n], lengths [n])`` on the CPU, in the order of ``encoded``.
    """
    device = device or next(model.parameters()).device
    logps = torch.zeros(len(encoded))
    lengths = torch.zeros(len(encoded), dtype=torch.long)
    layout, head = layout_for(model), output_head(model)
    prompts = [prompt_key(sequence) for sequence in encoded] if layout == "shared" else None
    for indices in length_sorted_batches([len(ids) for ids, _ in encoded], batch_size, prompts):
        batch = pack([encoded[i] for i in indices], pad_token_id, layout=layout).to(device)
        lp, n = packed_sequence_logps(model, batch, head=head)
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
    group_sizes: Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log-probs of each response given its prompt (EOS included), and the response lengths.

    :func:`encode_sequences` then :func:`score_encoded`; to score the same pairs under several models,
    encode once and call :func:`score_encoded` per model.

    Returns:
        ``(logps [n], lengths [n])`` on the CPU, in the order of the inputs.
    """
    encoded = encode_sequences(tokenizer, prompts, responses, max_prompt_length, max_length, group_sizes)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return score_encoded(model, encoded, batch_size=batch_size, pad_token_id=pad, device=device)
