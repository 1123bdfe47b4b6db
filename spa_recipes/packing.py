"""Padding-free batches: sequences packed end to end into rows, each with its own position ids.

Training and scoring (SFT, DPO's chosen and rejected rows, the reference log-probs, the implicit judge) all
run their forward passes through :func:`pack` and :func:`forward_packed`, so no position is computed for
padding beyond the tail of a row:

- **Rows.** The sequences go into rows of ``width`` positions (default: twice the longest), first fit in
  decreasing length; the rest of a row is padding. Each sequence's position ids restart at 0, as they
  would in a row of its own.
- **Attention never crosses a sequence.** The model is called with ``position_ids`` and no attention mask;
  transformers reads the restarts of the position ids as sequence boundaries (its packed-sequence masks
  for SDPA and eager attention; the variable-length kernels of flash attention where installed). A model
  that cannot (:func:`can_pack`) gets one sequence per row, right-padded: with a causal mask a real token
  never sees the padding after it, so no mask is needed there either.
- **Labels** are -100 on prompts, padding and every sequence's first token (nothing predicts it across a
  boundary); the per-sequence sums put each token's log-prob back at its place in its own sequence and
  add along it, in the order the padded layout adds them (:func:`sequence_sums`).

Same log-probs, losses and gradients as one sequence per padded row, to float tolerance (tests/test_packing.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# Rows are this many times the longest sequence of the batch: two sequences of any lengths fit side by side,
# and a row's attention (quadratic in its width under a packed mask) stays within 4x that of its longest.
ROW_WIDTH = 2

# Attention implementations whose transformers masks (or kernels) read packed position ids.
PACKED_ATTENTION = frozenset({"sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"})


@dataclass(frozen=True)
class Packed:
    """Sequences packed into rows: what :func:`pack` returns.

    Attributes:
        input_ids: ``[rows, width]``.
        position_ids: ``[rows, width]``, restarting at 0 with each sequence (and with the padding).
        labels: ``[rows, width]``, -100 on prompts, padding and each sequence's first token.
        sequence: ``[rows, width]``, the index (into the packed list) of the sequence at each position; -1 on padding.
        count: how many sequences.
        longest: the longest sequence's length.
        packed: some row holds several sequences (the model must get ``position_ids``; without, each
            row is one sequence and its padding, and the default positions are the same).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    sequence: torch.Tensor
    count: int
    longest: int
    packed: bool

    def to(self, device: torch.device | str) -> Packed:
        """The same batch on ``device``."""
        move = {k: getattr(self, k).to(device) for k in ("input_ids", "position_ids", "labels", "sequence")}
        return Packed(**move, count=self.count, longest=self.longest, packed=self.packed)

    @property
    def positions(self) -> int:
        """Positions a forward pass computes (tokens and padding)."""
        return self.input_ids.numel()


