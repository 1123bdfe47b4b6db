"""Our train_preference vs TRL's DPOTrainer: same tiny Llama, data, batch, lengths, fp32, one epoch.

Both precompute the reference log-probs (TRL: ``precompute_ref_log_probs=True``; ours does it by default
when DND is off) and pad to the longest sequence of each batch. Runs alternate (ours, TRL, ours, ...) so
that machine noise hits both; the figure is response+prompt tokens (chosen and rejected, no padding) of one
epoch divided by the wall time of the whole call (tokenization, reference pass, training, saving for ours;
trainer construction and ``train()`` for TRL).

    .venv/bin/python benchmarks/dpo_vs_trl.py            # defaults below
    .venv/bin/python benchmarks/dpo_vs_trl.py --pairs 512 --hidden 256 --repeats 3

It also reports the share of the machine's fp32 matrix-multiply peak that each achieves. The peak is
measured here: the best of a few ``torch.matmul`` of two ``n x n`` fp32 matrices (2 n^3 FLOPs each).
Model FLOPs per epoch = 6 N per trained token (policy forward + backward) + 2 N per reference token
(the one reference forward), with N = every parameter except the input embedding (the untied LM head
is a matmul and counts; the embedding lookup is not). Attention score FLOPs and padding are not counted,
so the figure is a lower bound on the arithmetic actually done.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers_tiny import make_tiny_model  # noqa: E402

from spa_recipes.loss import DPOLoss  # noqa: E402
from spa_recipes.loss_config import DPOLossConfig  # noqa: E402
from spa_recipes.modeling import load_tokenizer  # noqa: E402
from spa_recipes.noise import NoNoiseDetector  # noqa: E402
from spa_recipes.noise_config import NoneDetectorConfig  # noqa: E402
from spa_recipes.refiners import NoRefiner  # noqa: E402
from spa_recipes.schema import TrainingSection  # noqa: E402
from spa_recipes.sequences import encode_prompt, encode_response, render_prompt  # noqa: E402
from spa_recipes.training.preference import train_preference  # noqa: E402


def make_pairs(n: int, vocab_words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(f"w{rng.randrange(vocab_words)}" for _ in range(rng.randrange(lo, hi)))

    return [
        {
            "id": str(i),
            "prompt": [{"role": "user", "content": text(10, 40)}],
            "chosen": text(20, 80),
            "rejected": text(20, 80),
        }
        for i in range(n)
    ]


def run_ours(model: str, pairs: list[dict], args: argparse.Namespace, tmp: Path) -> float:
    training = TrainingSection(
        epochs=1.0,
        learning_rate=1e-4,
        lr_scheduler="cosine",
        warmup_ratio=0.1,
        batch_size=args.batch_size,
        max_length=256,
        max_prompt_length=128,
        max_grad_norm=1.0,
        group_by_length=args.group_by_length,
    )
    start = time.perf_counter()
    train_preference(
        pairs,
        policy_path=model,
        reference_path=model,
        output_dir=tmp / "out",
        work_dir=tmp / "work",
        training=training,
        loss=DPOLoss(DPOLossConfig(beta=0.1)),
        noise_detector=NoNoiseDetector(NoneDetectorConfig()),
        refiner=NoRefiner(),
        lam=0.0,
        seed=0,
        dtype="float32",
        progress=False,
    )
    return time.perf_counter() - start


def run_trl(model_path: str, pairs: list[dict], args: argparse.Namespace, tmp: Path) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    tokenizer = load_tokenizer(model_path)
    rows = [
        {"prompt": render_prompt(tokenizer, p["prompt"]), "chosen": p["chosen"], "rejected": p["rejected"]}
        for p in pairs
    ]
    if args.group_by_length:  # transformers' LengthGroupedSampler reads the "length" column: the padded width
        for row, pair in zip(rows, pairs, strict=True):
            prompt = len(encode_prompt(tokenizer, pair["prompt"]))
            row["length"] = prompt + max(len(encode_response(tokenizer, pair[k])) for k in ("chosen", "rejected"))
    config = DPOConfig(
        output_dir=str(tmp / "trl"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        beta=0.1,
        max_length=256,
        max_grad_norm=1.0,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        precompute_ref_log_probs=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        seed=0,
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        remove_unused_columns=not args.group_by_length,  # keep the "length" column for the sampler
    )
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    trainer = DPOTrainer(
        model=model, ref_model=ref, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    return time.perf_counter() - start


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 ``n x n @ n x n`` throughput in FLOP/s over ``repeats`` timed runs (one warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def count_params(model_path: str) -> tuple[int, int]:
    """``(all parameters, parameters without the input embedding)`` of the saved model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.get_input_embeddings().weight.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument(
        "--group-by-length", action="store_true", help="length-grouped batches on both sides (ours and TRL's sampler)"
    )
    args = parser.parse_args()
    peak = matmul_peak(args.matmul_size)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = str(make_tiny_model(tmp / "model", vocab=args.vocab, hidden=args.hidden, layers=args.layers))
        pairs = make_pairs(args.pairs, args.vocab - 16)
        total_params, n_params = count_params(model)
        tokenizer = load_tokenizer(model)
        tokens = 0
        for p in pairs:
            prompt = len(encode_prompt(tokenizer, p["prompt"]))
            for response in (p["chosen"], p["rejected"]):
                tokens += prompt + len(encode_response(tokenizer, response))
        times: dict[str, list[float]] = {"ours": [], "trl": []}
        for r in range(args.repeats):
            times["ours"].append(run_ours(model, pairs, args, tmp / f"ours{r}"))
            times["trl"].append(run_trl(model, pairs, args, tmp / f"trl{r}"))
    peak_after = matmul_peak(args.matmul_size)
    best = {k: min(v) for k, v in times.items()}
    print(
        f"{args.pairs} pairs, {tokens} tokens/epoch, Llama hidden {args.hidden} x {args.layers} layers, "
        f"vocab {args.vocab}, batch {args.batch_size}, fp32, {torch.get_num_threads()} threads, "
        f"{'length-grouped' if args.group_by_length else 'random'} batches"
    )
    flops = 8 * n_params * tokens  # 6N trained + 2N reference per token
    print(
        f"  params {total_params / 1e6:.2f}M (N = {n_params / 1e6:.2f}M without the input embedding); "
        f"model FLOPs/epoch 8*N*tokens = {flops / 1e12:.2f} TFLOP"
    )
    print(
        f"  fp32 matmul peak ({args.matmul_size}^3, best of 5): {peak / 1e9:.1f} GFLOP/s before, "
        f"{peak_after / 1e9:.1f} after; using the larger"
    )
    peak = max(peak, peak_after)
    for name in ("ours", "trl"):
        runs = ", ".join(f"{t:.1f}s" for t in times[name])
        achieved = flops / best[name]
        print(
            f"  {name:5s} best {best[name]:.1f}s  {tokens / best[name]:8.0f} tokens/s  "
            f"{achieved / 1e9:6.1f} GFLOP/s = {100 * achieved / peak:4.1f}% of peak   (runs: {runs})"
        )
    print(f"  ratio ours/trl (tokens/s): {best['trl'] / best['ours']:.2f}")
    print(
        f"reproduce: .venv/bin/python benchmarks/dpo_vs_trl.py --pairs {args.pairs} --batch-size {args.batch_size} "
        f"--hidden {args.hidden} --layers {args.layers} --vocab {args.vocab} --repeats {args.repeats} "
        f"--matmul-size {args.matmul_size}{' --group-by-length' if args.group_by_length else ''}"
    )


if __name__ == "__main__":
    main()
