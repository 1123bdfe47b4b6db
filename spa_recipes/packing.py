"""Padding-free batches: sequences packed end to end into rows, a prompt computed once for all its responses.

Training and scoring (SFT, DPO's chosen and rejected rows, the reference log-probs, the implicit judge) all
run their forward passes through :func:`pack` and :func:`forward_packed`, so no position is computed for
padding beyond the tail of a row, nor twice for a prompt that several responses share:

- **Blocks.** Sequences whose prompts (their leading -100 labels) are the same token ids form one block:
  the prompt once, then each response after it (a DPO pair's chosen and rejected; a judged prompt's K
  samples). Each response's position ids continue from the end of the prompt, as in a sequence of its own.
  A block is at most a row wide; more responses than fit start another block with the prompt again.
- **Rows.** Blocks go into rows of ``width`` positions (default: twice the longest sequence, or the longest
  when that computes fewer positions), first fit in decreasing length; the rest of a row is padding.
- **Attention never crosses a sequence.** In layout ``shared`` (SDPA attention) the model gets a boolean
  4D mask: a position sees the earlier positions of its own block that belong to the prompt or to its own
  response. In layout ``packed`` (flash attention, eager attention: no prompt sharing) it gets only
  ``position_ids``, and transformers reads their restarts as sequence boundaries (its packed-sequence
  masks; flash attention's variable-length kernels). A model that can do neither (:func:`layout_for`)
  gets one sequence per row, right-padded (``padded``): with a causal mask a real token never sees the
  padding after it, so no mask is needed there either.
- **Targets.** Each response token is predicted from the position of the token before it in its own
  sequence (for a response's first token: the last position of the shared prompt); the LM head runs only
  at those positions (:func:`output_head`), and :func:`sequence_sums` puts each token's log-prob back at
  its place in its own sequence and adds along it, in the order a right-padded row of that sequence would.

Same log-probs, losses and gradients as one sequence per forward pass, to float tolerance (tests/test_packing.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F

Layout = Literal["shared", "packed", "padded"]

# Rows are this many times the longest sequence of the batch: two sequences of any lengths fit side by side,
# and a row's attention (quadratic in its width under a mask) stays within 4x that of its longest sequence.
ROW_WIDTH = 2

# Attention implementations whose transformers masks (or kernels) read packed position ids; SDPA also takes
# the 4D boolean mask of shared prompts.
PACKED_ATTENTION = frozenset({"sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"})
SHARED_ATTENTION = frozenset({"sdpa"})


@dataclass(frozen=True)
class Packed:
    """Sequences packed into rows: what :func:`pack` returns.

    Attributes:
        input_ids: ``[rows, width]``.
        position_ids: ``[rows, width]``: each sequence's own positions (a response continues its prompt's).
        attention_mask: ``[rows, 1, width, width]`` boolean (True: may attend), when prompts are shared;
            else None.
        packed: the model needs ``position_ids`` (some row holds more than one sequence).
        target_row, target_source: ``[tokens]``, where the position that predicts each response token is.
        target_token: ``[tokens]``, the response token.
        target_sequence, target_offset: ``[tokens]``, which sequence (index into the packed list) the token
            belongs to, and its position in that sequence.
        copy_of: ``[count]``, the sequence whose tokens stand for each one: itself, or the first sequence
            equal to it (equal sequences are computed once).
        count: how many sequences.
        longest: the longest sequence's length.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    packed: bool
    target_row: torch.Tensor
    target_source: torch.Tensor
    target_token: torch.Tensor
    target_sequence: torch.Tensor
    target_offset: torch.Tensor
    copy_of: torch.Tensor
    count: int
    longest: int

    def to(self, device: torch.device | str) -> Packed:
        """The same batch on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Packed(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})

    @property
    def positions(self) -> int:
        """Positions a forward pass computes (tokens and padding)."""
        return self.input_ids.numel()


def layout_for(model: Any) -> Layout:
    """How ``model`` takes packed batches (ask the model before it is wrapped for DDP; an adapter wrapper
    (PEFT) is looked through).

    ``shared`` (prompts shared, a 4D mask) and ``packed`` (position ids only) need one of transformers' own
    models (remote code may build its masks otherwise) whose forward takes ``position_ids``, with an
    attention implementation that reads them; anything else gets ``padded``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    implementation = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if not (
        type(base).__module__.startswith("transformers.")
        and "position_ids" in inspect.signature(base.forward).parameters
    ):
        return "padded"
    if implementation in SHARED_ATTENTION:
        return "shared"
    return "packed" if implementation in PACKED_ATTENTION else "padded"


