"""AlpacaEval interoperability: a model's responses in AlpacaEval's model-output format.

AlpacaEval 2.0 (``pip install alpaca-eval``; ``alpaca_eval --model_outputs FILE``) reads a JSON list of
``{"instruction", "output", "generator", "dataset"}`` records, one per instruction of its evaluation set
(805 instructions, ``tatsu-lab/alpaca_eval``). Two ways to make one from a run:

- :func:`export_stage_responses`: the responses an evaluation stage already generated on the run's
  hold-out prompts (``<run>/<stage>/responses.jsonl``), one record per prompt (the first sample).
- :func:`generate_alpacaeval_outputs`: the model of a stage answers an instruction file (AlpacaEval's own
  ``alpaca_eval.json``, or any JSON/JSONL list of ``{"instruction", "dataset"?}``) with the recipe's
  generator and evaluation sampling settings; this is what AlpacaEval 2.0 numbers need.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from spa_recipes.errors import DataError, UserError

HOLDOUT_DATASET = "spa_holdout"


def _instruction(messages: list[dict[str, str]]) -> str:
    from spa_recipes.judges.pairwise import instruction_text

    return instruction_text(messages)


def export_stage_responses(stage_dir: Path, generator: str, sample: int = 0) -> list[dict[str, Any]]:
    """AlpacaEval records from an evaluation stage's ``responses.jsonl``.

    Args:
        stage_dir: ``<run>/<eval stage>`` (``eval_baseline``, ``eval_seed_dpo`` or ``iter{i}_eval``).
        generator: the ``generator`` name written into every record.
        sample: which of the K samples per prompt to take.

    Returns:
        ``[{"instruction", "output", "generator", "dataset"}]`` in prompt order.

    Raises:
        UserError: the stage has no finished responses, or ``sample`` is out of range.
    """
    from spa_recipes.atomic import is_complete, read_jsonl

    path = stage_dir / "responses.jsonl"
    if not path.is_file() or not is_complete(stage_dir):
        raise UserError(f"{stage_dir}: no finished evaluation responses (responses.jsonl of a completed eval stage)")
    records = []
    for row in read_jsonl(path):
        if not 0 <= sample < len(row["responses"]):
            raise UserError(f"--sample {sample}: the stage has {len(row['responses'])} samples per prompt")
        records.append(
            {
                "instruction": _instruction(row["prompt"]),
                "output": row["responses"][sample],
                "generator": generator,
                "dataset": HOLDOUT_DATASET,
            }
        )
    return records


def read_instructions(path: Path) -> list[dict[str, Any]]:
    """Instructions from AlpacaEval's ``alpaca_eval.json`` or any JSON/JSONL list of ``{"instruction", ...}``.

    Raises:
        DataError: the file is missing, unreadable, or a record has no instruction text.
    """
    from spa_recipes.data.preferences import read_records

    if not path.is_file():
        raise DataError(f"file not found: {path}")
    suffix = path.suffix.lower()
    records = read_records(path, "jsonl" if suffix in {".jsonl", ".ndjson"} else "json")
    out = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
            raise DataError(f"{path}: record {i} has no 'instruction' text")
        out.append(record)
    if not out:
        raise DataError(f"{path}: no instructions")
    return out


def generate_alpacaeval_outputs(
    recipe: Any,
    model_path: str,
    instructions: list[dict[str, Any]],
    generator_name: str,
    *,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """A model's answers to instructions, as AlpacaEval records.

    Each instruction is one user turn (after the data source's system turn, when it sets ``system_prompt``),
    answered once by the recipe's generator with the evaluation's sampling settings unless overridden.

    Args:
        recipe: the run's validated recipe.
        model_path: the model folder (a stage's ``model``) or hub id.
        instructions: records with ``"instruction"`` (and ``"dataset"``, kept when present).
        generator_name: written into every record.
        temperature: sampling temperature (default: ``evaluation.temperature``; 0 is greedy).
        max_new_tokens: response budget (default: ``evaluation.max_new_tokens`` or ``generation.max_new_tokens``).
        seed: sampling seed (default: the run seed + 17, as the evaluation stages).

    Returns:
        ``[{"instruction", "output", "generator", "dataset"}]`` in the instructions' order.
    """
    from spa_recipes.registry import get_registry

    evaluation = recipe.evaluation
    settings = recipe.generation.args.model_copy(
        update={
            "samples_per_prompt": 1,
            "temperature": evaluation.temperature if temperature is None else temperature,
            "max_new_tokens": max_new_tokens or evaluation.max_new_tokens or recipe.generation.args.max_new_tokens,
        }
    )
    component = get_registry().get("generator", recipe.generation.name)
    assert component is not None, f"generator '{recipe.generation.name}' was validated but is not registered"
    generator = component.build(settings)
    system = getattr(recipe.data.args, "system_prompt", None)
    prefix = [] if system is None else [{"role": "system", "content": system}]
    prompts = [
        {"id": str(i), "prompt": [*prefix, {"role": "user", "content": r["instruction"]}]}
        for i, r in enumerate(instructions)
    ]
    with tempfile.TemporaryDirectory(prefix="spa-alpacaeval-") as tmp:
        rows = generator.generate(
            prompts,
            model_path=model_path,
            out_dir=Path(tmp) / "shards",
            seed=recipe.run.seed + 17 if seed is None else seed,
            dtype=recipe.models.dtype,
            max_prompt_length=recipe.training.iteration.max_prompt_length,
        )
    return [
        {
            "instruction": record["instruction"],
            "output": row["responses"][0],
            "generator": generator_name,
            "dataset": record.get("dataset", "custom"),
        }
        for record, row in zip(instructions, rows, strict=True)
    ]


def write_outputs(records: list[dict[str, Any]], out: Path) -> None:
    """Write the records as one JSON list (AlpacaEval's ``--model_outputs`` file), atomically."""
    from spa_recipes.atomic import dumps_json, write_text_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, dumps_json(records, indent=2, ensure_ascii=False) + "\n")
