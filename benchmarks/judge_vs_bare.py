"""The implicit judge against a bare loop of the two models' forward passes, same packed batches.

``ImplicitRewardJudge.score`` on generated-style rows (K responses per prompt, reference = SFT model) is
timed end to end: tokenization, loading both models (one at a time), packing, the forward passes,
log-softmax and gather, and building the output rows. The bare loop gets everything but the forward passes
for free: both models already loaded, the sequences already tokenized and packed into the very batches the
judge builds (``length_sorted_batches`` with a prompt's responses kept together, then ``packing.pack``: no
padding, each prompt once), and it runs only ``policy(...)`` and ``reference(...)`` under ``no_grad``,
called as the judge calls them (``use_cache=False``, position ids and the shared-prompt mask, logits only
where a response token is predicted). Runs alternate (judge, bare, judge, ...); the best of each counts.
The figure is scored tokens (prompt + response of every sequence, no padding) per second.

For information, outside the ratio, the bare loop is also timed on right-padded length-sorted batches with
an attention mask and logits from each batch's first response position: how the judge ran before packing.

    .venv/bin/python benchmarks/judge_vs_bare.py
    .venv/bin/python benchmarks/judge_vs_bare.py --prompts 512 --batch-size 64 --hidden 128 --layers 4 --repeats 3
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers_tiny import make_tiny_model  # noqa: E402

from spa_recipes.api import JudgeContext  # noqa: E402
from spa_recipes.judges.config import ImplicitJudgeConfig  # noqa: E402
from spa_recipes.judges.implicit import ImplicitRewardJudge  # noqa: E402
from spa_recipes.modeling import load_model, load_tokenizer  # noqa: E402
from spa_recipes.packing import layout_for, pack, prompt_key  # noqa: E402
from spa_recipes.sequences import collate, encode_responses, length_sorted_batches  # noqa: E402


def make_rows(n: int, k: int, vocab_words: int, seed: int = 0) -> list[dict]:
    """Generated-style rows: ``{"id", "prompt", "responses": [k], "finished", "num_tokens"}``."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(f"w{rng.randrange(vocab_words)}" for _ in range(rng.randrange(lo, hi)))

    rows = []
    for i in range(n):
        responses = [text(5, 32) for _ in range(k)]
        rows.append(
            {
                "id": str(i),
                "prompt": [{"role": "user", "content": text(4, 14)}],
                "responses": responses,
                "finished": [True] * k,
                "num_tokens": [len(r.split()) for r in responses],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    max_prompt_length, max_length = 16, 64  # as recipes/tiny_spa.yaml
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        kwargs = {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers}
        policy_path = str(make_tiny_model(tmp / "policy", seed=1, **kwargs))
        sft_path = str(make_tiny_model(tmp / "sft", seed=2, **kwargs))
        rows = make_rows(args.prompts, args.samples, args.vocab - 16)
        judge = ImplicitRewardJudge(
            ImplicitJudgeConfig(batch_size=args.batch_size),
            JudgeContext(
                policy_path=policy_path,
                sft_path=sft_path,
                dtype="float32",
                max_prompt_length=max_prompt_length,
                max_length=max_length,
                device="cpu",
            ),
        )

        # The bare loop's inputs: exactly the judge's sequences and batches, prepared outside the timing (built row
        # by row here; the judge's batched encode_sequences gives the same ids, tests/test_sequences.py checks it).
        tokenizer = load_tokenizer(policy_path)
        encoded = [
            sequence
            for r in rows
            for sequence in encode_responses(tokenizer, r["prompt"], r["responses"], max_prompt_length, max_length)
        ]
        tokens = sum(len(ids) for ids, _ in encoded)
        models = [load_model(p, dtype="float32", device="cpu") for p in (policy_path, sft_path)]
        layout = layout_for(models[0])
        prompts = [prompt_key(sequence) for sequence in encoded]
        lengths = [len(ids) for ids, _ in encoded]
        packed = [
            pack([encoded[i] for i in indices], tokenizer.pad_token_id, layout=layout)
            for indices in length_sorted_batches(lengths, args.batch_size, prompts if layout == "shared" else None)
        ]
        padded = [
            collate([encoded[i] for i in indices], tokenizer.pad_token_id)
            for indices in length_sorted_batches(lengths, args.batch_size)
        ]
        computed = {"packed": sum(b.positions for b in packed), "padded": sum(b["input_ids"].numel() for b in padded)}

        @torch.no_grad()
        def bare() -> float:
            start = time.perf_counter()
            for model in models:  # the judge also runs all batches through the policy, then the reference
                for b in packed:  # the judge's call (spa_recipes.packing.forward_packed)
                    extra = {"position_ids": b.position_ids} if b.packed else {}
                    if b.attention_mask is not None:
                        extra["attention_mask"] = b.attention_mask
                    keep = torch.unique(b.target_source)
                    model(input_ids=b.input_ids, use_cache=False, logits_to_keep=keep, **extra)
            return time.perf_counter() - start

        @torch.no_grad()
        def bare_padded() -> float:
            start = time.perf_counter()
            for model in models:
                for b in padded:
                    has_response = b["labels"] != -100
                    first = int(has_response.float().argmax(1)[has_response.any(1)].min())
                    model(
                        input_ids=b["input_ids"],
                        attention_mask=b["attention_mask"],
                        use_cache=False,
                        logits_to_keep=b["labels"].shape[1] - max(first - 1, 0),
                    )
            return time.perf_counter() - start

        def judged() -> float:
            start = time.perf_counter()
            judge.score(rows)
            return time.perf_counter() - start

        bare()  # warm-up (thread pools, allocator)
        times: dict[str, list[float]] = {"judge": [], "bare": [], "bare, right-padded batches": []}
        for _ in range(args.repeats):
            times["judge"].append(judged())
            times["bare"].append(bare())
            times["bare, right-padded batches"].append(bare_padded())
    best = {k: min(v) for k, v in times.items()}
    print(
        f"{args.prompts} prompts x {args.samples} responses = {len(encoded)} sequences, {tokens} tokens, "
        f"Llama hidden {args.hidden} x {args.layers} layers, vocab {args.vocab}, batch {args.batch_size}, fp32, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"  positions computed per model: packed batches ({layout}) {computed['packed']}, "
        f"right-padded batches {computed['padded']}"
    )
    for name in times:
        runs = ", ".join(f"{t:.2f}s" for t in times[name])
        print(f"  {name:5s} best {best[name]:.2f}s  {tokens / best[name]:8.0f} tokens/s   (runs: {runs})")
    print(f"  judge / bare (tokens/s, same packed batches): {best['bare'] / best['judge']:.2f}")
    print(
        f"reproduce: .venv/bin/python benchmarks/judge_vs_bare.py --prompts {args.prompts} --samples {args.samples} "
        f"--batch-size {args.batch_size} --hidden {args.hidden} --layers {args.layers} --vocab {args.vocab} "
        f"--repeats {args.repeats}"
    )


if __name__ == "__main__":
    main()
