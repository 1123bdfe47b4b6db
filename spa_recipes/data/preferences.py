"""Preference datasets from local files (JSON, JSONL, Parquet) or ``datasets.load_dataset`` (hub ids).

Both sources turn each record into the project's pair row ``{"id", "prompt": messages, "chosen": str,
"rejected": str}``. Shapes read (column names come from the config):

- **Strings with a prompt column**: ``{"prompt": "...", "chosen": "...", "rejected": "..."}``; the prompt
  may also be a list of chat messages.
- **Conversations** (UltraFeedback-binarized style, e.g. ``argilla/ultrafeedback-binarized-preferences-cleaned``
  and ``HuggingFaceH4/ultrafeedback_binarized``): chosen and rejected are lists of ``{"role", "content"}``
  whose last message is the assistant's answer. The messages before it, when there are any, are the prompt
  (they hold the whole context of a multi-turn row) and must be the same in chosen and rejected; when chosen
  holds the answer alone, the prompt column gives the prompt.

Malformed records are not dropped here and never raise: each is passed on, normalised as far as it goes,
with the field that cannot be read set to ``None`` (or left as it was when it is not a mapping), so that the
split stage (:func:`spa_recipes.data.cleaning.clean_rows`) counts and skips it under its reason ("not a
mapping", "missing id", "malformed prompt", "chosen/rejected not text", ...) in ``split/stats.json``. A
JSONL line that is not valid JSON is passed on as its text ("not a mapping"). Problems that concern the
whole dataset (a missing file, a column no record has, a dataset that cannot be loaded) are one-line
:class:`~spa_recipes.errors.DataError` s.

With ``demonstration_column`` set, each row also carries ``"demonstration"``: that column's answer text (a
string, or messages ending in the answer; it may be the chosen column itself), which the split keeps on the
iteration prompts for selectors that pair it with the model's sample (SPIN). A row without one is an error
naming the data and the row, not a skipped row: the column was asked for, so its absence is the data's fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spa_recipes.api import DatasetContext
from spa_recipes.data.config import HubPreferencesConfig, PreferenceColumnsConfig, PreferenceFileConfig
from spa_recipes.data.files import find_data_file, not_found_message
from spa_recipes.errors import DataError

Messages = list[dict[str, str]]
Row = dict[str, Any]
ROLES = {"system", "user", "assistant"}


# Normalisation ---------------------------------------------------------------------------------------


def normalize_record(record: Any, index: int, cfg: PreferenceColumnsConfig) -> Any:
    """One dataset record as a pair row (see the module docstring); what cannot be read is set to ``None``.

    Args:
        record: the record as read (a mapping, or anything else for a broken one).
        index: its position in the dataset (the id when ``cfg.id_column`` is None).
        cfg: the column mapping.

    Returns:
        ``{"id", "prompt", "chosen", "rejected"}`` (and ``"demonstration"``, None when unreadable, when
        ``cfg.demonstration_column`` is set), or ``record`` unchanged when it is not a mapping.
    """
    if not isinstance(record, dict):
        return record
    chosen, chosen_context = _response(record.get(cfg.chosen_column))
    rejected, rejected_context = _response(record.get(cfg.rejected_column))
    if chosen_context or rejected_context:
        # The conversation before the answer is the prompt; the two sides must answer the same conversation.
        prompt = chosen_context if chosen_context == rejected_context else None
    elif cfg.prompt_column is not None:
        prompt = _prompt(record.get(cfg.prompt_column))
    else:
        prompt = None
    if prompt is not None and cfg.system_prompt is not None and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": cfg.system_prompt}, *prompt]
    row = {"id": _row_id(record, index, cfg.id_column), "prompt": prompt, "chosen": chosen, "rejected": rejected}
    if cfg.demonstration_column is not None:
        row["demonstration"] = _response(record.get(cfg.demonstration_column))[0]
    return row


def _row_id(record: dict[str, Any], index: int, column: str | None) -> str | None:
    if column is None:
        return str(index)
    value = record.get(column)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None  # counted as "missing id" by the split
    return str(value)


def _messages(value: Any) -> Messages | None:
    """A list of ``{"role", "content"}`` messages with known roles (extra keys dropped), else None."""
    if not isinstance(value, list) or not value:
        return None
    out = []
    for message in value:
        if not isinstance(message, dict):
            return None
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            return None
        out.append({"role": role, "content": content})
    return out


def _prompt(value: Any) -> Messages | None:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = _messages(value)
    if messages is None or messages[-1]["role"] == "assistant":
        return None  # a prompt ends with a turn the model answers
    return messages


def _response(value: Any) -> tuple[str | None, Messages]:
    """``(answer text, the messages before it)``; ``(None, [])`` when the value is neither shape."""
    if isinstance(value, str):
        return value, []
    if isinstance(value, dict) and value.get("role") == "assistant" and isinstance(value.get("content"), str):
        return value["content"], []
    messages = _messages(value)
    if messages is None or messages[-1]["role"] != "assistant":
        return None, []
    return messages[-1]["content"], messages[:-1]


def _check_columns(columns: set[str], cfg: PreferenceColumnsConfig, what: str) -> None:
    """A configured column that no record has is a mapping mistake, not a bad row.

    The prompt column is checked after normalising (:func:`_check_prompts`): conversations carry their prompt.

    Raises:
        DataError: naming the column and the columns there are.
    """
    wanted = {"chosen_column": cfg.chosen_column, "rejected_column": cfg.rejected_column}
    if cfg.id_column is not None:
        wanted["id_column"] = cfg.id_column
    if cfg.demonstration_column is not None:
        wanted["demonstration_column"] = cfg.demonstration_column
    missing = [f"{key} '{column}'" for key, column in wanted.items() if column not in columns]
    if missing and columns:
        raise DataError(f"{what}: no record has {', '.join(missing)}; columns: {', '.join(sorted(columns))}")


def _check_prompts(rows: list[Any], columns: set[str], cfg: PreferenceColumnsConfig, what: str) -> None:
    """No prompt anywhere, and the prompt column absent: a mapping mistake.

    Raises:
        DataError: naming the prompt column and the columns there are.
    """
    if not columns or (cfg.prompt_column is not None and cfg.prompt_column in columns):
        return
    if not any(isinstance(r, dict) and r["prompt"] is not None for r in rows):
        raise DataError(
            f"{what}: no record has prompt_column '{cfg.prompt_column}' and chosen holds no conversation; "
            f"columns: {', '.join(sorted(columns))}"
        )


def _check_demonstrations(rows: list[Any], cfg: PreferenceColumnsConfig, what: str) -> None:
    """With ``demonstration_column`` set, every row must have demonstration text.

    Raises:
        DataError: naming the data, the first row without one (its id, or ``#<position>``) and the column.
    """
    if cfg.demonstration_column is None:
        return
    for position, row in enumerate(rows):
        if isinstance(row, dict) and not (isinstance(row["demonstration"], str) and row["demonstration"].strip()):
            name = row["id"] if row["id"] is not None else f"#{position}"
            raise DataError(
                f"{what}: row {name} has no text in demonstration_column '{cfg.demonstration_column}' "
                "(every row needs one; unset demonstration_column to read none)"
            )


# Reading files ---------------------------------------------------------------------------------------


def read_records(path: Path, file_format: str = "auto") -> list[Any]:
    """The records of a JSON, JSONL or Parquet file.

    JSON: a list of objects, or an object with one list of objects (``{"data": [...]}``); a ``.json`` file
    that holds JSON lines is read as JSONL. JSONL: one object per line; blank lines are skipped and a line
    that is not JSON becomes its text (a record the split counts as "not a mapping").

    Raises:
        DataError: the file cannot be read or has no records at all in a known layout.
    """
    kind = file_format if file_format != "auto" else _format_of(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    except Exception as exc:  # pyarrow's errors: not a parquet file, a corrupt footer
        raise DataError(f"{path}: cannot read as parquet: {str(exc).splitlines()[0]}") from None
    if kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                raise DataError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
            return _json_lines(text)  # JSON lines under a .json name, as the hub often has
        return _json_records(data, path)
    return _json_lines(text)


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes:
        return "parquet"
    if ".jsonl" in suffixes or ".ndjson" in suffixes:
        return "jsonl"
    if ".json" in suffixes:
        return "json"
    raise DataError(f"{path}: unknown file type; use .json, .jsonl or .parquet, or set data.format")


def _json_lines(text: str) -> list[Any]:
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            records.append(line)
    return records


def _json_records(data: Any, path: Path) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    raise DataError(f"{path}: expected a JSON list of records (or an object holding one list of records)")


# Sources ---------------------------------------------------------------------------------------------


class _PreferenceSource:
    """Shared by both sources: records -> normalised rows, columns checked once."""

    has_gold = False

    def __init__(self, cfg: PreferenceColumnsConfig) -> None:
        self.cfg = cfg
        self._rows: list[Any] | None = None

    def _records(self) -> tuple[list[Any], set[str] | None, str]:
        """``(records, their column names or None to look at the records, a name for messages)``."""
        raise NotImplementedError

    def rows(self) -> list[Row]:
        """The preference rows ``{"id", "prompt", "chosen", "rejected"[, "demonstration"]}``, in dataset order.

        Rows that could not be normalised are included (see the module docstring); the split skips them.

        Raises:
            DataError: the data cannot be loaded, a configured column is in no record, or a row has no
                demonstration text while ``demonstration_column`` is set.
        """
        if self._rows is None:
            records, columns, what = self._records()
            if self.cfg.max_rows is not None:
                records = records[: self.cfg.max_rows]
            if columns is None:
                columns = {key for r in records if isinstance(r, dict) for key in r}
            _check_columns(columns, self.cfg, what)
            rows = [normalize_record(r, i, self.cfg) for i, r in enumerate(records)]
            _check_prompts(rows, columns, self.cfg, what)
            _check_demonstrations(rows, self.cfg, what)
            self._rows = rows  # kept only once checked: asking again raises again
        return [dict(r) if isinstance(r, dict) else r for r in self._rows]


class PreferenceFile(_PreferenceSource):
    """Preference pairs from a local JSON, JSONL or Parquet file (the ``preference_file`` dataset).

    Args:
        cfg: path, format and column mapping.
        ctx: nothing a data source needs.

    Raises:
        DataError: the file does not exist (it was removed after validation).
    """

    def __init__(self, cfg: PreferenceFileConfig, ctx: DatasetContext = DatasetContext()) -> None:
        super().__init__(cfg)
        found = find_data_file(cfg.path)
        if found is None:
            raise DataError(f"data.path: {not_found_message(cfg.path)}")
        self.path = found

    def _records(self) -> tuple[list[Any], set[str] | None, str]:
        return read_records(self.path, self.cfg.format), None, str(self.path)


class HubPreferences(_PreferenceSource):
    """Preference pairs from ``datasets.load_dataset(path, subset, split=..., revision=...)`` (``hub_preferences``).

    ``path`` may also be a local copy: a dataset folder (``load_dataset`` reads it), or one ``.parquet``,
    ``.jsonl`` or ``.json`` file, read by ``datasets``' own builder for that format as the recipe's ``split``
    (``subset`` and ``revision`` do not apply to a file). The column mapping is the recipe's either way.

    Args:
        cfg: dataset id, subset, split, revision and column mapping.
        ctx: nothing a data source needs.
    """

    def __init__(self, cfg: HubPreferencesConfig, ctx: DatasetContext = DatasetContext()) -> None:
        super().__init__(cfg)
        self.hub_cfg = cfg

    def _records(self) -> tuple[list[Any], set[str] | None, str]:
        import datasets

        cfg = self.hub_cfg
        what = f"dataset '{cfg.path}' (split {cfg.split}{f', revision {cfg.revision}' if cfg.revision else ''})"
        local = find_data_file(cfg.path)  # a local copy of the dataset in one file: its split is the recipe's
        try:
            if local is not None:
                builder = {"jsonl": "json"}.get(_format_of(local), _format_of(local))
                dataset = datasets.load_dataset(builder, data_files={cfg.split: str(local)}, split=cfg.split)
            else:
                dataset = datasets.load_dataset(
                    cfg.path, cfg.subset, split=cfg.split, revision=cfg.revision, data_files=cfg.data_files
                )
        except DataError:
            raise
        except Exception as exc:  # not found, no network, bad split or subset: all the user's to fix
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"data: cannot load {what}: {message}") from None
        if not isinstance(dataset, datasets.Dataset):
            raise DataError(f"data: {what} is not a single split; set data.split")
        columns = set(dataset.column_names)
        _check_columns(columns, cfg, what)
        # Only the columns the rows are made of: a dataset's other columns can be large (completions, ratings).
        wanted = (cfg.prompt_column, cfg.chosen_column, cfg.rejected_column, cfg.id_column, cfg.demonstration_column)
        keep = [c for c in wanted if c in columns]
        if cfg.max_rows is not None:
            dataset = dataset.select(range(min(cfg.max_rows, len(dataset))))
        return dataset.select_columns(sorted(set(keep))).to_list(), columns, what
