"""The shape of a model, from its ``config.json`` (a folder, the Hugging Face cache or the hub; never the weights).

Everything :mod:`spa_recipes.planning.memory` counts is a function of these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spa_recipes.errors import UserError

PLAN_NEEDS = "plan needs only its config.json"


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's sizes.

    Attributes:
        name: where the shape came from (hub id, folder or component).
        hidden: width of the residual stream h.
        layers: transformer blocks n.
        intermediate: MLP width f (a gated MLP: three h x f matrices).
        vocab: vocabulary V.
        heads: query heads.
        kv_heads: key/value heads (grouped-query attention).
        head_dim: width of one head.
        tied: the LM head shares the input embedding.
    """

    name: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @property
    def layer_parameters(self) -> int:
        """One block: q and o (h x heads*head_dim), k and v (h x kv_heads*head_dim), a gated MLP, two norms."""
        h, attn, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 2 * h * attn + 2 * h * kv + 3 * h * self.intermediate + 2 * h

    @property
    def embedding_parameters(self) -> int:
        """Input embedding and LM head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def parameters(self) -> int:
        """P: every parameter (biases of attention, if any, are left out: well under 0.1%)."""
        return self.layers * self.layer_parameters + self.embedding_parameters + self.hidden

    @property
    def flop_parameters(self) -> int:
        """N of the 6N / 2N rule: the parameters that do a matmul per token (the input lookup does none)."""
        return self.parameters - (0 if self.tied else self.vocab * self.hidden)

    def describe(self) -> str:
        kv = f" ({self.kv_heads} kv)" if self.kv_heads != self.heads else ""
        return (
            f"{self.name}: {self.parameters / 1e9:.3g}B parameters, {self.layers} layers, hidden {self.hidden}, "
            f"MLP {self.intermediate}, {self.heads} heads{kv} of {self.head_dim}, vocab {self.vocab}"
            f"{', tied head' if self.tied else ''}"
        )


def shape_from_config(config: Any, name: str) -> ModelShape:
    """A shape from a transformers config (or any object or dict with the usual attribute names).

    Raises:
        UserError: the config lacks a size the plan needs (not a decoder-only transformer it knows).
    """
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    text = get("text_config")  # multimodal wrappers keep the language model's sizes here
    if text is not None and get("hidden_size") is None:
        return shape_from_config(text, name)
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads") if get(k) is None]
    if missing:
        raise UserError(f"{name}: config.json has no {', '.join(missing)}; the plan knows decoder-only transformers")
    hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    return ModelShape(
        name=name,
        hidden=hidden,
        layers=int(get("num_hidden_layers")),
        intermediate=int(get("intermediate_size") or 4 * hidden),
        vocab=int(get("vocab_size")),
        heads=heads,
        kv_heads=int(get("num_key_value_heads") or heads),
        head_dim=int(get("head_dim") or hidden // heads),
        tied=bool(get("tie_word_embeddings", False)),
    )


def read_shape(source: str, key: str) -> ModelShape:
    """The shape of a hub id or folder, from its ``config.json`` alone (the rehearsal's offline rules).

    Raises:
        UserError: the config cannot be read; offline and not cached, the line says what to fetch or override.
    """
    from transformers import AutoConfig

    from spa_recipes.tiny_models import from_pretrained

    return shape_from_config(from_pretrained(AutoConfig.from_pretrained, source, key, needs=PLAN_NEEDS), source)


def base_shape(recipe: Any) -> ModelShape:
    """The shape of ``models.base``, a model component, built on the meta device (no memory, no weights).

    Raises:
        UserError: the component needs a tokenizer the dataset does not give.
    """
    import torch

    from spa_recipes.registry import get_registry

    registry = get_registry()
    spec = recipe.models.base
    dataset = registry.get("dataset", recipe.data.name).build(recipe.data.args)
    if not hasattr(dataset, "tokenizer"):
        raise UserError(f"models.base '{spec.name}': the dataset '{recipe.data.name}' gives no tokenizer to size it")
    component = registry.get("model", spec.name)
    with torch.device("meta"):
        model = component.build(spec.args, tokenizer=dataset.tokenizer())
    return shape_from_config(model.config, f"models.base ({spec.name})")
