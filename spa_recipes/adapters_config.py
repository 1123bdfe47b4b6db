"""The recipe's ``models.adapter``: LoRA (and QLoRA) through PEFT for the DPO stages. Torch-free.

With an adapter, seed DPO and every iteration train a fresh LoRA adapter on top of the stage's starting model,
whose own weights stay frozen in ``models.dtype``; where the DPO reference is that starting model (SPA: pi_{i-1}),
it is the same weights with the adapter disabled, not a second copy. The code is in :mod:`spa_recipes.adapters`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LoraAdapterConfig(BaseModel):
    """LoRA through PEFT for seed DPO and each iteration: a fresh adapter on the frozen starting model, which is also
    the DPO reference (adapter disabled); QLoRA with ``load_in_4bit``."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    name: Literal["lora"] = Field(description="the adapter: lora (LoRA through PEFT, the optional extra `lora`)")
    r: int = Field(16, gt=0, description="rank of each adapter matrix pair")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator: the update is (alpha / r) x B A")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter's input in training")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="names of the linear layers that get an adapter (e.g. [q_proj, k_proj, v_proj, o_proj]); "
        "all-linear: every linear layer but the LM head",
    )
    load_in_4bit: bool = Field(
        False,
        description="QLoRA: the frozen base in 4-bit NF4 through bitsandbytes (CUDA only); the adapter trains in "
        "float32 and computes in models.dtype",
    )
    save: Literal["merged", "adapter"] = Field(
        "merged",
        description="what a trained stage writes: merged (the adapter merged into full weights: every consumer, "
        "vLLM included, loads it as any model) or adapter (adapter weights and a pointer to the starting model, "
        "merged when loaded; saves disk, HF generation only)",
    )

    @property
    def scaling(self) -> float:
        """The factor of the low-rank update B A (PEFT's ``lora_alpha / r``)."""
        return self.alpha / self.r