def can_pack(model: Any) -> bool:
    """Whether ``model`` keeps packed sequences apart: one of transformers' own models (remote code may build
    its masks otherwise) whose forward takes ``position_ids`` and whose attention implementation builds its
    masks (or kernels) from them. Ask the model before it is wrapped for DDP; an adapter wrapper (PEFT) is
    looked through."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    implementation = getattr(getattr(base, "config", None), "_attn_implementation", None)
    return (
        type(base).__module__.startswith("transformers.")
        and implementation in PACKED_ATTENTION
        and "position_ids" in inspect.signature(base.forward).parameters
    )


def pack(
    sequences: Sequence[tuple[list[int], list[int]]],
    pad_token_id: int,
    *,
    width: int | None = None,
    together: bool = True,
) -> Packed:
    """Pack ``(input_ids, labels)`` sequences into rows.

    Args:
        sequences: one ``(input_ids, labels)`` per sequence (labels -100 on the prompt).
        pad_token_id: the id at padding positions.
        width: positions per row; default ``ROW_WIDTH`` times the longest sequence, at least the longest.
        together: several sequences per row (first fit, longest first); False: one per row, as
            right padding lays them out (for a model that cannot pack).

    Returns:
        The rows; ``sequence`` maps their positions back to the input order.
    """
    lengths = [len(ids) for ids, _ in sequences]
    longest = max(lengths, default=1)
    width = max(width or ROW_WIDTH * longest, longest)
    order = sorted(range(len(sequences)), key=lambda i: -lengths[i])  # stable: ties keep input order
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None) if together else None
        if slot is None:
            rows.append([])
            room.append(width)
            slot = len(rows) - 1
        rows[slot].append(i)
        room[slot] -= lengths[i]
    if not together:
        width = longest
    input_ids, position_ids, labels, sequence = [], [], [], []
    for members in rows:
        ids_row: list[int] = []
        pos_row: list[int] = []
        lab_row: list[int] = []
        seq_row: list[int] = []
        for i in members:
            ids, lab = sequences[i]
            ids_row += ids
            pos_row += range(len(ids))
            lab_row += [-100, *lab[1:]]
            seq_row += [i] * len(ids)
        pad = width - len(ids_row)
        input_ids.append(ids_row + [pad_token_id] * pad)
        # Alone in its row, a sequence's padding continues its positions (the batch stays unpacked: a plain
        # causal mask); after several, the padding restarts, within the positions the sequences use.
        pos_row += range(len(pos_row), width) if len(members) == 1 else [p % longest for p in range(pad)]
        position_ids.append(pos_row)
        labels.append(lab_row + [-100] * pad)
        sequence.append(seq_row + [-1] * pad)
    as_long = {"dtype": torch.long}
    return Packed(
        input_ids=torch.tensor(input_ids, **as_long).view(len(rows), width),
        position_ids=torch.tensor(position_ids, **as_long).view(len(rows), width),
        labels=torch.tensor(labels, **as_long).view(len(rows), width),
        sequence=torch.tensor(sequence, **as_long).view(len(rows), width),
        count=len(sequences),
        longest=longest,
        packed=len(rows) < len(sequences),
    )


@dataclass
class PackedLogits:
    """Logits of a packed forward pass at the positions that predict a response token.

    Attributes:
        logits: ``[tokens, vocab]``, row t predicts ``targets[t]``.
        targets: ``[tokens]`` the response token each row predicts.
        sequence: ``[tokens]`` the sequence each target belongs to.
        offset: ``[tokens]`` the target's position within its sequence.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    sequence: torch.Tensor
    offset: torch.Tensor


def takes_logits_to_keep(model: Any) -> bool:
    """Whether ``model``'s forward accepts ``logits_to_keep`` (transformers' causal LMs do)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def forward_packed(model: Any, batch: Packed, *, trim: bool | None = None) -> PackedLogits:
    """One forward pass over a packed batch; the logits at the positions that predict a response token.

    Args:
        model: a causal LM (maybe wrapped for DDP).
        batch: from :func:`pack`, on the model's device.
        trim: the model :func:`takes_logits_to_keep` (ask the unwrapped model; default: ``model``): its LM
            head then runs only at the positions some row needs (with a large vocabulary the logits of the
            prompts are the largest tensor of the pass).
    """
    targets = batch.labels[:, 1:]
    needed = targets != -100  # [rows, width - 1]: position t predicts the token at t + 1
    keep = needed.any(0).nonzero().squeeze(1)
    kwargs: dict[str, Any] = {"use_cache": False}  # nothing is generated after the pass
    if trim if trim is not None else takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    if batch.packed:
        kwargs["position_ids"] = batch.position_ids
    logits = model(input_ids=batch.input_ids, **kwargs).logits
    if logits.shape[1] == batch.input_ids.shape[1]:  # the model computed every position
        logits = logits[:, keep]
    kept = needed[:, keep]
    return PackedLogits(
        logits=logits[kept],
        targets=targets[:, keep][kept],
        sequence=batch.sequence[:, 1:][:, keep][kept],
        offset=batch.position_ids[:, 1:][:, keep][kept],
    )


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
    adds the same numbers in the same order as a right-padded row of that sequence would. Differentiable.
    """
    placed = torch.zeros(count * width, dtype=values.dtype, device=values.device)
    placed = placed.index_put((out.sequence * width + out.offset,), values)
    return placed.view(count, width).sum(-1)


def sequence_logps(model: Any, batch: Packed, *, trim: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of response-token log-probs, and response lengths, in the packed list's order
    (:func:`forward_packed`; scoring: the logits are normalised in place).

    Returns:
        ``(logps [count] float32, lengths [count])``.
    """
    out = forward_packed(model, batch, trim=trim)
    logps = sequence_sums(token_logps(out.logits, out.targets, in_place=True), out, batch.count, batch.longest)
    lengths = torch.zeros(batch.count, dtype=torch.long, device=out.sequence.device)
    lengths.index_add_(0, out.sequence, torch.ones_like(out.sequence))
    return logps, lengths