def _prompt_length(labels: list[int]) -> int:
    """The leading -100 labels (at least the first token, which nothing predicts)."""
    n = next((i for i, label in enumerate(labels) if label != -100), len(labels))
    return max(n, min(1, len(labels)))


def prompt_key(sequence: tuple[list[int], list[int]]) -> tuple[int, ...]:
    """The prompt ids of an ``(input_ids, labels)`` sequence: sequences with one key share a block in :func:`pack`
    (batch them together, e.g. :func:`spa_recipes.sequences.length_sorted_batches`' ``groups``)."""
    ids, labels = sequence
    return tuple(ids[: _prompt_length(labels)])


def _blocks(
    sequences: Sequence[tuple[list[int], list[int]]], indices: list[int], width: int, share: bool
) -> list[tuple[int, list[int]]]:
    """``(prompt length, members)`` per block of the sequences at ``indices``: those with the same prompt
    ids, in input order, while the block fits in ``width``; without ``share`` every sequence is its own block."""
    prompts = {i: _prompt_length(sequences[i][1]) for i in indices}
    if not share:
        return [(prompts[i], [i]) for i in indices]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        groups.setdefault(prompt_key(sequences[i]), []).append(i)
    blocks = []
    for key, members in groups.items():
        current: list[int] = []
        size = len(key)
        for i in members:
            tail = len(sequences[i][0]) - len(key)
            if current and size + tail > width:
                blocks.append((len(key), current))
                current, size = [], len(key)
            current.append(i)
            size += tail
        blocks.append((len(key), current))
    return blocks


def _fill(
    sequences: Sequence[tuple[list[int], list[int]]], blocks: list[tuple[int, list[int]]], width: int
) -> tuple[list[list[tuple[int, list[int]]]], int]:
    """Blocks into rows of ``width``, first fit in decreasing size; the rows and the fullest row's fill."""

    def size(block: tuple[int, list[int]]) -> int:
        prompt, members = block
        return prompt + sum(len(sequences[i][0]) - prompt for i in members)

    rows: list[list[tuple[int, list[int]]]] = []
    room: list[int] = []
    for block in sorted(blocks, key=lambda b: -size(b)):  # stable: ties keep input order
        need = size(block)
        slot = next((r for r, free in enumerate(room) if free >= need), None)
        if slot is None:
            rows.append([])
            room.append(width)
            slot = len(rows) - 1
        rows[slot].append(block)
        room[slot] -= need
    return rows, width - min(room, default=width)


