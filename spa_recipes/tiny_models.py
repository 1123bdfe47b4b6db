"""Tiny random models of a real model's class, for rehearsals: its ``config.json`` shrunk, its tokenizer kept.

Only a model's config, tokenizer and generation-config files are read (from a folder, the local Hugging Face
cache, or the hub when it can be reached), never its weights. :func:`shrink_pretrained` makes a causal LM (or
sequence classifier) of the same class; :func:`tiny_pairrm` a PairRM in the layout
:func:`spa_recipes.judges.pairrm.load_pairrm` reads.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from spa_recipes.errors import UserError

TINY_LAYERS = 2
TINY_HEADS = 4  # query heads when the grouped-query ratio allows
TINY_HEAD_DIM = 8  # widened where a partial rotary embedding needs an even rotary width
FETCH_PATTERNS = "'*.json' '*.model' '*.txt' '*.jinja'"  # config, tokenizer, chat template: no weights
DEBERTA_V3 = {  # the shape of microsoft/deberta-v3-large, PairRM's backbone, when its config is not here
    "relative_attention": True,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    "type_vocab_size": 0,
    "max_position_embeddings": 512,
    "layer_norm_eps": 1e-7,
    "hidden_act": "gelu",
}


# Hub access ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be reached: no under ``HF_HUB_OFFLINE``, else a 3 s connection try."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # through a proxy: let the hub client try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=3):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_if_unreachable() -> Iterator[None]:
    """With no hub, tell the hub clients so (``HF_HUB_OFFLINE=1``): they read their caches without retrying.

    Takes effect for the libraries imported from here on (the ``spa-recipe`` process imports them later).
    """
    if hub_reachable():
        yield
        return
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class NotOnThisMachine(UserError):
    """A hub model or file that is neither in a folder nor in the local cache, with no hub to fetch it from."""


def from_pretrained(
    loader: Callable[..., Any],
    name: str,
    key: str,
    needs: str = "rehearse needs only its config.json and tokenizer files",
) -> Any:
    """``loader(name)`` from a local folder, the local HF cache, or the hub when it can be reached.

    Args:
        loader: a ``from_pretrained`` (``AutoConfig.from_pretrained``, ``AutoTokenizer.from_pretrained``, ...).
        name: a folder or a hub id.
        key: the recipe key that names it, for messages.
        needs: what the command needs of the model, said when it is not here.

    Returns:
        What the loader returns.

    Raises:
        UserError: one line: the folder lacks the file, or the hub cannot give it.
        NotOnThisMachine: the hub id is neither cached nor reachable (the line gives the command that fetches
            only the config and tokenizer files, and the override that names a folder instead).
    """
    folder = Path(name).expanduser()
    if folder.is_dir():
        try:
            return loader(str(folder))
        except (OSError, ValueError, ImportError) as exc:
            raise UserError(f"{key} '{name}': {first_line(exc)}") from None
    try:
        return loader(name, local_files_only=True)
    except (OSError, ValueError, ImportError):
        pass
    if hub_reachable():
        try:
            return loader(name)
        except (OSError, ValueError, ImportError) as exc:
            raise UserError(f"{key} '{name}': {first_line(exc)}") from None
    raise NotOnThisMachine(
        f"{key} '{name}': not on this machine (not a folder, not in the Hugging Face cache) and the hub cannot be "
        f"reached; {needs}: run `hf download {name} --include "
        f"{FETCH_PATTERNS}` where the hub is reachable (it fills ~/.cache/huggingface/hub; copy that here), or "
        f"give a folder that holds them: {key}=/path/to/folder"
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Tiny models --------------------------------------------------------------------------------------------


@dataclass
class TinyModel:
    """A tiny model folder made by :func:`shrink_pretrained`."""

    path: Path
    class_name: str
    config: Any
    parameters: int
    megabytes: float
    dtype: str
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        c = self.config
        heads, kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return (
            f"{self.class_name} ({c.model_type}), random init: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
            f"{heads} heads ({kv} kv) of {c.head_dim}, vocab {c.vocab_size}, {self.dtype}: "
            f"{self.parameters / 1e6:.1f}M parameters, {self.megabytes:.1f} MB ({self.path})"
        )


def tiny_config(config: Any) -> Any:
    """A copy of a transformers model config shrunk to a few MB, of the same class and ``model_type``.

    ``TINY_LAYERS`` layers (one of each kind when the config lists ``layer_types``); ``TINY_HEADS`` query heads
    with the original's grouped-query ratio (more heads when the ratio is larger); heads ``TINY_HEAD_DIM``
    wide, widened until a partial rotary embedding gets an even width; MLP twice the hidden size; rotary
    scaling factor lists cut to the new rotary width. The vocabulary, positions, rotary base, sliding window,
    tied embeddings and special token ids stay as they are.

    Args:
        config: a ``PretrainedConfig`` of a decoder (``num_attention_heads``, ``hidden_size``, ...).

    Returns:
        The shrunk copy (the original is not changed).
    """
    config = copy.deepcopy(config)
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    ratio = heads // kv if heads % kv == 0 else 1
    new_kv = max(1, TINY_HEADS // ratio)
    new_heads = new_kv * ratio
    ropes = [r for r in (getattr(config, "rope_parameters", None), getattr(config, "rope_scaling", None)) if r]
    partial = getattr(config, "partial_rotary_factor", None) or next(
        (r["partial_rotary_factor"] for r in _rope_dicts(ropes) if r.get("partial_rotary_factor")), 1.0
    )
    head_dim = TINY_HEAD_DIM
    while int(head_dim * partial) < 2 or int(head_dim * partial) % 2:
        head_dim += 2
    config.num_attention_heads = new_heads
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = new_kv
    config.head_dim = head_dim
    config.hidden_size = new_heads * head_dim
    if hasattr(config, "intermediate_size"):
        config.intermediate_size = 2 * config.hidden_size
    layers = TINY_LAYERS
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and layer_types:
        kinds = list(dict.fromkeys(layer_types))
        layers = max(layers, len(kinds))
        config.layer_types = [kinds[i % len(kinds)] for i in range(layers)]
    config.num_hidden_layers = layers
    rotary_half = int(head_dim * partial) // 2
    for rope in _rope_dicts(ropes):
        for key in ("short_factor", "long_factor"):
            if isinstance(rope.get(key), list):
                rope[key] = rope[key][:rotary_half]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def _rope_dicts(ropes: list[Any]) -> list[dict[str, Any]]:
    """The rotary settings dicts, including those nested per layer type."""
    found: list[dict[str, Any]] = []
    for rope in ropes:
        if isinstance(rope, dict):
            found.append(rope)
            found += _rope_dicts([v for v in rope.values() if isinstance(v, dict)])
    return found


def shrink_pretrained(
    source: str, out: Path, *, key: str, dtype: str, seed: int, auto_class: str = "AutoModelForCausalLM"
) -> TinyModel:
    """A tiny random model of ``source``'s class, saved with ``source``'s tokenizer and generation config.

    Reads ``source``'s ``config.json``, tokenizer files and ``generation_config.json`` (a folder, the HF cache,
    or the hub when reachable), never its weights.

    Args:
        source: folder or hub id of the model.
        out: folder to ``save_pretrained`` into.
        key: the recipe key naming the model, for messages.
        dtype: the recipe's ``models.dtype``: the weights are saved in it (``auto``: float32 here).
        seed: torch seed of the initialisation.
        auto_class: the transformers auto class the run loads the model with.

    Returns:
        The tiny model's folder and description.

    Raises:
        UserError: the config or tokenizer cannot be read (see :func:`from_pretrained`), the tokenizer has no
            chat template, or transformers has no ``auto_class`` model for the config.
    """
    import torch
    import transformers

    from spa_recipes.modeling import load_tokenizer, resolve_dtype

    config = from_pretrained(transformers.AutoConfig.from_pretrained, source, key)
    tokenizer = from_pretrained(transformers.AutoTokenizer.from_pretrained, source, key)
    try:
        generation = from_pretrained(transformers.GenerationConfig.from_pretrained, source, key)
    except UserError:
        generation = None  # a model without generation_config.json: the one made from its config
    small = tiny_config(config)
    torch_dtype = resolve_dtype(dtype)
    transformers.utils.logging.disable_progress_bar()  # as the runner does: its own lines say what happens
    torch.manual_seed(seed)
    try:
        model = getattr(transformers, auto_class).from_config(small, dtype=torch_dtype)
    except ValueError as exc:
        raise UserError(f"{key} '{source}': {first_line(exc)}") from None
    if generation is not None:
        model.generation_config = generation
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    try:
        load_tokenizer(str(out))  # what every stage does: a chat template and a pad token
    except UserError as exc:
        raise UserError(f"{key}: {exc.problems[0].replace(str(out), source)}") from None
    unique = {id(p): p for p in model.parameters()}.values()
    warnings = []
    if len(tokenizer) > small.vocab_size:
        warnings.append(
            f"warning: the tokenizer has {len(tokenizer)} tokens but the model's embedding {small.vocab_size}: "
            "ids past the embedding fail"
        )
    return TinyModel(
        path=out.resolve(),
        class_name=type(model).__name__,
        config=small,
        parameters=sum(p.numel() for p in unique),
        megabytes=sum(p.numel() * p.element_size() for p in unique) / 2**20,
        dtype=str(torch_dtype).removeprefix("torch."),
        warnings=warnings,
    )


# PairRM ------------------------------------------------------------------------------------------------


def tiny_pairrm(cfg: Any, out: Path, *, policy_tokenizer: Path | None, seed: int) -> tuple[Path, str]:
    """A tiny random PairRM in the ``llm-blender/PairRM-hf`` layout, which :func:`load_pairrm` reads.

    The DeBERTa-v2 backbone is the checkpoint's own config shrunk (2 layers, hidden 32, 4 heads) and the
    tokenizer is its own, when PairRM's config and tokenizer files (and its backbone's config) are on this
    machine or the hub is reachable; otherwise a DeBERTa-v3-shaped config over the policy's tokenizer.

    Args:
        cfg: the judge's ``PairRMJudgeConfig``.
        out: the folder to write.
        policy_tokenizer: a folder with the policy's tokenizer (the fallback).
        seed: torch seed of the initialisation.

    Returns:
        ``(folder, a note saying what it is)``.

    Raises:
        UserError: PairRM's files are not here and there is no policy tokenizer to fall back on.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, DebertaV2Config

    from spa_recipes.judges.pairrm import MARKERS, PairRMModel

    try:
        backbone, tokenizer = _pairrm_backbone_and_tokenizer(cfg, AutoConfig, AutoTokenizer, DebertaV2Config)
        origin = "its own tokenizer"
    except UserError as exc:
        if policy_tokenizer is None:
            raise
        backbone = DebertaV2Config(**DEBERTA_V3)
        tokenizer = AutoTokenizer.from_pretrained(str(policy_tokenizer))
        why = (
            "they are not on this machine and the hub cannot be reached"
            if isinstance(exc, NotOnThisMachine)
            else (exc.problems[0])
        )
        origin = (
            f"the policy's tokenizer, in place of PairRM's own config and tokenizer: {why} (to rehearse with them: "
            f"hf download {cfg.path} --include {FETCH_PATTERNS}, and the same for its backbone)"
        )
    missing = [m for m in MARKERS if m not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
    small = copy.deepcopy(backbone)
    small.update(
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "pooler_hidden_size": 32,
            "vocab_size": len(tokenizer),
            "n_tasks": 1,
            "drop_out": 0.05,
        }
    )
    torch.manual_seed(seed)
    model = PairRMModel(small, n_tasks=1)
    out.mkdir(parents=True, exist_ok=True)
    small.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    size = sum(p.numel() for p in model.parameters())
    return out.resolve(), f"tiny DeBERTa-v2 PairRM, random init ({size / 1e6:.1f}M parameters) on {origin} ({out})"


