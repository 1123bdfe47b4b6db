"""Generation throughput: the vLLM backend against the HF backend, same model, prompts and settings.

Run it in the vLLM environment (``bash scripts/make_vllm_env.sh``)::

    VLLM_CPU_OMP_THREADS_BIND=0-1 .venv-vllm/bin/python benchmarks/generation_vllm_vs_hf.py

It builds the toy world's tiny Llama (hidden 128, 4 layers, 4 heads: head size 32, which vLLM's CPU
attention supports), samples K responses per prompt with each backend into a fresh folder, and prints
generated tokens per second for each and the ratio vLLM/HF, with and without the vLLM engine start
(a stage pays it once per call), and the HF model load likewise included.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hf-batch-size", type=int, default=64)
    args = parser.parse_args()

    import torch

    from spa_recipes.api import ModelContext
    from spa_recipes.generation.config import HFGenerationConfig, VLLMGenerationConfig
    from spa_recipes.generation.hf import HFGenerator
    from spa_recipes.generation.vllm import VLLMGenerator
    from spa_recipes.modeling import save_model
    from spa_recipes.toyworld.config import TinyLlamaConfig, ToyWorldConfig
    from spa_recipes.toyworld.model import build_tiny_llama
    from spa_recipes.toyworld.world import ToyWorld

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
    startup: list[float] = []
    build_engine = VLLMGenerator._engine

    def timed_engine(self: VLLMGenerator, *a: object) -> object:
        started = time.perf_counter()
        engine = build_engine(self, *a)
        startup.append(time.perf_counter() - started)
        return engine

    VLLMGenerator._engine = timed_engine  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_model(model, tokenizer, root / "model")
        results = {}
        for name, generator in [
            ("hf", HFGenerator(HFGenerationConfig(**shared, batch_size=args.hf_batch_size))),
            ("vllm", VLLMGenerator(VLLMGenerationConfig(**shared, kv_cache_memory_bytes=1 << 30, enforce_eager=True))),
        ]:
            started = time.perf_counter()
            rows = generator.generate(
                prompts,
                model_path=str(root / "model"),
                out_dir=root / name,
                seed=0,
                dtype="float32",
                max_prompt_length=16,
            )
            seconds = time.perf_counter() - started
            tokens = sum(n + f for r in rows for n, f in zip(r["num_tokens"], r["finished"], strict=True))
            results[name] = (tokens, seconds)
            print(
                f"{name:>5}: {len(rows)} prompts x {args.samples}, {tokens} tokens in {seconds:.1f}s "
                f"= {tokens / seconds:.0f} tokens/s",
                flush=True,
            )
    (hf_tokens, hf_s), (vllm_tokens, vllm_s) = results["hf"], results["vllm"]
    hf_rate = hf_tokens / hf_s
    print(f"vllm engine start: {startup[0]:.1f}s")
    print(f"ratio vLLM/HF (tokens/s), engine start included: {(vllm_tokens / vllm_s) / hf_rate:.2f}")
    print(f"ratio vLLM/HF (tokens/s), engine start excluded: {(vllm_tokens / (vllm_s - startup[0])) / hf_rate:.2f}")


if __name__ == "__main__":
    main()
