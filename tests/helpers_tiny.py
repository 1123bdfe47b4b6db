"""A tiny Llama and a small word-level tokenizer with a chat template, made locally and saved to a folder.

Reusable by any test: ``make_tiny_model(tmp_path / "m")`` returns the folder, which loads with
``spa_recipes.modeling.load_model`` / ``load_tokenizer``. The vocabulary is the special tokens, the chat
role markers and the words ``w0 .. w{n}`` (or the ``words`` given), split on whitespace.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
ROLES = ["<system>", "<user>", "<assistant>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def make_tokenizer(words: list[str]):
    """A whitespace word-level ``PreTrainedTokenizerFast`` over specials + roles + ``words``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + ROLES + list(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=ROLES,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(
    path: str | Path,
    *,
    vocab: int = 64,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    max_positions: int = 128,
    words: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Build a random-init Llama and its tokenizer and ``save_pretrained`` both into ``path``.

    Args:
        path: output folder (created).
        vocab: total vocabulary size when ``words`` is None (the words are ``w0 .. w{vocab - 8}``).
        hidden: hidden size; ``heads`` must divide it.
        layers: transformer blocks.
        heads: attention heads.
        intermediate: MLP width (default ``4 * hidden``).
        max_positions: longest sequence.
        words: the word list instead of ``w0..``; the vocabulary is then specials + roles + words.
        seed: torch seed of the initialisation.

    Returns:
        The folder.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if words is None:
        words = [f"w{i}" for i in range(vocab - len(SPECIALS) - len(ROLES))]
    tokenizer = make_tokenizer(words)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def push_eos(path: Path, eos_logit: float) -> None:
    """Make a saved model's EOS certain (``eos_logit`` > 0) or impossible (< 0) at every step.

    One residual dimension is made huge in every embedding and read only by the EOS row of the (untied)
    output layer, so the EOS logit is about ``eos_logit * sqrt(hidden)`` whatever the context.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    eos = model.config.eos_token_id
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1000.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[eos, 0] = eos_logit
    model.save_pretrained(path)
