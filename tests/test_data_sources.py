"""Preference-dataset sources: local JSON/JSONL/Parquet files in the common shapes, the hub source on local data,
malformed rows counted by the split, missing files as one-line errors, and one real run on a preference file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers_tiny import make_tiny_model

from spa_recipes.data.cleaning import clean_rows
from spa_recipes.data.config import HubPreferencesConfig, PreferenceFileConfig
from spa_recipes.data.preferences import HubPreferences, PreferenceFile, read_records
from spa_recipes.errors import DataError, RecipeError
from spa_recipes.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent

# UltraFeedback-binarized style: prompt string, chosen/rejected conversations ending in the answer.
CONVERSATION_ROWS = [
    {
        "prompt": f"question {i}",
        "chosen": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"good {i}"}],
        "rejected": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"bad {i}"}],
        "chosen-rating": 5.0,
        "source": "test",
    }
    for i in range(6)
]
STRING_ROWS = [{"question": f"question {i}", "good": f"good {i}", "bad": f"bad {i}", "uid": 100 + i} for i in range(6)]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _file_source(path: Path, **columns: object) -> PreferenceFile:
    return PreferenceFile(PreferenceFileConfig(path=str(path), **columns))


def test_conversation_shape_jsonl(tmp_path: Path) -> None:
    rows = _file_source(_write_jsonl(tmp_path / "uf.jsonl", CONVERSATION_ROWS)).rows()
    assert rows[2] == {
        "id": "2",
        "prompt": [{"role": "user", "content": "question 2"}],
        "chosen": "good 2",
        "rejected": "bad 2",
    }
    kept, skipped = (cleaned := clean_rows(rows)).rows, cleaned.skipped
    assert len(kept) == 6 and not skipped


def test_string_shape_with_column_mapping_json_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    json_path = tmp_path / "pairs.json"
    json_path.write_text(json.dumps({"data": STRING_ROWS}))  # an object holding one list of records
    parquet_path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(STRING_ROWS), parquet_path)
    mapping = {"prompt_column": "question", "chosen_column": "good", "rejected_column": "bad", "id_column": "uid"}
    from_json = _file_source(json_path, **mapping).rows()
    from_parquet = _file_source(parquet_path, **mapping).rows()
    assert from_json == from_parquet
    assert from_json[0] == {
        "id": "100",
        "prompt": [{"role": "user", "content": "question 0"}],
        "chosen": "good 0",
        "rejected": "bad 0",
    }


def test_multi_turn_conversation_is_the_prompt_and_system_turn_is_added(tmp_path: Path) -> None:
    context = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "q"},
    ]
    record = {
        "chosen": [*context, {"role": "assistant", "content": "yes"}],
        "rejected": [*context, {"role": "assistant", "content": "no"}],
    }
    path = _write_jsonl(tmp_path / "multi.jsonl", [record])
    (row,) = _file_source(path, prompt_column=None, system_prompt="").rows()
    assert row["prompt"] == [{"role": "system", "content": ""}, *context]
    assert (row["chosen"], row["rejected"]) == ("yes", "no")


def test_json_lines_under_a_json_name(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "lines.json", CONVERSATION_ROWS[:3])
    assert len(read_records(path)) == 3


def test_malformed_rows_are_passed_on_and_counted_by_split(tmp_path: Path) -> None:
    good = CONVERSATION_ROWS[:2]
    broken = [
        "{not json",  # a broken line
        [1, 2],  # not an object
        {"prompt": "p1", "chosen": 3, "rejected": "r"},  # chosen not text
        {"prompt": "p2", "chosen": [{"role": "user", "content": "x"}], "rejected": "r"},  # no assistant answer
        {"prompt": 7, "chosen": "c", "rejected": "r"},  # prompt neither text nor messages
        {
            "prompt": "p3",
            "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}],
            "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "r"}],
        },  # contexts differ
        {"prompt": "p4", "chosen": "same", "rejected": "same"},
        {"prompt": "   ", "chosen": "c", "rejected": "r"},
        {"prompt": "question 0", "chosen": "c", "rejected": "r"},  # duplicate prompt of the first good row
    ]
    rows = _file_source(_write_jsonl(tmp_path / "mixed.jsonl", [*good, *broken])).rows()
    assert len(rows) == len(good) + len(broken)  # nothing dropped, nothing raised
    kept, skipped = (cleaned := clean_rows(rows)).rows, cleaned.skipped
    assert [r["chosen"] for r in kept] == ["good 0", "good 1"]
    assert skipped == {
        "not a mapping": 2,
        "chosen/rejected not text": 2,
        "malformed prompt": 2,
        "chosen equals rejected": 1,
        "empty prompt": 1,
        "duplicate prompt": 1,
    }


def test_missing_id_values_are_counted(tmp_path: Path) -> None:
    records = [{**r, "uid": None} if i == 1 else r for i, r in enumerate(STRING_ROWS)]
    path = _write_jsonl(tmp_path / "ids.jsonl", records)
    rows = _file_source(
        path, prompt_column="question", chosen_column="good", rejected_column="bad", id_column="uid"
    ).rows()
    skipped = clean_rows(rows).skipped
    assert skipped == {"missing id": 1}


def test_a_column_no_record_has_is_one_error(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "s.jsonl", STRING_ROWS)
    with pytest.raises(
        DataError,
        match="no record has chosen_column 'chosen', rejected_column 'rejected'; columns: bad, good, question, uid",
    ):
        _file_source(path).rows()
    with pytest.raises(DataError, match="no record has prompt_column 'prompt' and chosen holds no conversation"):
        _file_source(path, chosen_column="good", rejected_column="bad").rows()
    # Conversations carry their prompt: no prompt column is needed.
    conversations = [{k: v for k, v in r.items() if k != "prompt"} for r in CONVERSATION_ROWS]
    rows = _file_source(_write_jsonl(tmp_path / "c.jsonl", conversations)).rows()
    assert rows[0]["prompt"] == [{"role": "user", "content": "question 0"}]


def test_missing_file_fails_validation_naming_it(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        textwrap.dedent("""\
        run: {name: r}
        models: {sft: some/model}
        data: {name: preference_file, path: no/such/pairs.jsonl}
        split: {prompts_per_iteration: 4}
    """)
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert len(info.value.problems) == 1
    assert "data.path" in info.value.problems[0] and "file not found: no/such/pairs.jsonl" in info.value.problems[0]
    result = subprocess.run(
        [sys.executable, "-m", "spa_recipes", "validate", str(recipe)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no/such/pairs.jsonl" in result.stderr


def test_unknown_extension_and_bad_json_are_one_line_errors(tmp_path: Path) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file type"):
        _file_source(csv).rows()
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "x",')
    with pytest.raises(DataError, match="bad.json:1:.*not valid JSON"):
        _file_source(bad).rows()


def test_max_rows(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "uf.jsonl", CONVERSATION_ROWS)
    assert [r["id"] for r in _file_source(path, max_rows=2).rows()] == ["0", "1"]


def test_hub_source_reads_a_local_dataset_with_split_and_columns(tmp_path: Path) -> None:
    # The hub path cannot be reached here; load_dataset takes a local folder of data files the same way.
    folder = tmp_path / "ds"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", CONVERSATION_ROWS)
    _write_jsonl(folder / "test.jsonl", CONVERSATION_ROWS[:2])
    source = HubPreferences(HubPreferencesConfig(path=str(folder), split="test"))
    rows = source.rows()
    assert [r["chosen"] for r in rows] == ["good 0", "good 1"]
    assert rows[0]["prompt"] == [{"role": "user", "content": "question 0"}]
    with pytest.raises(DataError, match="cannot load dataset .*split nope"):
        HubPreferences(HubPreferencesConfig(path=str(folder), split="nope")).rows()
    with pytest.raises(DataError, match="no record has chosen_column 'better'"):
        HubPreferences(HubPreferencesConfig(path=str(folder), chosen_column="better")).rows()


def test_hub_source_reads_a_local_copy_in_one_file(tmp_path: Path) -> None:
    """`data.path=/file.parquet` on a hub recipe: the same source and column mapping, the file read as the split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(CONVERSATION_ROWS), tmp_path / "uf.parquet")
    cfg = HubPreferencesConfig(path=str(tmp_path / "uf.parquet"), split="train_prefs", system_prompt="")
    rows = HubPreferences(cfg).rows()
    assert len(rows) == 6 and rows[2]["chosen"] == "good 2"
    assert rows[2]["prompt"] == [{"role": "system", "content": ""}, {"role": "user", "content": "question 2"}]
    jsonl = _write_jsonl(tmp_path / "uf.jsonl", CONVERSATION_ROWS[:3])
    assert [r["rejected"] for r in HubPreferences(HubPreferencesConfig(path=str(jsonl))).rows()] == [
        "bad 0",
        "bad 1",
        "bad 2",
    ]
    (tmp_path / "uf.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match="unknown file type"):
        HubPreferences(HubPreferencesConfig(path=str(tmp_path / "uf.csv"))).rows()


def test_hub_source_passes_revision_to_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    seen: dict[str, object] = {}

    def fake_load_dataset(path: str, name: str | None = None, **kwargs: object) -> datasets.Dataset:
        seen.update(path=path, name=name, **kwargs)
        # Conversations only: the prompt comes from them, no prompt column is needed.
        return datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "prompt"} for r in CONVERSATION_ROWS])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = HubPreferencesConfig(
        path="argilla/ultrafeedback-binarized-preferences-cleaned", revision="abc123", split="train", max_rows=4
    )
    rows = HubPreferences(cfg).rows()
    assert len(rows) == 4
    assert rows[3] == {
        "id": "3",
        "prompt": [{"role": "user", "content": "question 3"}],
        "chosen": "good 3",
        "rejected": "bad 3",
    }
    assert seen == {
        "path": "argilla/ultrafeedback-binarized-preferences-cleaned",
        "name": None,
        "split": "train",
        "revision": "abc123",
        "data_files": None,
    }


