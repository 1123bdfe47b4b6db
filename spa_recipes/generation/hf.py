"""Sampling K responses per prompt with transformers ``generate()``, sharded and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from spa_recipes.api import GeneratorContext
from spa_recipes.distributed import default_device
from spa_recipes.generation.config import HFGenerationConfig
from spa_recipes.generation.shards import Row, run_sharded
from spa_recipes.modeling import load_model, load_tokenizer
from spa_recipes.sequences import encode_prompt


def shard_seed(seed: int, shard_index: int) -> int:
    """A seed for one shard, a pure function of ``(seed, shard_index)`` (so resumed shards sample the same)."""
    return int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0])


class HFGenerator:
    """Draws ``samples_per_prompt`` responses per prompt with ``model.generate``, batched across prompts.

    Sampling uses only temperature and top_p from the config: top_k and repetition penalties that a
    checkpoint's ``generation_config.json`` may carry are switched off, so that the HF and vLLM backends
    sample from the same distribution. Temperature 0 means greedy decoding (the K responses are equal).

    Args:
        cfg: the generator's config.
        ctx: nothing a generator needs (each ``generate`` call names its model).
    """

    def __init__(self, cfg: HFGenerationConfig, ctx: GeneratorContext = GeneratorContext()) -> None:
        self.cfg = cfg

    def generate(
        self,
        prompts: list[Row],
        *,
        model_path: str,
        out_dir: Path,
        seed: int,
        dtype: str = "auto",
        max_prompt_length: int | None = None,
        device: str | None = None,
    ) -> list[Row]:
        """Generate responses for every prompt; shards already in ``out_dir`` are reused.

        Args:
            prompts: rows ``{"id", "prompt": messages}``.
            model_path: model folder or hub id (its tokenizer must have a chat template).
            out_dir: folder of the shard files (see :mod:`spa_recipes.generation.shards`).
            seed: sampling seed; shard ``i`` is seeded from ``(seed, i)``.
            dtype: model dtype name (``auto``, ``float32``, ``bfloat16``, ``float16``).
            max_prompt_length: prompts longer than this (in tokens) keep their end (and BOS).
            device: where to run; this process's GPU when there is one, else CPU.

        Returns:
            Rows ``{"id", "prompt", "responses": [K str], "finished": [K bool], "num_tokens": [K int]}``
            in prompt order. ``finished`` is whether the response ended with EOS (not cut by
            ``max_new_tokens``); ``num_tokens`` counts the generated tokens before EOS.
        """
        device = device or default_device()
        loaded: dict[str, Any] = {}

        def shard(index: int, rows: list[Row]) -> list[Row]:
            if not loaded:  # load lazily: a fully finished output folder needs no model
                loaded["tokenizer"] = load_tokenizer(model_path)
                loaded["model"] = load_model(model_path, dtype=dtype, device=device)
            cuda = [torch.device(device)] if torch.device(device).type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # leave the caller's RNG state alone
                torch.manual_seed(shard_seed(seed, index))
                out: list[Row] = []
                for start in range(0, len(rows), self.cfg.batch_size):
                    batch = rows[start : start + self.cfg.batch_size]
                    out.extend(self._generate_batch(loaded["model"], loaded["tokenizer"], batch, max_prompt_length))
            return out

        try:
            return run_sharded(prompts, self.cfg.shard_size, out_dir, shard, desc="generate")
        finally:
            loaded.clear()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @torch.no_grad()
    def _generate_batch(self, model: Any, tokenizer: Any, rows: list[Row], max_prompt_length: int | None) -> list[Row]:
        """K samples for each row of one batch: prompts left-padded, each repeated K times."""
        k = self.cfg.samples_per_prompt
        # Greedy decoding gives K equal responses: decode once and copy.
        copies = 1 if self.cfg.temperature == 0.0 else k
        pad_id = tokenizer.pad_token_id
        encoded = [encode_prompt(tokenizer, row["prompt"], max_prompt_length) for row in rows]
        width = max(len(ids) for ids in encoded)
        # Left padding: every prompt ends at the same column, where generation starts.
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(encoded):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention_mask[i, width - len(ids) :] = 1
        device = next(model.parameters()).device
        # Repeating the prompts is what num_return_sequences does internally.
        input_ids = input_ids.repeat_interleave(copies, dim=0).to(device)
        attention_mask = attention_mask.repeat_interleave(copies, dim=0).to(device)
        stop_ids = _stop_token_ids(model, tokenizer)
        sequences = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self._generation_config(pad_id, stop_ids),
        )
        generated = sequences[:, width:].tolist()
        out = []
        for i, row in enumerate(rows):
            responses, finished, num_tokens = [], [], []
            for tokens in generated[i * copies : (i + 1) * copies] * (k // copies):
                end = next((j for j, t in enumerate(tokens) if t in stop_ids), None)
                kept = tokens if end is None else tokens[:end]
                responses.append(tokenizer.decode(kept, skip_special_tokens=True))
                finished.append(end is not None)
                num_tokens.append(len(kept))
            out.append(
                {
                    "id": row["id"],
                    "prompt": row["prompt"],
                    "responses": responses,
                    "finished": finished,
                    "num_tokens": num_tokens,
                }
            )
        return out

    def _generation_config(self, pad_id: int, stop_ids: list[int]) -> Any:
        from transformers import GenerationConfig

        greedy = self.cfg.temperature == 0.0
        return GenerationConfig(
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else self.cfg.temperature,
            top_p=None if greedy else self.cfg.top_p,
            top_k=None if greedy else 0,
            repetition_penalty=1.0,
            num_return_sequences=1,
            pad_token_id=pad_id,
            eos_token_id=stop_ids,
        )


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus any EOS ids of the model's generation config (chat models often add one)."""
    ids = [tokenizer.eos_token_id]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += extra if isinstance(extra, list) else [extra] if extra is not None else []
    return list(dict.fromkeys(i for i in ids if i is not None))