def pack(
    sequences: Sequence[tuple[list[int], list[int]]],
    pad_token_id: int,
    *,
    width: int | None = None,
    layout: Layout = "shared",
) -> Packed:
    """Pack ``(input_ids, labels)`` sequences into rows (see the module docstring).

    Args:
        sequences: one ``(input_ids, labels)`` per sequence (labels -100 on the prompt).
        pad_token_id: the id at padding positions.
        width: positions per row, at least the longest sequence; default ``ROW_WIDTH`` times the longest, or
            the longest when that computes fewer positions. Rows are cut to the fullest one.
        layout: ``shared`` (prompts shared, blocks packed), ``packed`` (sequences packed, no sharing) or
            ``padded`` (one sequence per row, right-padded): :func:`layout_for` the model.

    Returns:
        The rows and where each response token is predicted.
    """
    longest = max((len(ids) for ids, _ in sequences), default=1)
    # A sequence that comes again (two equal samples, a pair of equal responses) is computed once: its
    # log-probs are then the same numbers, and the gradient of their difference exactly zero.
    first: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    copy_of = [first.setdefault((tuple(ids), tuple(labels)), i) for i, (ids, labels) in enumerate(sequences)]
    if layout == "padded":
        rows, width = [[block] for block in _blocks(sequences, list(first.values()), longest, share=False)], longest
    else:
        # The default width, or the longest sequence's when that computes fewer positions (similar lengths).
        widths = [max(width, longest)] if width else [ROW_WIDTH * longest, longest]
        unique = list(first.values())
        candidates = [_fill(sequences, _blocks(sequences, unique, w, layout == "shared"), w) for w in widths]
        rows, width = min(candidates, key=lambda c: len(c[0]) * c[1])

    input_ids, position_ids, group, branch = [], [], [], []
    target: list[list[int]] = [[], [], [], [], []]  # row, source column, token, sequence, offset
    for r, row in enumerate(rows):
        ids_row: list[int] = []
        pos_row: list[int] = []
        group_row: list[int] = []
        branch_row: list[int] = []
        for g, (prompt, members) in enumerate(row):
            start = len(ids_row)
            first_ids = sequences[members[0]][0]
            ids_row += first_ids[:prompt]
            pos_row += range(prompt)
            group_row += [g] * prompt
            branch_row += [0] * prompt
            for b, i in enumerate(members, start=1):
                ids, labels = sequences[i]
                here = len(ids_row)
                ids_row += ids[prompt:]
                pos_row += range(prompt, len(ids))
                group_row += [g] * (len(ids) - prompt)
                branch_row += [b] * (len(ids) - prompt)
                js = [j for j in range(1, len(ids)) if labels[j] != -100]
                target[0] += [r] * len(js)
                target[1] += [start + j - 1 if j - 1 < prompt else here + j - 1 - prompt for j in js]
                target[2] += [ids[j] for j in js]
                target[3] += [i] * len(js)
                target[4] += js
        pad = width - len(ids_row)
        # Alone in its row, a sequence's padding continues its positions (the batch stays unpacked: a plain
        # causal mask); after several, the padding restarts, within the positions the sequences use.
        alone = len(row) == 1 and len(row[0][1]) == 1
        pos_row += range(len(pos_row), width) if alone else [p % longest for p in range(pad)]
        input_ids.append(ids_row + [pad_token_id] * pad)
        position_ids.append(pos_row)
        group_row += range(len(row), len(row) + pad)  # each padding position alone: it sees only itself
        group.append(group_row)
        branch.append(branch_row + [0] * pad)

    def tensor(values: list[Any]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long)

    shape = (len(rows), width)
    positions = tensor(position_ids).view(shape)
    mask = None
    if any(len(members) > 1 for row in rows for _, members in row):
        g, b = tensor(group).view(shape), tensor(branch).view(shape)
        mask = (
            (g[:, :, None] == g[:, None, :])
            & (positions[:, None, :] <= positions[:, :, None])
            & ((b[:, None, :] == 0) | (b[:, None, :] == b[:, :, None]))
        ).unsqueeze(1)
    return Packed(
        input_ids=tensor(input_ids).view(shape),
        position_ids=positions,
        attention_mask=mask,
        packed=len(rows) < len(first),
        target_row=tensor(target[0]),
        target_source=tensor(target[1]),
        target_token=tensor(target[2]),
        target_sequence=tensor(target[3]),
        target_offset=tensor(target[4]),
        copy_of=tensor(copy_of),
        count=len(sequences),
        longest=longest,
    )


@dataclass
class PackedLogits:
    """Logits of a packed forward pass at the positions that predict a response token.

    Attributes:
        logits: ``[tokens, vocab]``, row t predicts ``targets[t]``.
        targets: ``[tokens]`` the response token each row predicts.
        sequence: ``[tokens]`` the sequence each target belongs to.
        offset: ``[tokens]`` the target's position within its sequence.
        copy_of: ``[sequences]`` the sequence whose tokens stand for each one (:class:`Packed`).
    """

    logits: torch.Tensor
    targets: torch.Tensor
    sequence: torch.Tensor
    offset: torch.Tensor
    copy_of: torch.Tensor


