"""Access to the non-Python parts of the contract: read-model DDL and search settings."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

MESSAGES_INDEX = "messages"


def read_model_ddl() -> list[tuple[str, str]]:
    """(file name, SQL) of every read-model DDL file, in the order to apply them."""
    folder = resources.files("schemas").joinpath("postgres")
    files = sorted(e.name for e in folder.iterdir() if e.name.endswith(".sql"))
    return [(name, folder.joinpath(name).read_text()) for name in files]


def search_index_spec(index: str = MESSAGES_INDEX) -> dict[str, Any]:
    """{"primaryKey": ..., "settings": ...} for a Meilisearch index, from `schemas/search/`."""
    spec: dict[str, Any] = json.loads(
        resources.files("schemas").joinpath("search", f"{index}.json").read_text()
    )
    return spec
