"""The preference-file and hub data sources: configs and registration (torch-free)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from spa_recipes.api import PROMPT_DEMONSTRATIONS, ComponentConfig


class PreferenceColumnsConfig(ComponentConfig):
    """Which columns of a preference dataset hold what (shared by ``preference_file`` and ``hub_preferences``).

    chosen/rejected may be strings (with the prompt in ``prompt_column``) or chat-message lists whose last message
    is the assistant's answer (UltraFeedback-binarized style); the messages before it, when there are any, are
    the prompt. Rows that cannot be read this way are passed on to the split, which counts and skips them.
    """

    capabilities = frozenset({PROMPT_DEMONSTRATIONS})  # offered when demonstration_column is set

    prompt_column: str | None = Field(
        "prompt", description="prompt: a string (one user turn) or chat messages; null: the conversation in chosen"
    )
    chosen_column: str = Field("chosen", description="preferred response: a string, or messages ending in it")
    rejected_column: str = Field("rejected", description="dispreferred response: a string, or messages ending in it")
    id_column: str | None = Field(None, description="row id column; null: the row number")
    system_prompt: str | None = Field(
        None, description="system turn put before each prompt that has none ('': an empty one, as the paper's code)"
    )
    max_rows: int | None = Field(None, gt=0, description="read only the first rows (before the split's shuffle)")
    demonstration_column: str | None = Field(
        None,
        description="demonstration (an answer to the prompt, for SPIN): a string or messages ending in it; every row "
        "must have one; the chosen column may serve; null: none",
    )

    def offered_capabilities(self) -> frozenset[str]:
        """Prompt demonstrations only when ``demonstration_column`` names them."""
        off = frozenset() if self.demonstration_column is not None else {PROMPT_DEMONSTRATIONS}
        return self.capabilities - off


class PreferenceFileConfig(PreferenceColumnsConfig):
    """Preference pairs from a local JSON, JSONL or Parquet file."""

    path: str = Field(
        description="the file; a relative path is looked up from the working directory, then under recipes/"
    )
    format: Literal["auto", "json", "jsonl", "parquet"] = Field("auto", description="auto: from the file extension")

    @field_validator("path")
    @classmethod
    def _exists(cls, path: str) -> str:
        from spa_recipes.data.files import find_data_file, not_found_message

        if find_data_file(path) is None:  # a missing file fails validation, before any model loads
            raise ValueError(not_found_message(path))
        return path


class HubPreferencesConfig(PreferenceColumnsConfig):
    """Preference pairs from ``datasets.load_dataset`` (a hub id, or a local dataset folder)."""

    path: str = Field(
        description="dataset id, e.g. argilla/ultrafeedback-binarized-preferences-cleaned; or a local copy: a dataset "
        "folder, or one .parquet/.jsonl/.json file read as the split"
    )
    subset: str | None = Field(None, description="dataset configuration name (load_dataset's `name`)")
    split: str = Field("train", description="dataset split, e.g. train or train_prefs")
    revision: str | None = Field(None, description="branch, tag or commit of the dataset repo; pin it to reproduce")
    data_files: str | list[str] | None = Field(None, description="load_dataset's data_files, when needed")


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the preference-pair data sources."""
    registry.register(
        "dataset",
        "preference_file",
        config=PreferenceFileConfig,
        builder="spa_recipes.data.preferences:PreferenceFile",
        help="preference pairs from a local JSON/JSONL/Parquet file",
    )
    registry.register(
        "dataset",
        "hub_preferences",
        config=HubPreferencesConfig,
        builder="spa_recipes.data.preferences:HubPreferences",
        help="preference pairs from datasets.load_dataset (hub id, split, revision)",
    )
