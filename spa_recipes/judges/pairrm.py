"""PairRM (Jiang et al. 2023, llm-blender) on transformers' DeBERTa-v2 classes, without llm-blender.

PairRM reads one instruction and two responses in a single DeBERTa-v3 pass and says which response is
better. This module rebuilds it from :class:`transformers.DebertaV2Model` plus its small head.

Model (parameter names as in the published checkpoint)::

    pretrained_model.*          DebertaV2Model (the backbone)
    head_layer.0                Dropout
    head_layer.1.{weight,bias}  Linear(2 * hidden, hidden)
    head_layer.2                Tanh
    head_layer.3                Dropout
    head_layer.4.{weight,bias}  Linear(hidden, n_tasks)          (n_tasks = 1 for PairRM)

    h_s, h_1, h_2 = last hidden states at the <|source|>, <|candidate1|>, <|candidate2|> tokens
    logit = mean_tasks(head([h_s; h_1]) - head([h_s; h_2]))     p(candidate 1 is better) = sigmoid(logit)

Input format (one sequence per comparison; the tokenizer adds ``[CLS]``/``[SEP]`` to each piece)::

    [CLS] <|source|> instruction [SEP] [CLS] <|candidate1|> response 1 [SEP] [CLS] <|candidate2|> response 2 [SEP]

The source piece is cut (at its end, ``[SEP]`` kept) to ``max_source_length`` tokens (PairRM: 1224); each
response piece to ``(max_source_length + 2 * max_candidate_length - len(source piece)) // 2`` tokens
(PairRM: 412 each when the source is full), so a short instruction leaves more room for the responses.
Sequences are right-padded; the marker tokens are found by id, so padding and truncation do not move them.

Checkpoint layouts :func:`load_pairrm` accepts (a local folder, or a hub id downloaded with
``huggingface_hub.snapshot_download``):

- ``llm-blender/PairRM``: ``config.json`` is llm-blender's ranker config (``ranker_type: pairranker``,
  ``model_name: microsoft/deberta-v3-large``, ``n_tasks``, ``source_maxlength``, ...); the DeBERTa
  architecture is that of ``model_name`` (or of ``backbone`` when given); weights in ``pytorch_model.bin``
  or ``model.safetensors`` under the names above; the tokenizer is the folder's, else ``model_name``'s. The
  four markers ``<|source|>``, ``<|candidate1|>``, ``<|candidate2|>``, ``<|candidate|>`` were added to the
  DeBERTa-v3 vocabulary in that order and the embedding resized to the tokenizer's length; a tokenizer
  without them gets them added in the same order, and the vocabulary size is read from the weights.
- ``llm-blender/PairRM-hf``: ``config.json`` is a DeBERTa-v2 config (``model_type: deberta-v2``) with
  ``n_tasks``; weights and tokenizer as above.

Dropout is inactive (eval mode). Position bias is cancelled by asking both orders (``swap_positions``), as
llm-blender's ``[A,B]+[B,A]`` mode does (it averages the logits; this judge averages the probabilities).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa_recipes.api import EvaluatorContext, JudgeContext
from spa_recipes.distributed import default_device
from spa_recipes.errors import UserError
from spa_recipes.judges.base import Row, judge_in_shards
from spa_recipes.judges.config import PairRMJudgeConfig
from spa_recipes.judges.pairwise import Messages, instruction_text, judge_pairwise, pairwise_stats
from spa_recipes.modeling import resolve_dtype
from spa_recipes.sequences import collate

SOURCE, CANDIDATE1, CANDIDATE2, CANDIDATE = "<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"
MARKERS = [SOURCE, CANDIDATE1, CANDIDATE2, CANDIDATE]  # the order llm-blender added them to the vocabulary
WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]
TOKENIZER_FILES = ["*.json", "*.model", "*.txt"]


class PairRMModel(nn.Module):
    """DeBERTa-v2 backbone + PairRM's comparison head (parameter names as in the checkpoint).

    Args:
        config: a ``DebertaV2Config``.
        n_tasks: outputs of the head (averaged into one logit).
        dropout: head dropout (inactive in eval mode).
    """

    def __init__(self, config: Any, n_tasks: int = 1, dropout: float = 0.05) -> None:
        super().__init__()
        from transformers import DebertaV2Model

        hidden = config.hidden_size
        self.pretrained_model = DebertaV2Model(config)
        self.head_layer = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * hidden, hidden),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_tasks),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logit that candidate 1 is better, one per sequence.

        Args:
            input_ids: ``[batch, seq]``.
            attention_mask: ``[batch, seq]``.
            positions: ``[batch, 3]`` indices of the source, candidate 1 and candidate 2 markers.
        """
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        source, first, second = (hidden[rows, positions[:, i]] for i in range(3))
        left = self.head_layer(torch.cat([source, first], dim=-1))
        right = self.head_layer(torch.cat([source, second], dim=-1))
        return (left - right).mean(dim=-1)


