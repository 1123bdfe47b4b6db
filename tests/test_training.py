"""The DPO/SPA and SFT trainers on a tiny Llama: learning, noise enrichment, exact resume, NaN policy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from helpers_tiny import make_tiny_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from spa_recipes.atomic import is_complete
from spa_recipes.errors import DataError, TrainingError
from spa_recipes.loss import DPOLoss
from spa_recipes.loss_config import DPOLossConfig
from spa_recipes.modeling import load_model, load_tokenizer
from spa_recipes.noise import BatchQuantileDetector, NoNoiseDetector, RollingQuantileDetector
from spa_recipes.noise_config import BatchQuantileConfig, NoneDetectorConfig, RollingQuantileConfig
from spa_recipes.refiners import LabelSmoothingRefiner, NoRefiner
from spa_recipes.refiners_config import LabelSmoothingConfig
from spa_recipes.schema import TrainingSection
from spa_recipes.sequences import collate
from spa_recipes.training.checkpoints import list_checkpoints
from spa_recipes.training.data_order import epoch_batches
from spa_recipes.training.loop import read_metrics
from spa_recipes.training.preference import train_preference
from spa_recipes.training.sft import train_sft

GOOD, BAD = "w1", "w2"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", vocab=64, hidden=32))


def planted_pairs(n: int, flip_fraction: float, seed: int = 0) -> tuple[list[dict], set[str]]:
    """Chosen responses start with GOOD, rejected with BAD (same continuation); a planted share is flipped."""
    rng = random.Random(seed)
    rows, flipped = [], set()
    for i in range(n):
        prompt = [{"role": "user", "content": f"w{rng.randrange(10, 50)} w{rng.randrange(10, 50)}"}]
        tail = " ".join(f"w{rng.randrange(10, 50)}" for _ in range(rng.randrange(1, 4)))
        chosen, rejected = f"{GOOD} {tail}", f"{BAD} {tail}"
        if i < flip_fraction * n:
            chosen, rejected = rejected, chosen
            flipped.add(str(i))
        rows.append({"id": str(i), "prompt": prompt, "chosen": chosen, "rejected": rejected})
    rng.shuffle(rows)
    return rows, flipped


def section(**overrides: object) -> TrainingSection:
    base = dict(
        epochs=1.0,
        learning_rate=5e-3,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        batch_size=8,
        max_length=32,
        max_prompt_length=16,
        max_grad_norm=1.0,
    )
    return TrainingSection(**{**base, **overrides})


def run_dpo(tiny: str, tmp: Path, pairs: list[dict], training: TrainingSection, **kw: object) -> dict:
    args = dict(
        policy_path=tiny,
        reference_path=tiny,
        output_dir=tmp / "out",
        work_dir=tmp / "work",
        training=training,
        loss=DPOLoss(DPOLossConfig(beta=0.1)),
        noise_detector=NoNoiseDetector(NoneDetectorConfig()),
        refiner=NoRefiner(),
        lam=0.0,
        seed=0,
        progress=False,
    )
    return train_preference(pairs, **{**args, **kw})


def params(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_model(str(path)).named_parameters())


def test_dpo_raises_the_margin(tiny: str, tmp_path: Path) -> None:
    pairs, _ = planted_pairs(32, 0.0)
    summary = run_dpo(tiny, tmp_path, pairs, section(epochs=2.0))
    rows = read_metrics(tmp_path / "work")
    assert summary["steps"] == len(rows) == 8
    assert rows[0]["margins"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the first step
    assert rows[-1]["margins"] > 0.1 and rows[-1]["reward_accuracy"] == 1.0
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert is_complete(tmp_path / "out") and (tmp_path / "out" / "generation_config.json").exists()
    assert load_tokenizer(str(tmp_path / "out")).chat_template
    for key in (
        "epoch",
        "rewards_chosen",
        "rewards_rejected",
        "flagged_fraction",
        "threshold",
        "lr",
        "tokens_per_s",
        "skipped_steps",
    ):
        assert key in rows[-1]


def test_refinement_flags_planted_noise(tiny: str, tmp_path: Path) -> None:
    pairs, flipped = planted_pairs(64, 0.2)
    summary = run_dpo(
        tiny,
        tmp_path,
        pairs,
        section(epochs=2.0),
        noise_detector=BatchQuantileDetector(BatchQuantileConfig(k=0.25, confidence="policy")),
        refiner=LabelSmoothingRefiner(LabelSmoothingConfig(alpha=0.1, warmup_fraction=0.2)),
    )
    rows = read_metrics(tmp_path / "work")
    assert all(r["flagged_fraction"] == 0.25 for r in rows)  # floor(0.25 * 8) of every batch
    later = [i for r in rows[len(rows) // 4 :] for i in r["flagged_ids"]]
    precision = sum(i in flipped for i in later) / len(later)
    enrichment = precision / (len(flipped) / len(pairs))
    print(
        f"P(planted|flagged) = {precision:.2f}, P(planted) = {len(flipped) / len(pairs):.2f}, "
        f"enrichment = {enrichment:.2f}"
    )
    assert enrichment > 1.5
    assert summary["mean_flagged_fraction"] == pytest.approx(0.25)
    assert any(r["mean_smoothing"] > 0 for r in rows) and rows[0]["mean_smoothing"] == 0.0


def test_batch_quantile_flags_k_of_the_optimiser_batch(tiny: str, tmp_path: Path) -> None:
    """Micro-batches of 2 pairs x 8 accumulation steps: the bottom 25% of each step's 16 pairs are flagged (one
    micro-batch alone would give floor(0.25 * 2) = 0), the same pairs and weights as one micro-batch of 16."""
    pairs, flipped = planted_pairs(64, 0.2)

    def run(name: str, batch_size: int, accumulation: int) -> list[dict]:
        run_dpo(
            tiny,
            tmp_path / name,
            pairs,
            section(epochs=2.0, batch_size=batch_size, gradient_accumulation_steps=accumulation),
            noise_detector=BatchQuantileDetector(BatchQuantileConfig(k=0.25, confidence="extrapolated")),
            refiner=LabelSmoothingRefiner(LabelSmoothingConfig(alpha=0.1, warmup_fraction=0.2)),
            lam=0.5,
        )
        return read_metrics(tmp_path / name / "work")

    accumulated, whole = run("2x8", 2, 8), run("16x1", 16, 1)
    assert len(accumulated) == len(whole) == 8
    assert all(len(r["flagged_ids"]) == 4 for r in accumulated)  # floor(0.25 * 16) of every optimiser step
    assert [r["flagged_fraction"] for r in accumulated] == pytest.approx([0.25] * 8)
    # At the first step every margin is ~0 (policy == reference) and float noise breaks the ties.
    assert [sorted(r["flagged_ids"]) for r in accumulated[1:]] == [sorted(r["flagged_ids"]) for r in whole[1:]]
    later = [i for r in accumulated[2:] for i in r["flagged_ids"]]
    assert sum(i in flipped for i in later) / len(later) > 1.5 * len(flipped) / len(pairs)
    assert [r["loss"] for r in accumulated] == pytest.approx([r["loss"] for r in whole], abs=1e-5)
    a, b = params(tmp_path / "2x8" / "out"), params(tmp_path / "16x1" / "out")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)  # weights moved by up to 4e-2


@pytest.fixture(scope="module")
def tiny_bf16(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model saved in bfloat16, as a hub model of a GPU recipe is."""
    path = make_tiny_model(tmp_path_factory.mktemp("tiny_bf16") / "model", vocab=64, hidden=32)
    AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(path)
    return str(path)