def test_relative_path_is_found_under_shipped_recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spa_recipes.data.files as files

    shipped = tmp_path / "recipes"
    (shipped / "data").mkdir(parents=True)
    data = _write_jsonl(shipped / "data" / "pairs.jsonl", CONVERSATION_ROWS)
    monkeypatch.setattr(files, "SHIPPED_RECIPES", shipped)
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not where the file is
    assert PreferenceFile(PreferenceFileConfig(path="data/pairs.jsonl")).path == data
    (elsewhere / "data").mkdir()
    local = _write_jsonl(elsewhere / "data" / "pairs.jsonl", CONVERSATION_ROWS[:1])
    assert PreferenceFile(PreferenceFileConfig(path="data/pairs.jsonl")).path == local  # the working directory first


def run_recipe(recipe: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spa_recipes", "run", str(recipe), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_run_on_a_preference_file(tmp_path: Path) -> None:
    """`spa-recipe run` end to end: seed DPO and one SPA iteration of a tiny model on a local JSONL file."""
    words = [f"w{i}" for i in range(40)]
    model = make_tiny_model(tmp_path / "sft", words=words, hidden=16, layers=1, heads=2)
    records = [
        {
            "prompt": f"w{i % 40} w{(i * 7) % 40}",
            "chosen": [
                {"role": "user", "content": f"w{i % 40} w{(i * 7) % 40}"},
                {"role": "assistant", "content": f"w{i % 5} w{i % 3}"},
            ],
            "rejected": [
                {"role": "user", "content": f"w{i % 40} w{(i * 7) % 40}"},
                {"role": "assistant", "content": f"w{30 + i % 9}"},
            ],
        }
        for i in range(40)
    ]
    too_long = {"prompt": " ".join(words), "chosen": "w1", "rejected": "w2"}  # 40 words: over 16 prompt tokens
    data = _write_jsonl(tmp_path / "pairs.jsonl", [*records, "{broken", {"prompt": "w1", "chosen": 1}, too_long])
    recipe = tmp_path / "pref.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        run: {{name: pref, output_dir: {tmp_path / "runs"}}}
        models: {{sft: {model}, dtype: float32}}
        data: {{name: preference_file, path: {data}}}
        split: {{seed_size: 8, prompts_per_iteration: 8, eval_holdout: 4}}
        generation: {{name: hf, max_new_tokens: 6, batch_size: 8}}
        judge: {{name: implicit, reference: sft}}
        training:
          seed: {{epochs: 1, learning_rate: 1.0e-3, batch_size: 4, max_length: 32, max_prompt_length: 16}}
          iteration: {{epochs: 1, learning_rate: 1.0e-3, batch_size: 4, max_length: 32, max_prompt_length: 16}}
        iterations: 1
    """)
    )
    result = run_recipe(recipe)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "pref"
    stats = json.loads((run_dir / "split" / "stats.json").read_text())
    assert stats["rows"] == 43 and stats["usable"] == 40
    assert stats["skipped"] == {"not a mapping": 1, "chosen/rejected not text": 1, "prompt over 16 tokens": 1}
    # The first rows of each reason, by id (the row number here), or by position when a row has no id.
    assert stats["skipped_first_ids"] == {
        "not a mapping": ["#40"],
        "chosen/rejected not text": ["41"],
        "prompt over 16 tokens": ["42"],
    }
    assert "split done" in result.stdout and "prompt over 16 tokens 1 (first: 42)" in result.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(entry["status"] == "done" for entry in manifest["stages"].values())
    pairs = [json.loads(line) for line in (run_dir / "iter1_pairs" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(set(p) >= {"prompt", "chosen", "rejected"} for p in pairs)
    assert (run_dir / "iter1_train" / "model" / "model.safetensors").is_file()
    # Editing the data file in place changes split's fingerprint: the run starts again from split.
    _write_jsonl(data, records[:-1])
    again = subprocess.run(
        [sys.executable, "-m", "spa_recipes", "graph", str(recipe)], capture_output=True, text=True, cwd=ROOT
    )
    before = {s: e["fingerprint"] for s, e in manifest["stages"].items()}
    split_line = next(line for line in again.stdout.splitlines() if line.startswith("split "))
    assert before["split"] not in split_line


def test_a_file_with_mostly_unusable_rows_stops_at_the_split(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(20)]
    model = make_tiny_model(tmp_path / "sft", words=words, hidden=16, layers=1, heads=2)
    good = [{"prompt": f"w{i} w{i + 1}", "chosen": "w1", "rejected": "w2"} for i in range(8)]
    same = [{"prompt": f"w{i} w{i + 2}", "chosen": "w3", "rejected": "w3"} for i in range(10)]
    data = _write_jsonl(tmp_path / "pairs.jsonl", [*good, *same, {"prompt": "w9", "chosen": None, "rejected": "w1"}])
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        f"run: {{name: bad, output_dir: {tmp_path / 'runs'}}}\nmodels: {{sft: {model}, dtype: float32}}\n"
        f"data: {{name: preference_file, path: {data}}}\niterations: 1\n"
        "split: {seed_size: 2, prompts_per_iteration: 2, eval_holdout: 0}\n"
    )
    result = run_recipe(recipe)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: data 'preference_file': 11 of 19 rows cannot be used (chosen equals rejected")
    assert "(first: 8, 9, 10, 11, 12), chosen/rejected not text 1 (first: 18))" in lines[0]
    assert not (tmp_path / "runs" / "bad" / "split" / ".complete").exists()
    assert not (tmp_path / "runs" / "bad" / "seed_dpo").exists()
