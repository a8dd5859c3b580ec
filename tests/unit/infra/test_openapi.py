"""Both APIs' OpenAPI documents say what the apps do (issue #12 item 5): the OpenAI error
schema on every error status, bodies for every POST/PATCH, the bearer scheme."""

from __future__ import annotations

from typing import Any

import pytest

from command_api import CommandSettings
from command_api import create_app as command_app
from query_api import QuerySettings
from query_api import create_app as query_app

PUBLIC = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    """Built without starting anything: the app factories connect only in their lifespan."""
    return {
        "command": command_app(CommandSettings()).openapi(),
        "query": query_app(QuerySettings()).openapi(),
    }


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items()]


@pytest.mark.parametrize("api", ["command", "query"])
def test_errors_auth_and_bodies_are_documented(docs: dict[str, Any], api: str) -> None:
    doc = docs[api]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key.",
    }
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for method, path, op in operations(doc):
        names = [p["name"].lower() for p in op.get("parameters", [])]
        assert "authorization" not in names, (method, path)
        if path in PUBLIC:
            assert op["security"] == [], path
            continue
        assert op["security"] == [{"bearerAuth": []}], (method, path)
        for status in ("401", "503"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path)
        if "{" in path:
            assert "404" in op["responses"], (method, path)
        if method in ("post", "patch") and not path.endswith("/cancel"):
            assert "requestBody" in op, (method, path)


def test_the_raw_accept_path_has_its_body_and_statuses(docs: dict[str, Any]) -> None:
    op = docs["command"]["paths"]["/v1/chat/completions"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionBody"}
    assert {"202", "400", "401", "404", "409", "413", "422", "429", "503"} <= set(op["responses"])
    assert "text/event-stream" in op["responses"]["200"]["content"]
    schema = docs["command"]["components"]["schemas"]["ChatCompletionBody"]
    assert schema["properties"]["model"]["enum"] == list(CommandSettings().model_ids)
    error = docs["command"]["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