def test_bf16_recipe_trains_float32_master_weights(tiny_bf16: str, tmp_path: Path) -> None:
    """At a learning rate whose single AdamW updates are below bf16's resolution, a bfloat16 run's policy moves
    like the float32 run's (both compared after rounding to bf16), and is saved in bfloat16."""
    pairs, _ = planted_pairs(32, 0.0)
    lr = 1e-5
    start = load_model(tiny_bf16, "bfloat16").state_dict()

    # The regime: one plain bf16 AdamW step at this rate leaves almost every weight as it was.
    plain = load_model(tiny_bf16, "bfloat16").train()
    plain(**{k: v for k, v in collate([([3, 4, 5, 6], [3, 4, 5, 6])], 0).items()}).loss.backward()
    torch.optim.AdamW(plain.parameters(), lr=lr).step()
    lost = sum(int((p == start[n]).sum()) for n, p in plain.named_parameters()) / sum(v.numel() for v in start.values())
    assert lost > 0.8

    moved, margins = {}, {}
    for dtype in ("float32", "bfloat16"):
        summary = run_dpo(tiny_bf16, tmp_path / dtype, pairs, section(epochs=2.0, learning_rate=lr), dtype=dtype)
        with safe_open(tmp_path / dtype / "out" / "model.safetensors", "pt") as f:
            saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        assert {v.dtype for v in saved.values()} == {getattr(torch, dtype)}
        rounded = {k: v.to(torch.bfloat16) for k, v in saved.items()}
        moved[dtype] = sum(int((rounded[k] != start[k]).sum()) for k in start) / sum(v.numel() for v in start.values())
        margins[dtype] = summary["final_margins"]
    print(f"weights moved (after rounding to bf16): {moved}; final margins: {margins}")
    assert moved["float32"] > 0.5
    assert moved["bfloat16"] == pytest.approx(moved["float32"], abs=0.05)
    assert margins["bfloat16"] == pytest.approx(margins["float32"], rel=0.1)
    assert json.loads((tmp_path / "bfloat16" / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def test_gradient_checkpointing_gives_the_same_training(tiny: str, tmp_path: Path) -> None:
    pairs, _ = planted_pairs(16, 0.0)
    run_dpo(tiny, tmp_path / "plain", pairs, section(epochs=2.0))
    run_dpo(tiny, tmp_path / "ckpt", pairs, section(epochs=2.0, gradient_checkpointing=True))
    a, b = params(tmp_path / "plain" / "out"), params(tmp_path / "ckpt" / "out")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not any(torch.equal(a[k], params(Path(tiny))[k]) for k in a)  # it trained
    assert json.loads((tmp_path / "ckpt" / "out" / "config.json").read_text()).get("use_cache") is not False


def test_extrapolated_confidence_runs_the_reference_per_step(tiny: str, tmp_path: Path) -> None:
    pairs, _ = planted_pairs(16, 0.25)
    summary = run_dpo(
        tiny,
        tmp_path,
        pairs,
        section(epochs=2.0),
        noise_detector=RollingQuantileDetector(RollingQuantileConfig(window=8, confidence="extrapolated")),
        refiner=LabelSmoothingRefiner(LabelSmoothingConfig()),
        lam=0.5,
    )
    assert summary["extrapolated"] and not (tmp_path / "work" / "ref_logps.json").exists()
    rows = read_metrics(tmp_path / "work")
    # DND amplifies the policy's move away from the reference: |confidence margin| > |margin| once it moved.
    assert abs(rows[-1]["confidence_margins"]) > abs(rows[-1]["margins"]) > 0


@pytest.mark.parametrize(
    ("detector", "grouped", "checkpointing"),
    [("rolling", False, False), ("batch", False, False), ("rolling", True, False), ("batch", False, True)],
)
def test_resume_gives_identical_weights(
    tiny: str, tmp_path: Path, detector: str, grouped: bool, checkpointing: bool
) -> None:
    pairs, _ = planted_pairs(40, 0.2)
    training = section(
        gradient_checkpointing=checkpointing,
        group_by_length=grouped,
        epochs=1.5,
        batch_size=4,
        gradient_accumulation_steps=2,
        lr_scheduler="cosine",
        warmup_ratio=0.2,
        checkpoint_every=2,
        keep_checkpoints=2,
    )

    def kwargs() -> dict:
        if detector == "rolling":
            det = RollingQuantileDetector(RollingQuantileConfig(k=0.3, window=12, confidence="policy"))
        else:
            det = BatchQuantileDetector(BatchQuantileConfig(k=0.25, confidence="policy"))
        return dict(noise_detector=det, refiner=LabelSmoothingRefiner(LabelSmoothingConfig(alpha=0.2)))

    full = run_dpo(tiny, tmp_path / "full", pairs, training, **kwargs())
    stopped = run_dpo(tiny, tmp_path / "cut", pairs, training, stop_after=3, **kwargs())
    assert stopped["stopped_early"] and not (tmp_path / "cut" / "out").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "work")] == [2, 3]  # keep_checkpoints=2
    resumed = run_dpo(tiny, tmp_path / "cut", pairs, training, **kwargs())
    assert resumed["resumed_from"] == 3 and resumed["steps"] == full["steps"] == 8
    a, b = params(tmp_path / "full" / "out"), params(tmp_path / "cut" / "out")
    assert all(torch.equal(a[k], b[k]) for k in a)
    full_rows, cut_rows = read_metrics(tmp_path / "full" / "work"), read_metrics(tmp_path / "cut" / "work")
    # Every logged number (thresholds and flags included) matches; only the timing differs.
    untimed = [[{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows] for rows in (full_rows, cut_rows)]
    assert untimed[0] == untimed[1]


class NaNAtCall(DPOLoss):
    """The DPO loss, made NaN from its ``at``-th call on."""

    def __init__(self, at: int) -> None:
        super().__init__(DPOLossConfig(beta=0.1))
        self.calls, self.at = 0, at

    def __call__(self, *args: object, **kwargs: object):
        losses, margins = super().__call__(*args, **kwargs)
        self.calls += 1
        if self.calls == self.at:
            losses = losses * float("nan")
        return losses, margins


def test_nonfinite_fail_stops_with_a_clear_error(tiny: str, tmp_path: Path) -> None:
    pairs, _ = planted_pairs(32, 0.0)
    training = section(checkpoint_every=2, nonfinite="fail")
    with pytest.raises(TrainingError, match=r"non-finite loss or gradient at optimiser step 3 of 4.*step-2"):
        run_dpo(tiny, tmp_path, pairs, training, loss=NaNAtCall(3))
    assert [s for s, _ in list_checkpoints(tmp_path / "work")] == [2]
    assert not (tmp_path / "out").exists()
    state = torch.load(tmp_path / "work" / "checkpoints" / "step-2" / "model.pt")
    assert all(torch.isfinite(t).all() for t in state.values())


def test_nonfinite_skip_step_finishes(tiny: str, tmp_path: Path) -> None:
    pairs, _ = planted_pairs(32, 0.0)
    summary = run_dpo(tiny, tmp_path, pairs, section(nonfinite="skip_step"), loss=NaNAtCall(2))
    assert summary["skipped_steps"] == 1 and summary["steps"] == 4
    rows = read_metrics(tmp_path / "work")
    assert [r["nonfinite"] for r in rows] == [False, True, False, False]
    assert all(torch.isfinite(p).all() for p in params(tmp_path / "out").values())


def test_sft_reduces_response_loss(tiny: str, tmp_path: Path) -> None:
    rng = random.Random(0)
    examples = []
    for _ in range(32):
        a = rng.randrange(10, 40)
        examples.append({"prompt": [{"role": "user", "content": f"w{a}"}], "response": f"w{a + 1} w{a + 2}"})
    model = load_model(tiny)
    tokenizer = load_tokenizer(tiny)
    summary = train_sft(
        examples,
        model=model,
        tokenizer=tokenizer,
        output_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        training=section(epochs=4.0, learning_rate=1e-2),
        seed=0,
        progress=False,
    )
    rows = read_metrics(tmp_path / "work")
    print(f"sft loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
    assert summary["steps"] == 16
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"]
    assert is_complete(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "llama"


def test_given_reference_logps_replace_the_reference_pass(tiny: str, tmp_path: Path) -> None:
    pairs, _ = planted_pairs(16, 0.0)
    run_dpo(tiny, tmp_path / "a", pairs, section())
    cached = json.loads((tmp_path / "a" / "work" / "ref_logps.json").read_text())["logps"]
    given = {i: (c, r) for i, (c, r) in cached.items()}
    run_dpo(tiny, tmp_path / "b", pairs, section(), ref_logps=given, reference_path=str(tmp_path / "missing"))
    assert not (tmp_path / "b" / "work" / "ref_logps.json").exists()
    a, b = params(tmp_path / "a" / "out"), params(tmp_path / "b" / "out")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DataError, match="no reference log-probs for pair"):
        run_dpo(tiny, tmp_path / "c", pairs, section(), ref_logps={})


@pytest.mark.parametrize("num_processes", [1, 2])
def test_length_grouping_cuts_padding_and_keeps_every_example(num_processes: int) -> None:
    lengths = [random.Random(i).randrange(10, 200) for i in range(1000)]
    common = dict(seed=3, epoch=1, batch_size=8, num_processes=num_processes)

    def deal(grouped: bool) -> list[list[list[int]]]:
        given = lengths if grouped else None
        return [epoch_batches(1000, **common, process_index=p, lengths=given) for p in range(num_processes)]

    def padded(batches: list[list[list[int]]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) for proc in batches for b in proc)

    plain, grouped = deal(False), deal(True)
    # The same examples, each as often as before; every process has as many micro-batches as before.
    assert sorted(i for p in grouped for b in p for i in b) == sorted(i for p in plain for b in p for i in b)
    assert [len(p) for p in grouped] == [len(p) for p in plain]
    useful = sum(lengths)
    assert useful / padded(grouped) > 0.97 > 0.7 > useful / padded(plain)
    # Process p's k-th micro-batch is in the same global batch as the others' k-th: similar lengths across them.
    for k in range(len(grouped[0])):
        widths = [max(lengths[i] for i in proc[k]) for proc in grouped]
        assert max(widths) - min(widths) <= 10
    assert grouped == deal(True)  # a pure function of its arguments
    assert epoch_batches(1000, **{**common, "epoch": 2}, process_index=0, lengths=lengths) != grouped[0]
