"""What the loop sets up before its first step: the accelerator and its precision, float32 master weights,
gradient checkpointing, AdamW and the learning-rate schedule.

Precision. The trained model always holds float32 master weights and AdamW state (a model loaded in 16 bits
is upcast by :func:`float32_master_weights`); with a 16-bit ``models.dtype`` the forward and backward run in
it under the accelerator's mixed precision (:func:`make_accelerator`). ``training.gradient_checkpointing``
recomputes each layer's activations in the backward instead of keeping them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from spa_recipes.errors import UserError
from spa_recipes.modeling import resolve_dtype
from spa_recipes.schema import TrainingSection

MIXED_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "no"}


def make_accelerator(dtype: str) -> Any:
    """The trainers' ``Accelerator``, its mixed precision following the recipe's ``models.dtype``.

    A 16-bit ``dtype`` means mixed precision: the trained model keeps float32 master weights and optimiser
    state (:func:`~spa_recipes.training.loop.run_training_loop` makes sure of it) and its forward and backward
    run under autocast in that 16-bit type; under FSDP2 Accelerate turns the same setting into FSDP's
    mixed-precision policy. This argument wins over a launcher config's ``mixed_precision``. The launcher
    (``accelerate launch --config_file``) picks DDP or FSDP.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed_precision = MIXED_PRECISION[resolve_dtype(dtype)]
    # Accelerate keeps one state per process and refuses another precision; a process that trains in two
    # precisions (a notebook, the tests) starts the accelerator state anew. The process group is kept.
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision)


def parallelism(accelerator: Any) -> str:
    """How training is spread: ``single``, ``ddp`` (whole model per process) or ``fsdp2`` (sharded)."""
    if accelerator.is_fsdp2:
        return "fsdp2"
    return "ddp" if accelerator.num_processes > 1 else "single"


def build_optimizer(model: torch.nn.Module, training: TrainingSection) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-d parameters) get no weight decay."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": training.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters (CPU and GPU), instead of a loop of small ops per tensor.
    return torch.optim.AdamW(groups, lr=training.learning_rate, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, training: TrainingSection, total_steps: int) -> Any:
    """Cosine, linear or constant learning rate after ``ceil(warmup_ratio * total_steps)`` linear warm-up steps."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(training.lr_scheduler, training.lr_scheduler)
    warmup = math.ceil(training.warmup_ratio * total_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def float32_master_weights(model: torch.nn.Module) -> None:
    """Upcast a model loaded in 16 bits to float32 in place, so that optimiser updates are not lost.

    At lr 5e-7 an AdamW update is below bf16's resolution for almost every weight; the forward and backward
    still run in 16 bits under the accelerator's autocast (see :func:`make_accelerator`).
    The frozen weights of an adapted model (:mod:`spa_recipes.adapters`) stay as they are: only what trains needs
    master weights.
    """
    trained = [p for p in model.parameters() if p.requires_grad]
    if len(trained) < len(list(model.parameters())):
        for p in trained:
            if p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
    elif any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model.float()


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Keep only each layer's input during the forward and recompute the rest in the backward.

    Non-reentrant checkpointing works with DDP, FSDP2 and inputs that need no gradient.

    Raises:
        UserError: the model class has no gradient checkpointing.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"training.gradient_checkpointing: {type(model).__name__} does not support it")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name is deprecated
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Undo :func:`enable_gradient_checkpointing` on the trained model (it is saved and may be used again)."""
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
