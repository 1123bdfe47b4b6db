"""Sampling K responses per prompt with a vLLM engine: the :class:`~spa_recipes.generation.hf.HFGenerator`
contract (rows, sharded ``out_dir``, per-shard determinism) on a faster engine. vLLM is an optional extra.

Prompts are rendered with the HF tokenizer's chat template, BOS once (:func:`spa_recipes.sequences.encode_prompt`,
what vLLM itself makes of a text prompt, minus a doubled BOS), and given to the engine as token ids, so both
backends sample after exactly the same tokens, the ones training and judging see; responses are cut at the
first stop token and decoded by the same tokenizer, as the HF backend does.

Determinism: every prompt gets its own sampling seed, derived from ``(seed, shard index, position in the
shard)``, so a shard's responses do not depend on what else is in the engine's batch, on resumes or on the
process count. (One seed shared by all prompts would make their draws identical.) Requests are submitted in
groups whose prompt tokens (times K, vLLM fans ``n`` out into K requests) fit in one scheduler step and whose
sequences fit ``max_num_seqs``: a prompt split across steps (chunked prefill) under a per-request seed has
crashed the CPU engine, and a whole group prefills at once.

Memory: the engine is built on the first shard that needs it and shut down when :meth:`VLLMGenerator.generate`
returns (also on error), before the run's next stage (training) allocates anything.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spa_recipes.api import GeneratorContext
from spa_recipes.distributed import world_size
from spa_recipes.errors import UserError
from spa_recipes.generation.config import VLLMGenerationConfig
from spa_recipes.generation.hf import shard_seed
from spa_recipes.generation.shards import Row, run_sharded
from spa_recipes.modeling import load_tokenizer
from spa_recipes.sequences import encode_prompt


def prompt_seed(seed: int, shard_index: int, position: int) -> int:
    """The sampling seed of one prompt: a pure function of ``(seed, shard_index, position)``."""
    return int(np.random.SeedSequence([seed, shard_index, position]).generate_state(1)[0] % (2**31 - 1))


class VLLMGenerator:
    """Draws ``samples_per_prompt`` responses per prompt with ``vllm.LLM.generate`` (``n = K`` per request).

    Sampling uses temperature and top_p only (top_k off, no repetition penalty, the checkpoint's
    ``generation_config.json`` ignored), like the HF backend. Temperature 0 is greedy: one draw, copied K times.

    Args:
        cfg: the generator's config (tensor parallel size, GPU memory share, KV cache size, eager mode,
            scheduler token budget, plus the shared sampling settings).
        ctx: nothing a generator needs (each ``generate`` call names its model).
    """

    def __init__(self, cfg: VLLMGenerationConfig, ctx: GeneratorContext = GeneratorContext()) -> None:
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
            seed: sampling seed; prompt ``j`` of shard ``i`` is seeded from ``(seed, i, j)``.
            dtype: model dtype name (``auto``, ``float32``, ``bfloat16``, ``float16``).
            max_prompt_length: prompts longer than this (in tokens) keep their end (and BOS).
            device: ignored; vLLM places the engine itself (in a multi-process run, on this process's GPUs).

        Returns:
            Rows ``{"id", "prompt", "responses": [K str], "finished": [K bool], "num_tokens": [K int]}`` in
            prompt order, as :meth:`HFGenerator.generate` returns them.

        Raises:
            UserError: vllm is not installed.
        """
        loaded: dict[str, Any] = {}

        def shard(index: int, rows: list[Row]) -> list[Row]:
            if not loaded:  # build lazily: a fully finished output folder needs no engine
                loaded["tokenizer"] = load_tokenizer(model_path)
                loaded["engine"] = self._engine(model_path, dtype)
                loaded["stop_ids"] = _stop_token_ids(model_path, loaded["tokenizer"])
            return self._generate_shard(loaded, index, rows, seed, max_prompt_length)

        try:
            return run_sharded(prompts, self.cfg.shard_size, out_dir, shard, desc="generate (vllm)")
        finally:
            _shutdown(loaded.pop("engine", None))
            loaded.clear()

    def _engine(self, model_path: str, dtype: str) -> Any:
        try:
            from vllm import LLM
        except ImportError as exc:  # validation catches this first; a hand-built config may not have
            raise UserError("generation 'vllm' needs vllm: pip install 'spa-recipes[vllm]'") from exc
        kwargs: dict[str, Any] = {
            "model": model_path,
            "tokenizer": model_path,
            "tensor_parallel_size": self.cfg.tensor_parallel_size,
            "gpu_memory_utilization": self.cfg.gpu_memory_utilization,
            "dtype": dtype,
            "enforce_eager": self.cfg.enforce_eager,
            "generation_config": "vllm",  # our sampling settings, not the checkpoint's defaults
            "seed": 0,  # every request carries its own seed
        }
        if self.cfg.kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = self.cfg.kv_cache_memory_bytes
        if self.cfg.max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = self.cfg.max_num_batched_tokens
        with _own_gpus(self.cfg.tensor_parallel_size):
            return LLM(**kwargs)

    def _generate_shard(
        self, loaded: dict[str, Any], index: int, rows: list[Row], seed: int, max_prompt_length: int | None
    ) -> list[Row]:
        from vllm import SamplingParams

        engine, tokenizer, stop_ids = loaded["engine"], loaded["tokenizer"], loaded["stop_ids"]
        k = self.cfg.samples_per_prompt
        greedy = self.cfg.temperature == 0.0
        copies = 1 if greedy else k
        encoded = [encode_prompt(tokenizer, row["prompt"], max_prompt_length) for row in rows]
        params = [
            SamplingParams(
                n=copies,
                temperature=self.cfg.temperature,
                top_p=1.0 if greedy else self.cfg.top_p,
                top_k=0,
                repetition_penalty=1.0,
                max_tokens=self.cfg.max_new_tokens,
                stop_token_ids=stop_ids,
                seed=prompt_seed(shard_seed(seed, index), index, j),
                detokenize=False,  # decoded below by the HF tokenizer, as the HF backend does
            )
            for j in range(len(rows))
        ]
        budget_tokens, budget_seqs = _scheduler_budget(engine)
        outputs: list[Any] = []
        for group in _groups([len(ids) * copies for ids in encoded], copies, budget_tokens, budget_seqs):
            requests = [{"prompt_token_ids": encoded[j]} for j in group]
            outputs += engine.generate(requests, [params[j] for j in group], use_tqdm=False)
        out = []
        for row, output in zip(rows, outputs, strict=True):
            responses, finished, num_tokens = [], [], []
            for completion in list(output.outputs) * (k // copies):
                tokens = list(completion.token_ids)
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


def _groups(tokens: list[int], copies: int, budget_tokens: int, budget_seqs: int) -> Iterator[list[int]]:
    """Consecutive prompt indices, grouped so each group's prompt tokens and sequences fit one step."""
    group: list[int] = []
    used = 0
    for j, n in enumerate(tokens):
        if group and (used + n > budget_tokens or (len(group) + 1) * copies > budget_seqs):
            yield group
            group, used = [], 0
        group.append(j)  # a prompt over the budget alone goes on its own (vLLM then reports its limit)
        used += n
    if group:
        yield group


def _scheduler_budget(engine: Any) -> tuple[int, int]:
    """The engine's tokens and sequences per scheduler step (generous defaults if it does not say)."""
    scheduler = getattr(getattr(getattr(engine, "llm_engine", None), "vllm_config", None), "scheduler_config", None)
    tokens = getattr(scheduler, "max_num_batched_tokens", None) or 2048
    seqs = getattr(scheduler, "max_num_seqs", None) or 256
    return int(tokens), int(seqs)


def _stop_token_ids(model_path: str, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus any EOS ids of the checkpoint's generation config (as the HF backend)."""
    ids = [tokenizer.eos_token_id]
    try:
        from transformers import GenerationConfig

        extra = GenerationConfig.from_pretrained(model_path).eos_token_id
    except (OSError, ValueError):
        extra = None
    ids += extra if isinstance(extra, list) else [extra] if extra is not None else []
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


@contextlib.contextmanager
def _own_gpus(tensor_parallel_size: int) -> Iterator[None]:
    """In a multi-process run, show the engine only this process's GPUs (local rank's slice of them).

    vLLM places its workers on the first visible devices; without this every process's engine would
    land on GPU 0. The engine's worker processes read the variable when they start.
    """
    local = os.environ.get("LOCAL_RANK")
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = before.split(",") if before else [str(i) for i in range(_gpu_count())]
    if world_size() <= 1 or local is None or not visible:  # one process, or a CPU engine
        yield
        return
    first = int(local) * tensor_parallel_size
    mine = visible[first : first + tensor_parallel_size]
    if len(mine) < tensor_parallel_size:
        raise UserError(
            f"generation.tensor_parallel_size {tensor_parallel_size}: local rank {local} would need GPUs "
            f"{first}..{first + tensor_parallel_size - 1} of {len(visible)}; launch fewer processes per node"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _shutdown(engine: Any) -> None:
    """Stop the engine and give its memory back before the next stage (training) starts."""
    if engine is None:
        return
    core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    with contextlib.suppress(Exception):  # best effort: a half-started engine may lack any of these
        core.shutdown()
    del engine, core
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