def output_head(model: Any) -> torch.nn.Module | None:
    """The LM head of one of transformers' models (ask the unwrapped model; an adapter wrapper is looked
    through), for :func:`forward_packed` to run only where a response token is predicted; None for others."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(base).__module__.startswith("transformers.") or not hasattr(base, "get_output_embeddings"):
        return None
    head = base.get_output_embeddings()
    return head if isinstance(head, torch.nn.Module) else None


def forward_packed(model: Any, batch: Packed, *, head: torch.nn.Module | None = None) -> PackedLogits:
    """One forward pass over a packed batch; the logits at the positions that predict a response token.

    Args:
        model: a causal LM (maybe wrapped for DDP).
        batch: from :func:`pack`, on the model's device.
        head: the model's :func:`output_head`: the hidden states of exactly the predicting positions are
            handed to it (a forward pre-hook gathers them), so no logits are computed for prompts and
            padding (with a large vocabulary the biggest tensor of the pass); what the model does to the
            head's output after it (a scale, a soft cap) still applies. None: every position's logits.
    """
    kwargs: dict[str, Any] = {"use_cache": False}  # nothing is generated after the pass
    if batch.packed:
        kwargs["position_ids"] = batch.position_ids
    if batch.attention_mask is not None:
        kwargs["attention_mask"] = batch.attention_mask
    where = (batch.target_row, batch.target_source)
    if head is None:
        logits = model(input_ids=batch.input_ids, **kwargs).logits[where]
    else:
        hook = head.register_forward_pre_hook(lambda _head, args: (args[0][where].unsqueeze(0), *args[1:]))
        try:
            logits = model(input_ids=batch.input_ids, **kwargs).logits[0]
        finally:
            hook.remove()
    return PackedLogits(logits, batch.target_token, batch.target_sequence, batch.target_offset, batch.copy_of)


def token_logps(logits: torch.Tensor, targets: torch.Tensor, *, in_place: bool = False) -> torch.Tensor:
    """Log-prob of each target under its logits row ``[tokens, vocab]``, normalised in float32.

    Differentiable. ``in_place`` (scoring, no gradient): float32 ``logits`` are overwritten by their
    log-softmax, one buffer of that size instead of two.
    """
    rows = logits.float()
    if in_place and not (torch.is_grad_enabled() and rows.requires_grad):
        rows = torch.log_softmax(rows, dim=-1, out=rows)
    else:
        rows = F.log_softmax(rows, dim=-1)
    return rows.gather(1, targets.unsqueeze(-1)).squeeze(-1)


def sequence_sums(values: torch.Tensor, out: PackedLogits, count: int, width: int) -> torch.Tensor:
    """``[count]`` sums of per-token ``values`` over each sequence's tokens (zero for a sequence without any).

    Each value is put back at its place in its sequence (zeros elsewhere) and the rows summed, so the sum
    adds the same numbers in the same order as a right-padded row of that sequence would; equal sequences
    get the same sum (so the gradient of their difference is exactly zero). Differentiable.
    """
    placed = torch.zeros(count * width, dtype=values.dtype, device=values.device)
    placed = placed.index_put((out.sequence * width + out.offset,), values)
    return placed.view(count, width).sum(-1)[out.copy_of]


def sequence_logps(
    model: Any, batch: Packed, *, head: torch.nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of response-token log-probs, and response lengths, in the packed list's order
    (:func:`forward_packed`; scoring: the logits are normalised in place).

    Returns:
        ``(logps [count] float32, lengths [count])``.
    """
    out = forward_packed(model, batch, head=head)
    logps = sequence_sums(token_logps(out.logits, out.targets, in_place=True), out, batch.count, batch.longest)
    return logps, torch.bincount(out.sequence, minlength=batch.count)[out.copy_of]
