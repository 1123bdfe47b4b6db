"""``spa-recipe plan``: per stage of a recipe's graph, what one device holds and whether it fits, the stage's time
from its FLOPs, the run's GPU-hours, and for a stage that does not fit the change that would make it fit.

The terms are counted in :mod:`spa_recipes.planning.memory`; the model's sizes come from its ``config.json``
(:mod:`spa_recipes.planning.shapes`). Time: 6N FLOPs per trained token (8N with gradient checkpointing: the
forward again), 2N per scored or generated token, at ``utilisation`` of the device's peak; lengths are the
recipe's limits (``max_length``, ``max_prompt_length + max_new_tokens``), so both memory and time are upper bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from spa_recipes.planning import memory as m
from spa_recipes.planning.shapes import ModelShape, base_shape, read_shape
from spa_recipes.schema import Recipe, TrainingSection

TRAINING_KINDS = {"sft": "sft", "seed_dpo": "seed", "train": "iteration"}
GENERATING_KINDS = {"generate", "eval", "eval_baseline"}
# PairRM's backbone, microsoft/deberta-v3-large: 435M parameters (its model card). Loaded as a judge or evaluator.
PAIRRM_PARAMETERS = 435_000_000
# Peak dense bf16 tensor FLOP/s of an H100/H200 SXM (NVIDIA's datasheet: 989 TFLOP/s without sparsity).
GPU_PEAK_TFLOPS = 989.0
# fp32 matmul peak of this 2-core CPU, measured by benchmarks/dpo_vs_trl.py (docs/benchmarks.md: 225-227 GFLOP/s).
CPU_PEAK_TFLOPS = 0.225
# HBM bandwidth of an H100 SXM (NVIDIA's datasheet: 3.35 TB/s; H200: 4.8). Decoding reads every weight once a
# step whatever the batch, so a generation stage takes at least steps x weight bytes / bandwidth.
GPU_BANDWIDTH_TBS = 3.35
DEFAULT_UTILISATION = 0.4  # a good DPO/FSDP run reaches 35-50% of the bf16 peak; generation far less (decode)
SCALES = (1, 2, 4, 8, 16, 32, 64)  # process counts tried when a stage needs more GPUs


@dataclass(frozen=True)
class Hardware:
    """Where the run would go: ``gpus`` per node x ``nodes``, ``memory`` bytes each; or this CPU (``cpu``)."""

    gpus: int = 1
    nodes: int = 1
    memory: float = 80e9
    parallelism: str = "single"  # single | ddp | fsdp2
    cpu: bool = False
    peak_tflops: float = GPU_PEAK_TFLOPS
    utilisation: float = DEFAULT_UTILISATION

    @property
    def processes(self) -> int:
        return self.gpus * self.nodes

    @property
    def shards(self) -> int:
        return self.processes if self.parallelism == "fsdp2" else 1

    def describe(self) -> str:
        if self.cpu:
            return f"CPU, {self.memory / m.GB:.1f} GB, float32"
        nodes = f"{self.nodes} nodes x " if self.nodes > 1 else ""
        return f"{nodes}{self.gpus} x {self.memory / m.GB:.0f} GB GPU, {self.parallelism}"


@dataclass
class StagePlan:
    """One stage: what a device holds (terms), whether it fits, its FLOPs and estimated seconds."""

    name: str
    kind: str
    terms: list[m.Term] = field(default_factory=list)
    flops: float | None = 0.0
    seconds: float | None = 0.0
    fits: bool = True
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> float:
        return sum(t.bytes for t in self.terms)

    @property
    def dominant(self) -> m.Term | None:
        return max(self.terms, key=lambda t: t.bytes, default=None)

    def to_json(self) -> dict[str, Any]:
        dominant = self.dominant
        return {
            "stage": self.name,
            "kind": self.kind,
            "gb": round(self.bytes / m.GB, 3),
            "fits": self.fits,
            "dominant": dominant.name if dominant else None,
            "terms": [{"name": t.name, "gb": round(t.gb, 4), "how": t.how} for t in self.terms],
            "flops": self.flops,
            "seconds": None if self.seconds is None else round(self.seconds, 1),
            "advice": self.advice,
            "notes": self.notes,
        }


@dataclass
class RunPlan:
    """The whole recipe on ``hardware``."""

    recipe: str
    hardware: Hardware
    model: ModelShape
    stages: list[StagePlan]
    launch: str
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages)

    @property
    def seconds(self) -> float | None:
        times = [s.seconds for s in self.stages]
        return None if any(t is None for t in times) else sum(t for t in times if t is not None)

    @property
    def gpu_hours(self) -> float | None:
        seconds = self.seconds
        return None if seconds is None or self.hardware.cpu else seconds * self.hardware.processes / 3600

    def to_json(self) -> dict[str, Any]:
        hw = self.hardware
        return {
            "recipe": self.recipe,
            "hardware": {
                "gpus": hw.gpus,
                "nodes": hw.nodes,
                "memory_gb": hw.memory / m.GB,
                "parallelism": hw.parallelism,
                "cpu": hw.cpu,
                "peak_tflops": hw.peak_tflops,
                "utilisation": hw.utilisation,
            },
            "model": {**self.model.__dict__, "parameters": self.model.parameters},
            "fits": self.fits,
            "launch": self.launch,
            "seconds": self.seconds,
            "gpu_hours": self.gpu_hours,
            "stages": [s.to_json() for s in self.stages],
            "notes": self.notes,
        }


# The plan of a recipe ------------------------------------------------------------------------------------


def policy_shape(recipe: Recipe) -> ModelShape:
    """pi_init's shape: ``models.sft``'s config.json, or ``models.base`` built on the meta device."""
    if recipe.models.sft is not None:
        return read_shape(recipe.models.sft, "models.sft")
    return base_shape(recipe)


def make_plan(recipe: Recipe, hardware: Hardware, *, recipe_name: str = "", shape: ModelShape | None = None) -> RunPlan:
    """The plan of every stage of ``recipe``'s graph on ``hardware``.

    Args:
        recipe: a validated recipe.
        hardware: the devices.
        recipe_name: shown in the table.
        shape: the policy's shape (default: read from the recipe's model).
    """
    from spa_recipes.runner.graph import build_graph

    shape = shape or policy_shape(recipe)
    planner = _Planner(recipe, hardware, shape)
    stages = [planner.stage(s.name, s.kind.name, s.iteration, first=n == 0) for n, s in enumerate(build_graph(recipe))]
    return RunPlan(
        recipe_name or recipe.run.name, hardware, shape, stages, launch_line(hardware, recipe_name), planner.notes
    )


def launch_line(hw: Hardware, recipe_name: str) -> str:
    recipe_name = recipe_name or "RECIPE"
    if hw.cpu or hw.processes == 1:
        return f"spa-recipe run {recipe_name}"
    config = "fsdp.yaml" if hw.parallelism == "fsdp2" else "ddp.yaml"
    nodes = f" (x {hw.nodes} nodes: configs/accelerate/slurm_multinode.sh)" if hw.nodes > 1 else ""
    return (
        f"accelerate launch --config_file configs/accelerate/{config} --num_processes {hw.gpus} "
        f"-m spa_recipes run {recipe_name}{nodes}"
    )


class _Planner:
    def __init__(self, recipe: Recipe, hardware: Hardware, shape: ModelShape) -> None:
        self.recipe, self.hw, self.shape = recipe, hardware, shape
        dtype = recipe.models.dtype
        self.value_bytes = 4 if hardware.cpu or dtype == "float32" else 2
        self.notes: list[str] = []
        if hardware.cpu and dtype != "float32":
            self.notes.append(f"models.dtype {dtype}: counted as float32, as a CPU run computes")
        self.rows = getattr(recipe.data.args, "num_prompts", None)  # for fractions of the data in the split

    # sizes
    def _count(self, value: float) -> float | None:
        if value >= 1:
            return float(value)
        return None if self.rows is None else value * self.rows

    def _prompts(self, iteration: int) -> float | None:
        per = self.recipe.split.prompts_per_iteration
        return self._count(per[iteration - 1] if isinstance(per, list) else per)

    # stages
    def stage(self, name: str, kind: str, iteration: int, *, first: bool = False) -> StagePlan:
        plan = StagePlan(name, kind, [m.runtime(self.hw.cpu, self.shape.vocab, first)])
        if kind in TRAINING_KINDS:
            self._training(plan, kind, iteration)
        elif kind == "judge":
            self._judge(plan, iteration)
        elif kind in GENERATING_KINDS:
            self._generation(plan, kind, iteration)
        elif kind == "judge_train":
            plan.notes.append("judge_train (a reward model's training) is not modelled: counted as nothing")
        plan.fits = plan.bytes <= self.hw.memory
        if not plan.fits:
            plan.advice = self._advice(plan, kind, iteration)
        return plan

    def _section(self, kind: str) -> TrainingSection:
        section = getattr(self.recipe.training, TRAINING_KINDS[kind])
        assert section is not None, f"a {kind} stage without training.{TRAINING_KINDS[kind]}"
        return section

    def _adapter(self, kind: str) -> Any:
        """The recipe's ``models.adapter`` for a DPO stage (the sft stage trains the whole model)."""
        return self.recipe.models.adapter if kind != "sft" else None

    def _extrapolated(self, kind: str, iteration: int) -> bool:
        if kind != "train":
            return False
        args = self.recipe.noise_detector.args
        if getattr(args, "confidence", None) != "extrapolated":
            return False
        from spa_recipes.noise import lambda_for_iteration

        return lambda_for_iteration(args, iteration) != 0

    def training_terms(
        self, kind: str, iteration: int, *, batch_size: int, checkpointing: bool, hw: Hardware
    ) -> list[m.Term]:
        """What a device holds while a training stage steps (the runtime term apart)."""
        s, a = self.shape, self.value_bytes
        section = self._section(kind)
        rows = batch_size if kind == "sft" else 2 * batch_size
        autocast = not hw.cpu and a == 2 and hw.parallelism != "fsdp2"
        extrapolated = self._extrapolated(kind, iteration)
        adapter = self._adapter(kind)
        if adapter is None:
            terms = [m.trained_state(s.parameters, hw.shards)]
            if autocast:
                terms.append(m.autocast_copies(s.parameters))
        else:  # the frozen base in its dtype serves as the reference too (the adapter disabled): no copy for DND
            widths = {"h": s.hidden, "f": s.intermediate, "q": s.heads * s.head_dim, "kv": s.kv_heads * s.head_dim}
            lora = m.lora_parameters(widths, s.layers, adapter.r, adapter.target_modules)
            base_bytes = m.NF4_BYTES if adapter.load_in_4bit else a
            terms = [m.frozen_base(s.parameters, base_bytes, hw.shards), m.adapter_state(lora, hw.shards)]
        if hw.shards > 1:
            terms.append(m.fsdp_gathered(s.layer_parameters, s.embedding_parameters + s.hidden, a))
        if extrapolated and adapter is None:
            terms.append(m.frozen_weights("DND reference", s.parameters, a))
        terms += m.activations(
            rows, section.max_length, s.hidden, s.intermediate, s.layers, a, checkpointing, 4 if autocast else a
        )
        terms.append(m.trained_logits(rows, section.max_length, s.vocab, a, extrapolated))
        return terms

    def _training(self, plan: StagePlan, kind: str, iteration: int) -> None:
        section = self._section(kind)
        plan.terms += self.training_terms(
            kind, iteration, batch_size=section.batch_size, checkpointing=section.gradient_checkpointing, hw=self.hw
        )
        if kind == "sft":
            examples = self._count(getattr(self.recipe.data.args, "sft_demonstrations", 0) or 0)
            rows_per_example = 1
        elif kind == "seed_dpo":
            examples, rows_per_example = self._count(self.recipe.split.seed_size), 2
        else:
            examples, rows_per_example = self._prompts(iteration), 2  # one pair per prompt at most
        if examples is None:
            plan.flops = plan.seconds = None
            plan.notes.append("time: the split is a fraction of data whose size the plan does not know")
            return
        tokens = examples * rows_per_example * section.max_length
        n = self.shape.flop_parameters
        # 6N a token: forward 2N, backward 2N for the activations' gradients and 2N for the weights' (none for a
        # frozen base under LoRA: 4N); checkpointing recomputes the forward (+2N).
        per_token = (6 if self._adapter(kind) is None else 4) + (2 if section.gradient_checkpointing else 0)
        trained = per_token * n * tokens * section.epochs
        reference = 0.0
        if kind != "sft":  # the reference's forward: once (its log-probs first), or every step under DND
            reference = 2 * n * tokens * (section.epochs if self._extrapolated(kind, iteration) else 1)
        self._time(plan, trained + reference)

    def _generation(self, plan: StagePlan, kind: str, iteration: int) -> None:
        gen = self.recipe.generation.args
        prompt_length = self.recipe.training.iteration.max_prompt_length
        if kind == "generate":
            prompts, samples, new = self._prompts(iteration), gen.samples_per_prompt, gen.max_new_tokens
        else:
            ev = self.recipe.evaluation
            prompts, samples = self._count(self.recipe.split.eval_holdout), ev.samples_per_prompt
            new = ev.max_new_tokens or gen.max_new_tokens
        length = prompt_length + new
        s, a = self.shape, self.value_bytes
        if self.recipe.generation.name == "vllm" and not self.hw.cpu:
            share = gen.gpu_memory_utilization * self.hw.memory
            weights = a * s.parameters / gen.tensor_parallel_size
            one = m.kv_cache(1, length, s.layers, s.kv_heads, s.head_dim, a).bytes / gen.tensor_parallel_size
            plan.terms.append(
                m.Term("vLLM engine", share, f"gpu_memory_utilization {gen.gpu_memory_utilization} x GPU")
            )
            plan.notes.append(
                f"vLLM: weights {weights / m.GB:.1f} GB, KV cache {(share - weights) / m.GB:.1f} GB "
                f"= {max(0, int((share - weights) / one))} sequences of {length} tokens at once"
            )
            if weights + one > share:
                plan.terms.append(m.Term("vLLM shortfall", weights + one - share + self.hw.memory, "weights + KV"))
        else:
            sequences = getattr(gen, "batch_size", 16) * samples
            plan.terms.append(m.frozen_weights("model", s.parameters, a))
            plan.terms.append(m.kv_cache(sequences, length, s.layers, s.kv_heads, s.head_dim, a))
            plan.terms.append(m.sampler_logits(sequences, s.vocab))
        if kind != "generate" and self.recipe.evaluation.evaluator is not None:
            evaluator = self.recipe.evaluation.evaluator.name
            if evaluator == "pairrm":  # loaded after the responses are written: a later peak, not on top
                pairrm = m.frozen_weights("PairRM", PAIRRM_PARAMETERS, a)
                if pairrm.bytes > sum(t.bytes for t in plan.terms[1:]):
                    plan.terms[1:] = [pairrm]
        if prompts is None:
            plan.flops = plan.seconds = None
            return
        self._time(plan, 2 * s.flop_parameters * prompts * samples * length)
        if not self.hw.cpu and plan.seconds is not None:  # decoding is bound by reading the weights each step
            if self.recipe.generation.name == "vllm":
                at_once = max(
                    1,
                    int(
                        (gen.gpu_memory_utilization * self.hw.memory - a * s.parameters)
                        / (m.kv_cache(1, length, s.layers, s.kv_heads, s.head_dim, a).bytes)
                    ),
                )
            else:
                at_once = getattr(gen, "batch_size", 16) * samples
            steps = math.ceil(prompts * samples / self.hw.processes / at_once) * new
            floor = steps * a * s.parameters / (GPU_BANDWIDTH_TBS * 1e12)
            if floor > plan.seconds:
                plan.seconds = floor
                plan.notes.append(
                    f"time: decoding-bound ({steps} steps reading the weights at {GPU_BANDWIDTH_TBS} TB/s)"
                )

    def _judge(self, plan: StagePlan, iteration: int) -> None:
        judge = self.recipe.judge
        section = self.recipe.training.iteration
        gen = self.recipe.generation.args
        length = min(section.max_length, section.max_prompt_length + gen.max_new_tokens)
        s, a = self.shape, self.value_bytes
        batch = getattr(judge.args, "batch_size", 16)
        if judge.name == "implicit":  # the policy and pi_init score every response, one model after the other
            plan.terms.append(m.frozen_weights("model (one at a time)", s.parameters, a))
            plan.terms.append(m.scoring_logits(batch, length, s.vocab, a))
            models, n = 2, s.flop_parameters
        elif judge.name == "pairrm":
            plan.terms.append(m.frozen_weights("PairRM", PAIRRM_PARAMETERS, a))
            models, n = 1, PAIRRM_PARAMETERS
        else:
            plan.notes.append(f"judge '{judge.name}': its model is not sized by the plan")
            models, n = 0, 0
        prompts = self._prompts(iteration)
        if prompts is None:
            plan.flops = plan.seconds = None
            return
        self._time(plan, 2 * n * models * prompts * gen.samples_per_prompt * length)

    def _time(self, plan: StagePlan, flops: float) -> None:
        hw = self.hw
        peak = (CPU_PEAK_TFLOPS if hw.cpu else hw.peak_tflops) * 1e12
        plan.flops = flops
        plan.seconds = flops / (hw.processes * peak * hw.utilisation)

    # what would fit
    def _advice(self, plan: StagePlan, kind: str, iteration: int) -> list[str]:
        dominant = plan.dominant
        said = [
            f"{plan.name} needs {plan.bytes / m.GB:.1f} GB of {self.hw.memory / m.GB:.3g} GB; largest: "
            f"{dominant.name} {dominant.gb:.1f} GB"
            if dominant
            else ""
        ]
        if kind not in TRAINING_KINDS:
            key = "generation.batch_size" if kind in GENERATING_KINDS else "judge.batch_size"
            return [*said, f"a smaller {key}, or more memory a device"]
        section, key = self._section(kind), f"training.{TRAINING_KINDS[kind]}"
        runtime = plan.terms[0].bytes

        def fits(hw: Hardware, batch: int, checkpointing: bool) -> bool:
            terms = self.training_terms(kind, iteration, batch_size=batch, checkpointing=checkpointing, hw=hw)
            return runtime + sum(t.bytes for t in terms) <= hw.memory

        options = []
        ckpt = section.gradient_checkpointing
        if not ckpt and fits(self.hw, section.batch_size, True):
            options.append(f"gradient checkpointing: {key}.gradient_checkpointing=true")
        sharded = replace(self.hw, parallelism="fsdp2")
        if self.hw.processes > 1 and self.hw.parallelism != "fsdp2" and fits(sharded, section.batch_size, True):
            options.append(
                f"FSDP2 over the same {self.hw.processes} GPUs (configs/accelerate/fsdp.yaml), with checkpointing"
            )
        if not self.hw.cpu and not any(o.startswith("FSDP2 over the same") for o in options):
            for n in SCALES:
                if n <= self.hw.processes:
                    continue
                hw = replace(
                    self.hw,
                    gpus=min(n, max(self.hw.gpus, 8)),
                    nodes=max(1, n // max(self.hw.gpus, 8)),
                    parallelism="fsdp2",
                )
                if fits(hw, section.batch_size, True):
                    options.append(
                        f"more GPUs: FSDP2 over {n} with checkpointing (plan --gpus {min(n, 8)}"
                        f"{f' --nodes {n // 8}' if n > 8 else ''})"
                    )
                    break
        checkpointing = "" if ckpt else f" {key}.gradient_checkpointing=true"
        for batch in [b for b in range(section.batch_size - 1, 0, -1) if section.batch_size % b == 0]:
            if fits(self.hw, batch, True):  # the same optimiser batch: more accumulation steps
                accumulation = section.gradient_accumulation_steps * section.batch_size // batch
                options.append(
                    f"a smaller batch: {key}.batch_size={batch} {key}.gradient_accumulation_steps={accumulation}"
                    f"{checkpointing}"
                )
                break
        if not options:
            said[0] += "; no change the plan knows of makes it fit on this hardware"
        if self._adapter(kind) is None:
            options.append("LoRA adapters (16 B only for the adapters' parameters): models.adapter: {name: lora}")
        return [*said, *options]
