"""Loading and saving models: one code path for a hub id, a local folder, and the tiny models of tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from spa_recipes.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU that supports it and float32 elsewhere (bf16 is slow on CPU)."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return DTYPES[name]


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model folder or hub id, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load tokenizer '{path}': {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise UserError(f"tokenizer '{path}' has no chat template; SPA renders prompts with it")
    return tokenizer


def load_model(
    path: str,
    dtype: str = "auto",
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
) -> Any:
    """A causal LM from a hub id or a ``save_pretrained`` folder, in eval mode.

    A folder holding only a LoRA adapter (``models.adapter.save: adapter``) is its starting model with the adapter
    merged in (:func:`spa_recipes.adapters.load_merged`). ``load_in_4bit``: the weights in 4-bit NF4 through
    bitsandbytes (QLoRA's frozen base; CUDA only), computing in ``dtype``.
    """
    from transformers import AutoModelForCausalLM

    if (Path(path) / "adapter_config.json").is_file():
        from spa_recipes.adapters import load_merged

        def load_base(base: str, base_dtype: str) -> Any:
            return load_model(base, base_dtype, trust_remote_code=trust_remote_code)

        model = load_merged(path, dtype, load_base)
    else:
        extra: dict[str, Any] = {}
        if load_in_4bit:
            from transformers import BitsAndBytesConfig

            compute = resolve_dtype(dtype)
            extra["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
            )
            extra["device_map"] = {"": torch.cuda.current_device()}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, **extra
            )
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load model '{path}': {str(exc).splitlines()[0]}") from exc
    if device is not None:
        model.to(device)
    return model.eval()


def save_model(
    model: Any,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    state_dict: dict[str, torch.Tensor] | None = None,
    dtype: str | None = None,
) -> None:
    """``save_pretrained`` of model, tokenizer and generation config into ``out_dir``.

    Args:
        model: the model (its config and class; its weights unless ``state_dict`` is given).
        tokenizer: saved beside it.
        out_dir: written into directly; callers make it atomic by writing to a temporary folder and renaming.
        state_dict: replaces the model's own weights (the gathered full weights of a sharded model).
        dtype: the recipe's ``models.dtype``: floating weights are written in it (a model trained with
            float32 master weights is saved in 16 bits, as it was loaded). None: as they are.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if state_dict is None and dtype is not None:
        state_dict = model.state_dict()
    if state_dict is not None:
        # Gathered tensors no longer share storage, so save_pretrained cannot see tied weights (an LM head
        # tied to the embeddings): keep the first name of each shared parameter, as named_parameters() does.
        named = {n for n, _ in model.named_parameters()}
        aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - named
        state_dict = {k: v for k, v in state_dict.items() if k not in aliases}
    if dtype is not None:
        target = resolve_dtype(dtype)
        state_dict = {k: v.to(target) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.save_pretrained(out, state_dict=state_dict)
    if dtype is not None:
        # save_pretrained writes the dtype of the model in memory (float32 master weights); the config must
        # name the dtype of the weights on disk, which loaders with dtype="auto" (and vLLM) go by.
        kept = model.config.dtype
        model.config.dtype = target
        model.config.save_pretrained(out)
        model.config.dtype = kept
    tokenizer.save_pretrained(out)
