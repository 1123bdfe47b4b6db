"""LoRA adapters through PEFT: the trained policy, its reference with the adapter disabled, and saving.

With ``models.adapter`` a DPO stage trains a fresh adapter on top of its starting model. The starting model's
weights stay frozen in ``models.dtype`` (4-bit NF4 with ``load_in_4bit``); only the adapter (float32) has
gradients and AdamW state. A fresh adapter starts with B = 0, so the policy with its adapter disabled *is* the
starting model: where the DPO reference is the starting model (SPA: pi_{i-1}), the reference log-probs and DND's
reference logits come from the same weights under :func:`adapter_disabled`, not from a second copy.

Saving (:func:`save_policy`): by default the adapter is merged into the starting model's weights and the result
is written as any model (``save_pretrained``), so generation (HF, vLLM), the judge and evaluation read it
unchanged. With ``save: adapter`` only the adapter is written, in PEFT's format with the absolute path of the
starting model; :func:`spa_recipes.modeling.load_model` merges it on load (one loading path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from spa_recipes.adapters_config import LoraAdapterConfig
from spa_recipes.atomic import atomic_dir
from spa_recipes.errors import UserError
from spa_recipes.modeling import load_model

ADAPTER_CONFIG = "adapter_config.json"  # PEFT's file: a folder holding it is an adapter, merged on load
PEFT_PREFIX = "base_model.model."  # what PeftModel puts in front of the wrapped model's parameter names


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise UserError(
            "models.adapter: needs PEFT, the optional extra `lora`: pip install -c constraints.txt 'spa-recipes[lora]'"
        ) from None
    return peft


def require_cuda_for_4bit(adapter: LoraAdapterConfig) -> None:
    """QLoRA's 4-bit base runs on CUDA only (bitsandbytes).

    Raises:
        UserError: ``load_in_4bit`` on a machine without a CUDA GPU, or without bitsandbytes.
    """
    if not adapter.load_in_4bit:
        return
    if not torch.cuda.is_available():
        raise UserError(
            "models.adapter.load_in_4bit: QLoRA (a 4-bit base through bitsandbytes) needs a CUDA GPU; this machine "
            "has none: set it to false (LoRA on a base in models.dtype)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("models.adapter.load_in_4bit: needs bitsandbytes: pip install bitsandbytes") from None


def linear_layer_names(model: torch.nn.Module) -> set[str]:
    """The last name of every linear layer of ``model`` (what ``target_modules`` names), the LM head excepted."""
    head = model.get_output_embeddings()
    return {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)} - (
        {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if mod is head}
    )


def check_target_modules(model: torch.nn.Module, adapter: LoraAdapterConfig) -> None:
    """Raises UserError naming ``models.adapter.target_modules`` when one of them is not a linear layer of ``model``."""
    if adapter.target_modules == "all-linear":
        return
    have = linear_layer_names(model)
    missing = [name for name in adapter.target_modules if name not in have]
    if missing:
        raise UserError(
            f"models.adapter.target_modules: {', '.join(missing)} not among the linear layers of "
            f"{type(model).__name__} ({', '.join(sorted(have))})"
        )


def check_target_modules_of(path: str, adapter: LoraAdapterConfig) -> None:
    """:func:`check_target_modules` against the model at ``path``, built from its config on the meta device (no
    weights are read): for ``spa-recipe validate``.

    Raises:
        UserError: a target module that the model does not have.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if adapter.target_modules == "all-linear":
        return
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    check_target_modules(model, adapter)


def add_adapter(model: torch.nn.Module, adapter: LoraAdapterConfig, seed: int = 0) -> Any:
    """``model`` (frozen) with a fresh LoRA adapter: a ``PeftModel`` whose only trainable weights are the adapter's.

    The adapter's weights are float32 whatever the base's dtype (PEFT's ``autocast_adapter_dtype``): they are the
    master weights AdamW updates. A is drawn from ``seed`` (B is 0), without touching the global RNG: the same
    adapter in every process and in a run resumed or not.
    """
    peft = _peft()
    check_target_modules(model, adapter)
    config = peft.LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config, autocast_adapter_dtype=True)


def load_policy(path: str, dtype: str, adapter: LoraAdapterConfig | None, seed: int = 0) -> Any:
    """The model a DPO stage trains: whole in float32 (master weights), or the frozen base in ``dtype`` plus a
    fresh adapter drawn from ``seed``."""
    if adapter is None:
        return load_model(path, "float32")  # float32 master weights; computes in `dtype` under autocast
    require_cuda_for_4bit(adapter)
    base = load_model(path, dtype, load_in_4bit=adapter.load_in_4bit)
    if adapter.load_in_4bit:
        base = _peft().prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    return add_adapter(base, adapter, seed)


