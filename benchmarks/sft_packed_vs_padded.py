"""The SFT trainer with packed batches against the same trainer with one right-padded sequence per row.

The main job's SFT warm-up (recipes/tiny_spa.yaml: the toy world's demonstrations, its tiny Llama, batch 64,
lengths 16/64), cut to ``--epochs``, run by ``train_sft`` twice per repeat, alternating: as shipped (the
model's packed layout, ``spa_recipes.packing.layout_for``), and with the layout forced to ``padded`` (what a
model that cannot pack gets: one sequence per row, padded to the batch's longest; the layout before
packing). Same examples, order and micro-batches. The figure is real tokens (prompt + response, no
padding) per second of the whole call (tokenization, training, saving); the positions each layout computes
are counted from the same batches.

    .venv/bin/python benchmarks/sft_packed_vs_padded.py
    .venv/bin/python benchmarks/sft_packed_vs_padded.py --epochs 0.5 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import spa_recipes.training.sft as sft
from spa_recipes.api import ModelContext
from spa_recipes.packing import layout_for, pack
from spa_recipes.recipe import load_recipe
from spa_recipes.sequences import encode_sequences
from spa_recipes.toyworld.config import TinyLlamaConfig, ToyWorldConfig
from spa_recipes.toyworld.model import build_tiny_llama
from spa_recipes.toyworld.world import ToyWorld
from spa_recipes.training.data_order import epoch_batches

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    recipe = load_recipe(str(ROOT / "recipes" / "tiny_spa.yaml"), [f"training.sft.epochs={args.epochs}"])
    training, base = recipe.training.sft, recipe.models.base
    world = ToyWorld(
        ToyWorldConfig(num_prompts=recipe.data.num_prompts, sft_demonstrations=recipe.data.sft_demonstrations)
    )
    tokenizer, demos = world.tokenizer(), world.demonstrations()
    model_cfg = TinyLlamaConfig(**{k: v for k, v in base.model_dump().items() if k in TinyLlamaConfig.model_fields})

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_tiny_llama(model_cfg, ModelContext(tokenizer=tokenizer))

    # Positions per epoch of each layout, on the trainer's own first-epoch micro-batches.
    encoded = encode_sequences(
        tokenizer,
        [d["prompt"] for d in demos],
        [d["response"] for d in demos],
        training.max_prompt_length,
        training.max_length,
    )
    batches = epoch_batches(
        len(encoded), seed=0, epoch=0, batch_size=training.batch_size, num_processes=1, process_index=0
    )
    layout = layout_for(model())
    positions = {
        name: sum(pack([encoded[i] for i in b], tokenizer.pad_token_id, layout=lay).positions for b in batches)
        for name, lay in (("packed", layout), ("padded", "padded"))
    }
    tokens_per_epoch = sum(len(ids) for ids, _ in encoded)
    real = sft.layout_for
    times: dict[str, list[float]] = {"packed": [], "padded": []}
    summaries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in ("packed", "padded"):
                sft.layout_for = real if name == "packed" else (lambda _model: "padded")
                start = time.perf_counter()
                summaries[name] = sft.train_sft(
                    demos,
                    model=model(),
                    tokenizer=tokenizer,
                    output_dir=Path(tmp) / f"{name}{r}" / "model",
                    work_dir=Path(tmp) / f"{name}{r}" / "work",
                    training=training,
                    seed=0,
                    dtype="float32",
                    progress=False,
                )
                times[name].append(time.perf_counter() - start)
    sft.layout_for = real
    tokens = tokens_per_epoch * args.epochs
    print(
        f"SFT of tiny_spa.yaml, {args.epochs} epoch(s) of {len(encoded)} demonstrations, batch {training.batch_size}, "
        f"fp32, {torch.get_num_threads()} threads, {summaries['packed']['steps']} steps"
    )
    print(
        f"  positions per epoch: packed ({layout}) {positions['packed']}, padded {positions['padded']}, "
        f"real tokens {tokens_per_epoch} ({100 * tokens_per_epoch / positions['padded']:.0f}% of padded)"
    )
    for name in ("packed", "padded"):
        runs = ", ".join(f"{t:.1f}s" for t in times[name])
        best = min(times[name])
        print(
            f"  {name:6s} best {best:.1f}s  {tokens / best:8.0f} tokens/s  final loss "
            f"{summaries[name]['final_loss']:.4f}   (runs: {runs})"
        )
    print(f"  packed / padded (tokens/s): {min(times['padded']) / min(times['packed']):.2f}")
    command = "benchmarks/sft_packed_vs_padded.py"
    print(f"reproduce: .venv/bin/python {command} --epochs {args.epochs} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
