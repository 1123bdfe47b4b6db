"""Shared fixtures: tiny saved Llama models (built with ``helpers_tiny``), no downloads."""

from __future__ import annotations

import os

# One thread per process: the tests are many small models, and two threads on a shared 2-core machine
# oversubscribe it (a 0.15 s training took 20 s). Set before torch loads; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers_tiny import make_tiny_model


def _push_eos(path: Path, eos_logit: float) -> None:
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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Folders of tiny models sharing one tokenizer (words ``w0 .. w56``).

    ``a``, ``b``, ``c``: random models (seeds 0, 1, 2); ``eos_always``: every response ends at once;
    ``eos_never``: EOS is never generated.
    """
    root = tmp_path_factory.mktemp("tiny_models")
    paths = {name: make_tiny_model(root / name, seed=seed) for seed, name in enumerate(["a", "b", "c"])}
    for name, logit in [("eos_always", 50.0), ("eos_never", -50.0)]:
        paths[name] = make_tiny_model(root / name, seed=3)
        _push_eos(paths[name], logit)
    return {name: str(path) for name, path in paths.items()}
