"""Shared fixtures: tiny saved Llama models (built with ``helpers_tiny``), no downloads."""

from __future__ import annotations

import os

# One thread per process: the tests are many small models, and two threads on a shared 2-core machine
# oversubscribe it (a 0.15 s training took 20 s). Set before torch loads; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from helpers_tiny import make_tiny_model, push_eos


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
        push_eos(paths[name], logit)
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shrunk tiny recipe (test_runner.SHRUNK) run once, never interrupted: what resumed runs must equal."""
    from test_runner import run_tiny

    out = tmp_path_factory.mktemp("reference")
    result = run_tiny(out)
    assert result.returncode == 0, result.stderr
    return out / "t"
