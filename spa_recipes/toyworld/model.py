"""A tiny Llama made from a config (random init), sized for CPU tests and the embedded toy world."""

from __future__ import annotations

from typing import Any

from spa_recipes.api import ModelContext
from spa_recipes.toyworld.config import TinyLlamaConfig


def build_tiny_llama(cfg: TinyLlamaConfig, ctx: ModelContext) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` over the tokenizer's vocabulary.

    The caller seeds torch first; the weights are a function of that seed. Input and output embeddings
    are tied: at these widths the output matrix would be a large share of the parameters.

    Args:
        cfg: widths and depth.
        ctx: its ``tokenizer`` gives the vocabulary size and the bos/eos/pad ids (pad falls back to eos).

    Returns:
        The model in train mode, fp32, with a generation config that stops at EOS and pads with pad.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = ctx.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = pad_id
    return model
