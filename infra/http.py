"""HTTP plumbing shared by both APIs: the OpenAI error shape and bearer-key auth.

Each API raises `ApiError` subclasses (typed errors) and calls `install_error_handlers`
once; every error, including FastAPI's own validation errors, leaves as
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """An error with its HTTP status and OpenAI-style type/code."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.headers = headers or {}


class BadRequest(ApiError):
    status, code = 400, "invalid_request"


class Unauthorized(ApiError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class Unprocessable(ApiError):
    status, code = 422, "unprocessable"


class RateLimited(ApiError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class Unavailable(ApiError):
    status, type, code = 503, "service_unavailable", "service_unavailable"


def error_body(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    """Map ApiError, HTTP errors and validation errors to the OpenAI error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.message, exc.type, exc.code, exc.param),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid"))
        return JSONResponse(
            error_body(message, "invalid_request_error", "invalid_value", param), status_code=400
        )

    @app.exception_handler(psycopg.OperationalError)
    async def _database_down(_: Request, exc: psycopg.OperationalError) -> JSONResponse:
        # Postgres refused, shut down or the pool timed out: the service is unavailable
        # for now (503), not broken (500).
        logging.getLogger(__name__).warning("Postgres unavailable: %s", exc)
        return JSONResponse(
            error_body(
                "The database is unavailable; retry later.",
                Unavailable.type,
                "database_unavailable",
            ),
            status_code=Unavailable.status,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", code),
            status_code=exc.status_code,
        )


def bearer_key(authorization: str | None) -> str:
    """The key in an `Authorization: Bearer <key>` header, or Unauthorized."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("Missing bearer token: send `Authorization: Bearer <api key>`.")
    key = authorization[7:].strip()
    if not key:
        raise Unauthorized("Empty bearer token.")
    return key
