"""The generation backends: configs and registration (torch-free)."""

from __future__ import annotations

import importlib.util
from typing import Any

from pydantic import Field, model_validator

from spa_recipes.api import ComponentConfig


class GenerationConfig(ComponentConfig):
    """Sampling settings shared by every generation backend."""

    samples_per_prompt: int = Field(2, ge=2, description="K responses per prompt")
    temperature: float = Field(0.7, ge=0.0, description="sampling temperature; 0: greedy (the K responses are equal)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling: smallest token set of this probability")
    max_new_tokens: int = Field(300, gt=0, description="tokens a response may take (it ends earlier at EOS)")
    shard_size: int = Field(256, gt=0, description="prompts per shard on disk; a cut-off run resumes by shard")


class HFGenerationConfig(GenerationConfig):
    """transformers generate(), batched across prompts."""

    batch_size: int = Field(16, gt=0, description="prompts per generate() call")


class VLLMGenerationConfig(GenerationConfig):
    """A vLLM engine (optional extra)."""

    tensor_parallel_size: int = Field(1, gt=0, description="GPUs per engine")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="share of GPU memory the engine takes")
    kv_cache_memory_bytes: int | None = Field(None, description="set on CPU engines (e.g. 1073741824)")
    enforce_eager: bool = Field(False, description="no CUDA graphs (slower, starts faster, less memory)")
    max_num_batched_tokens: int | None = Field(None, description="scheduler token budget per step; None: vLLM's")

    @model_validator(mode="after")
    def _vllm_installed(self) -> VLLMGenerationConfig:
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "the vllm generation backend needs the vllm package, which is not installed: "
                "pip install 'spa-recipes[vllm]' (or bash scripts/make_vllm_env.sh for the CPU build), "
                "or use generation: {name: hf}"
            )
        return self


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the generation backends."""
    registry.register(
        "generator",
        "hf",
        config=HFGenerationConfig,
        builder="spa_recipes.generation.hf:HFGenerator",
        help="transformers generate(), batched across prompts",
    )
    registry.register(
        "generator",
        "vllm",
        config=VLLMGenerationConfig,
        builder="spa_recipes.generation.vllm:VLLMGenerator",
        help="vLLM engine (optional extra: pip install spa-recipes[vllm])",
    )
