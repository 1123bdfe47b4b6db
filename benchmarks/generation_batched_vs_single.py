"""HF generation backend: prompts batched (``batch_size`` prompts per ``generate()``) vs one prompt at a time.

Same model (the toy world's tiny Llama, as in recipes/tiny_spa.yaml: hidden 128, 4 layers), prompts,
K samples per prompt, temperature 1 and ``max_new_tokens``; each run writes into a fresh folder so nothing
is resumed. Runs alternate (batched, single, batched, ...); the best of each counts. The figure is
generated tokens (EOS counted, padding not) per second of the whole ``generate`` call (model load included).

    .venv/bin/python benchmarks/generation_batched_vs_single.py
    .venv/bin/python benchmarks/generation_batched_vs_single.py --prompts 64 --batch-size 16 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from spa_recipes.api import ModelContext
from spa_recipes.generation.config import HFGenerationConfig
from spa_recipes.generation.hf import HFGenerator
from spa_recipes.modeling import save_model
from spa_recipes.toyworld.config import TinyLlamaConfig, ToyWorldConfig
from spa_recipes.toyworld.model import build_tiny_llama
from spa_recipes.toyworld.world import ToyWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    world = ToyWorld(ToyWorldConfig(num_prompts=max(args.prompts, 100), sft_demonstrations=0))
    prompts = [{"id": r["id"], "prompt": r["prompt"]} for r in world.rows()[: args.prompts]]
    tokenizer = world.tokenizer()
    torch.manual_seed(0)
    model = build_tiny_llama(
        TinyLlamaConfig(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=344), ModelContext(tokenizer)
    )
    shared = {
        "samples_per_prompt": args.samples,
        "temperature": 1.0,
        "max_new_tokens": args.max_new_tokens,
        "shard_size": args.prompts,
    }
    times: dict[str, list[tuple[int, float]]] = {"batched": [], "single": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_model(model, tokenizer, root / "model")
        for r in range(args.repeats):
            for name, batch_size in (("batched", args.batch_size), ("single", 1)):
                generator = HFGenerator(HFGenerationConfig(**shared, batch_size=batch_size))
                start = time.perf_counter()
                rows = generator.generate(
                    prompts,
                    model_path=str(root / "model"),
                    out_dir=root / f"{name}{r}",
                    seed=0,
                    dtype="float32",
                    max_prompt_length=16,
                )
                seconds = time.perf_counter() - start
                tokens = sum(n + f for row in rows for n, f in zip(row["num_tokens"], row["finished"], strict=True))
                times[name].append((tokens, seconds))
    print(
        f"{args.prompts} prompts x {args.samples} samples, max_new_tokens {args.max_new_tokens}, toy-world Llama "
        f"hidden 128 x 4 layers, fp32, {torch.get_num_threads()} threads"
    )
    rate = {}
    for name, runs in times.items():
        rate[name] = max(t / s for t, s in runs)
        shown = ", ".join(f"{t} tok in {s:.1f}s" for t, s in runs)
        label = f"batch {args.batch_size}" if name == "batched" else "batch 1"
        print(f"  {name:7s} ({label}): best {rate[name]:7.0f} tokens/s   (runs: {shown})")
    print(f"  batched / single (tokens/s): {rate['batched'] / rate['single']:.1f}")
    print(
        f"reproduce: .venv/bin/python benchmarks/generation_batched_vs_single.py --prompts {args.prompts} "
        f"--samples {args.samples} --max-new-tokens {args.max_new_tokens} --batch-size {args.batch_size} "
        f"--repeats {args.repeats}"
    )


if __name__ == "__main__":
    main()