def load_pairrm(
    path: str, *, backbone: str | None = None, dtype: str = "auto", device: str | torch.device = "cpu"
) -> tuple[PairRMModel, Any]:
    """A PairRM checkpoint (either layout in the module docstring) and its tokenizer, in eval mode.

    Args:
        path: hub id or folder.
        backbone: DeBERTa config (hub id or folder) for an llm-blender folder, in place of its ``model_name``.
        dtype: model dtype name (``auto``: bf16 on a capable GPU, else fp32).
        device: where to put the model.

    Returns:
        ``(model, tokenizer)``; the tokenizer knows the four markers.

    Raises:
        UserError: the folder is not a PairRM checkpoint, or its weights do not fit the architecture.
    """
    from transformers import AutoConfig, AutoTokenizer, DebertaV2Config

    folder = _local_folder(path)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise UserError(f"PairRM '{path}': no config.json")
    meta = json.loads(config_file.read_text())
    state = _read_weights(folder, path)
    embeddings = state.get("pretrained_model.embeddings.word_embeddings.weight")
    if embeddings is None:
        raise UserError(f"PairRM '{path}': no pretrained_model.embeddings.word_embeddings.weight in its weights")
    if "ranker_type" in meta:  # llm-blender's own layout
        if meta["ranker_type"] != "pairranker":
            raise UserError(f"PairRM '{path}': ranker_type is {meta['ranker_type']!r}, not 'pairranker'")
        base = backbone or meta.get("model_name")
        if not base:
            raise UserError(f"PairRM '{path}': its config names no model_name; set the judge's backbone")
        try:
            config = AutoConfig.from_pretrained(base)
        except (OSError, ValueError) as exc:
            raise UserError(f"PairRM '{path}': cannot load backbone config '{base}': {exc}") from exc
        n_tasks, dropout, tokenizer_sources = meta.get("n_tasks", 1), meta.get("drop_out", 0.05), [folder, base]
    elif meta.get("model_type") == "deberta-v2":
        config = DebertaV2Config.from_pretrained(folder)
        n_tasks, dropout, tokenizer_sources = getattr(config, "n_tasks", 1), getattr(config, "drop_out", 0.05), [folder]
    else:
        raise UserError(f"PairRM '{path}': config.json is neither llm-blender's ranker config nor a DeBERTa-v2 config")
    if config.model_type != "deberta-v2":
        raise UserError(f"PairRM '{path}': backbone is {config.model_type!r}, not deberta-v2")
    config.vocab_size = embeddings.shape[0]  # resized to the tokenizer when the markers were added

    tokenizer = None
    for source in tokenizer_sources:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
            break
        except (OSError, ValueError):
            continue
    if tokenizer is None:
        raise UserError(f"PairRM '{path}': no tokenizer in the folder or in {tokenizer_sources[1:]}")
    missing = [m for m in MARKERS if m not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
    if len(tokenizer) != config.vocab_size:
        raise UserError(
            f"PairRM '{path}': tokenizer has {len(tokenizer)} tokens but the weights {config.vocab_size} embeddings"
        )

    model = PairRMModel(config, n_tasks=n_tasks, dropout=dropout)
    # Older checkpoints carry the position_ids buffer; it is rebuilt, not loaded.
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"PairRM '{path}': weights do not fit: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model.to(device=device, dtype=resolve_dtype(dtype)).eval(), tokenizer


def _local_folder(path: str) -> Path:
    """``path`` when it is a folder, else a snapshot of the hub repository (config, weights, tokenizer)."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, allow_patterns=WEIGHT_FILES + TOKENIZER_FILES))
    except Exception as exc:  # any hub failure (offline, unknown id, gated) is the user's to fix
        raise UserError(f"PairRM '{path}' is neither a folder nor a downloadable hub id: {exc}") from exc


def _read_weights(folder: Path, path: str) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UserError(f"PairRM '{path}': neither model.safetensors nor pytorch_model.bin")


def encode_comparison(
    tokenizer: Any, source: str, first: str, second: str, max_source_length: int, max_candidate_length: int
) -> tuple[list[int], list[int]]:
    """Token ids of one comparison and the positions of its three markers (see the module docstring).

    Raises:
        ValueError: a marker is missing from the encoding (the tokenizer splits it).
    """
    source_ids = tokenizer.encode(SOURCE + source, max_length=max_source_length, truncation=True)
    budget = (max_source_length + 2 * max_candidate_length - len(source_ids)) // 2
    first_ids = tokenizer.encode(CANDIDATE1 + first, max_length=budget, truncation=True)
    second_ids = tokenizer.encode(CANDIDATE2 + second, max_length=budget, truncation=True)
    positions, offset = [], 0
    for marker, ids in [(SOURCE, source_ids), (CANDIDATE1, first_ids), (CANDIDATE2, second_ids)]:
        marker_id = tokenizer.convert_tokens_to_ids(marker)
        if marker_id not in ids:
            raise ValueError(f"tokenizer does not keep {marker} as one token")
        positions.append(offset + ids.index(marker_id))
        offset += len(ids)
    return source_ids + first_ids + second_ids, positions


class PairRMJudge:
    """The judge contract with PairRM: each pair of responses compared (both orders with ``swap_positions``).

    Rows get ``"scores"`` (round-robin win probability), ``"valid"``, ``"pair_probs"`` and, when swapping,
    ``"order_disagreement"`` (:mod:`spa_recipes.judges.pairwise`). ``stats`` summarises the last ``score``.

    Args:
        cfg: the judge's config.
        ctx: the judge or evaluator context; read here: ``dtype`` (model dtype name) and ``device`` (where to
            run; CUDA when available, else CPU).
    """

    def __init__(self, cfg: PairRMJudgeConfig, ctx: JudgeContext | EvaluatorContext = JudgeContext()) -> None:
        self.cfg = cfg
        self.dtype = ctx.dtype
        self.device = ctx.device or default_device()
        self.stats: dict[str, Any] = {}
        self._loaded: tuple[PairRMModel, Any] | None = None

    def score(self, rows: list[Row], out_dir: Path | None = None) -> list[Row]:
        """Judge every row (the contract of :class:`spa_recipes.judges.base.Judge`).

        Args:
            rows: generated rows (``"id"``, ``"prompt"``, ``"responses"``).
            out_dir: when given, judgements are kept in resumable shards there.

        Returns:
            The rows in order with ``"scores"``, ``"valid"``, ``"pair_probs"`` (and ``"order_disagreement"``).
        """

        def judge_rows(chunk: list[Row]) -> list[Row]:
            return judge_pairwise(chunk, self.compare, swap_positions=self.cfg.swap_positions)

        out = judge_in_shards(rows, judge_rows, out_dir, self.cfg.shard_size, "judge pairrm")
        self.stats = pairwise_stats(out)
        return out

    @torch.no_grad()
    def compare(self, prompts: list[Messages], firsts: list[str], seconds: list[str]) -> list[float | None]:
        """Probability that each first response is better than its second (``None`` if not finite)."""
        if self._loaded is None:
            self._loaded = load_pairrm(self.cfg.path, backbone=self.cfg.backbone, dtype=self.dtype, device=self.device)
        model, tokenizer = self._loaded
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        encoded = [
            encode_comparison(
                tokenizer, instruction_text(p), a, b, self.cfg.max_source_length, self.cfg.max_candidate_length
            )
            for p, a, b in zip(prompts, firsts, seconds, strict=True)
        ]
        probs: list[float | None] = []
        for start in range(0, len(encoded), self.cfg.batch_size):
            batch = encoded[start : start + self.cfg.batch_size]
            padded = collate([(ids, ids) for ids, _ in batch], pad)  # right padding; the labels are unused
            positions = torch.tensor([pos for _, pos in batch], dtype=torch.long)
            logits = model(
                padded["input_ids"].to(self.device), padded["attention_mask"].to(self.device), positions.to(self.device)
            )
            logits = logits.float().cpu()
            probs.extend(float(p) if torch.isfinite(p) else None for p in torch.sigmoid(logits))
        return probs
