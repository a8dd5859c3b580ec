"""A truthful OpenAPI document for both APIs, built once here.

FastAPI's generated document lies in four ways for these apps: it advertises a 422
`HTTPValidationError` that `infra.http` turns into a 400 in the OpenAI error shape; it
lists none of the errors the handlers raise (401, 404, 409, 413, 429, 503); it shows the
bearer key as an `authorization` header parameter rather than a security scheme; and a
body parsed by hand (the command API's raw-ASGI accept path) has no schema at all.
Generated clients and the schemathesis run (tests/integration/test_schemathesis.py) read
this document, so each app calls `install_openapi` with what only it knows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

Operation = tuple[str, str]  # (method, path template), e.g. ("get", "/v1/conversations/{id}")
SCHEME = "bearerAuth"
ERROR_REF = "#/components/schemas/ErrorResponse"


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error either API answers: `{"error": {...}}`."""

    error: ErrorDetail


def error_response(status: int) -> dict[str, Any]:
    """The response object of one error status, in the OpenAI error shape."""
    return {
        "description": HTTPStatus(status).phrase,
        "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
    }


def install_openapi(
    app: FastAPI,
    *,
    public: Collection[str] = (),
    bodies: Mapping[Operation, type[BaseModel]] | None = None,
    errors: Mapping[Operation, Collection[int]] | None = None,
    responses: Mapping[Operation, Mapping[int, dict[str, Any]]] | None = None,
    headers: Mapping[Operation, Collection[str]] | None = None,
    refine: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Replace `app.openapi` with the truthful document.

    Every operation not under a `public` path needs the bearer key (401), and may answer
    503 (the key is looked up in Postgres); one with parameters or a body may answer 400;
    one with a path parameter 404. `errors` adds the statuses only the handler knows,
    `bodies` documents bodies the endpoint parses itself, `responses` adds or replaces
    whole response objects (a 202, an SSE stream, a non-JSON body), `headers` names the
    optional string headers an endpoint reads by hand, and `refine` edits the finished
    document (constraints only the app's settings know, e.g. the served models)."""
    bodies, errors, responses, headers = bodies or {}, errors or {}, responses or {}, headers or {}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _rewrite(doc, set(public), bodies, errors, responses, headers)
            if refine is not None:
                refine(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _rewrite(
    doc: dict[str, Any],
    public: set[str],
    bodies: Mapping[Operation, type[BaseModel]],
    errors: Mapping[Operation, Collection[int]],
    responses: Mapping[Operation, Mapping[int, dict[str, Any]]],
    headers: Mapping[Operation, Collection[str]],
) -> None:
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    models: list[type[BaseModel]] = [ErrorResponse, *bodies.values()]
    for model in models:
        _add_schema(schemas, model)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    components["securitySchemes"] = {
        SCHEME: {"type": "http", "scheme": "bearer", "description": "An API key."}
    }
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            key = (method, path)
            params = [
                p
                for p in op.get("parameters", [])
                if not (p["in"] == "header" and p["name"].lower() == "authorization")
            ]
            params += [
                {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
                for name in headers.get(key, ())
            ]
            if params:
                op["parameters"] = params
            else:
                op.pop("parameters", None)
            if key in bodies:
                name = bodies[key].__name__
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": _ref(name)}}},
                }
            out = op.setdefault("responses", {})
            out.pop("422", None)  # validation errors are 400s (infra.http)
            statuses = set(errors.get(key, ()))
            if path not in public:
                op["security"] = [{SCHEME: []}]
                statuses |= {401, 503}
                if params or "requestBody" in op:
                    statuses.add(400)
                if any(p["in"] == "path" for p in params):
                    statuses.add(404)
            else:
                op["security"] = []
            for status in sorted(statuses):
                out[str(status)] = error_response(status)
            for status, response in responses.get(key, {}).items():
                out[str(status)] = response
            op["responses"] = dict(sorted(out.items()))


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema


__all__ = ["ErrorResponse", "error_response", "install_openapi"]