def _pairrm_backbone_and_tokenizer(cfg: Any, auto_config: Any, auto_tokenizer: Any, deberta: Any) -> tuple[Any, Any]:
    """PairRM's backbone config and tokenizer, from its folder, the HF cache or the hub (no weights read)."""
    config_file = from_pretrained(_file_getter("config.json"), cfg.path, "pairrm path")
    meta = json.loads(Path(config_file).read_text())
    folder = Path(config_file).parent
    if "ranker_type" in meta:
        base = cfg.backbone or meta.get("model_name")
        if not base:
            raise UserError(f"PairRM '{cfg.path}': its config names no model_name; set the judge's backbone")
        backbone = from_pretrained(auto_config.from_pretrained, base, "pairrm backbone")
        sources = [str(folder), base]
    else:
        backbone, sources = deberta.from_pretrained(str(folder)), [str(folder)]
    for source in sources:
        with contextlib.suppress(UserError):
            return backbone, from_pretrained(auto_tokenizer.from_pretrained, source, "pairrm tokenizer")
    raise UserError(f"PairRM '{cfg.path}': no tokenizer in {sources}")


def _file_getter(filename: str) -> Callable[..., str]:
    """A loader for :func:`from_pretrained` that returns the local path of one file of a folder or hub repo."""

    def get(name: str, **kwargs: Any) -> str:
        if Path(name).is_dir():
            path = Path(name) / filename
            if not path.is_file():
                raise OSError(f"no {filename} in {name}")
            return str(path)
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download(name, filename, **kwargs)
        except Exception as exc:  # the hub client's errors are not all OSErrors
            raise OSError(first_line(exc)) from None

    return get