def is_adapted(model: Any) -> bool:
    """Whether ``model`` (the unwrapped policy) is a PEFT model."""
    peft = _peft_or_none()
    return peft is not None and isinstance(model, peft.PeftModel)


def _peft_or_none() -> Any:
    try:
        import peft
    except ImportError:
        return None
    return peft


def base_of(model: Any) -> Any:
    """The transformers model inside a PEFT model (whose forward signature the trainers inspect), else ``model``."""
    return model.get_base_model() if is_adapted(model) else model


@contextlib.contextmanager
def adapter_disabled(model: Any) -> Iterator[None]:
    """Inside: ``model`` computes as its base (the stage's starting model); a no-op for a model without adapter."""
    if not is_adapted(model):
        yield
        return
    with model.disable_adapter():
        yield


class DisabledAdapterReference:
    """The DPO reference as a callable model: the policy with its adapter disabled, in eval mode, without gradient.

    Eval mode: the reference must not see the dropout the policy trains with (a loaded reference is in eval mode).
    """

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def forward(self, input_ids: torch.Tensor, **kw: Any) -> Any:
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad(), adapter_disabled(self.policy):
                return self.policy(input_ids=input_ids, **kw)
        finally:
            self.policy.train(was_training)

    __call__ = forward

    def get_base_model(self) -> Any:
        """The transformers model it computes with (what the trainers ask: packing layout, LM head)."""
        return base_of(self.policy)


def reference_from_policy(policy: Any, policy_path: str, reference_path: str) -> DisabledAdapterReference | None:
    """The reference served by the policy's own weights, or None when that route does not apply.

    It applies when the policy carries an adapter and the reference is the stage's starting model (SPA: pi_{i-1}
    for iteration i, pi_init for seed DPO). A recipe whose reference is another model (e.g. pi_init in every
    iteration) loads it as without adapter.
    """
    if not is_adapted(policy) or policy_path != reference_path:
        return None
    return DisabledAdapterReference(policy)


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A PEFT LoRA model's full state dict -> the plain model's, each adapted weight ``W + scaling x B A``.

    The sum is taken in float32 and stored in W's dtype (the frozen base's).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if key.endswith(".base_layer.weight"):
            stem = key[: -len(".base_layer.weight")]
            a, b = state[f"{stem}.lora_A.default.weight"], state[f"{stem}.lora_B.default.weight"]
            value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)
        out[key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")] = value
    return out


def save_policy(
    accelerator: Any,
    result: Any,
    tokenizer: Any,
    output_dir: Path,
    dtype: str,
    adapter: LoraAdapterConfig | None,
    base_path: str,
) -> None:
    """Save a finished loop's model: as today without adapter, else merged or adapter-only (``adapter.save``).

    Every process must call it.

    Args:
        result: the :class:`~spa_recipes.training.loop.LoopResult` (its ``state_dict``: the gathered PEFT weights on
            the main process).
        base_path: the starting model, which an adapter-only folder points to.
    """
    from spa_recipes.training.loop import save_trained

    if adapter is None:
        save_trained(accelerator, result, tokenizer, output_dir, dtype)
        return
    if adapter.save == "adapter":
        if not result.stopped_early and accelerator.is_main_process:
            model = result.model
            local = Path(base_path).expanduser()
            model.peft_config["default"].base_model_name_or_path = str(local.resolve()) if local.exists() else base_path
            with atomic_dir(output_dir) as tmp:
                model.save_pretrained(tmp, state_dict=result.state_dict)
                tokenizer.save_pretrained(tmp)
        accelerator.wait_for_everyone()
        return
    merged = merged_state_dict(result.state_dict, adapter.scaling) if result.state_dict else {}
    plain = dataclasses.replace(result, model=result.model.unload(), state_dict=merged)
    save_trained(accelerator, plain, tokenizer, output_dir, dtype)


def load_merged(path: str | os.PathLike[str], dtype: str, load: Any) -> Any:
    """An adapter-only folder as a plain model: its starting model (loaded with ``load``, itself maybe an adapter
    folder) with the adapter merged in."""
    peft = _peft()
    config = peft.PeftConfig.from_pretrained(str(path))
    base = load(config.base_model_name_or_path, dtype)
    return peft.PeftModel.from_pretrained(base, str(path)).merge_and_unload()
