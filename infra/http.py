"""HTTP plumbing shared by both APIs: the OpenAI error shape, request ids and bearer-key auth.

Each API raises `ApiError` subclasses (typed errors) and calls `install_error_handlers`
once; every error, including FastAPI's own validation errors, leaves as
`{"error": {"message", "type", "param", "code"}}`. What the client did not cause (a bug, a
Postgres error) leaves with a generic message and a request id; its detail goes to the log
under that id, never into the response (a database's or an upstream's error text tells an
attacker about the system and a user nothing).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is echoed and logged: only a short, plain token is taken as given.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SURROGATE = re.compile("[\ud800-\udfff]")


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


def request_id_of(headers: Any) -> str:
    """The caller's `X-Request-ID` when it is a sane token, else a fresh one."""
    given = headers.get(REQUEST_ID_HEADER) or ""
    return given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def internal_error(
    request_id: str, *, status: int = 500, message: str | None = None, code: str = "internal_error"
) -> JSONResponse:
    """A generic error naming only the request id the log has the detail under."""
    type_ = Unavailable.type if status == 503 else "server_error"
    text = message or "The server failed to answer this request."
    return JSONResponse(
        error_body(f"{text} (request id {request_id})", type_, code),
        status_code=status,
        headers={REQUEST_ID_HEADER: request_id},
    )


def has_nul(*values: str) -> bool:
    """Whether any value holds U+0000, which no Postgres text can store: an id with one
    names nothing (a 404), rather than failing the query (a DataError, once a 500)."""
    return any("\x00" in v for v in values)


def unstorable(value: str) -> bool:
    """Whether `value` holds what Postgres text cannot (U+0000) or UTF-8 cannot encode (a
    lone surrogate, which a JSON `\\ud800` escape decodes to): refuse it at the door."""
    return "\x00" in value or _SURROGATE.search(value) is not None


class CatchAll:
    """Pure ASGI middleware outside the whole app (Starlette's server-error middleware
    included): that middleware answers an unhandled exception with the generic 500 (the
    handler `install_error_handlers` gives it) and then re-raises it for the server to
    log, and uvicorn closes the connection of any request that raised. Here the exception
    stops once its response went out complete; the log has it already, under its id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = complete = False

        async def tracked(message: Message) -> None:
            nonlocal started, complete
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if not started:  # nothing answered it (not a FastAPI app's own error path)
                await _unexpected(Request(scope), exc)(scope, receive, send)
            elif not complete:
                raise  # a stream broke midway: only closing the connection tells the client


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id_of(request.headers)
    log.error(
        "unhandled error in %s %s [request id %s]",
        request.method,
        request.url.path,
        rid,
        exc_info=exc,
    )
    return internal_error(rid)


def install_error_handlers(app: FastAPI) -> None:
    """Map ApiError, HTTP errors, validation and database errors to the OpenAI error shape,
    and anything else to a generic 500 on a kept connection (CatchAll)."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: CatchAll(build())  # type: ignore[method-assign]

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        return _unexpected(request, exc)

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
    async def _database_down(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        # Postgres refused, shut down or the pool timed out: the service is unavailable
        # for now (503), not broken (500).
        rid = request_id_of(request.headers)
        log.warning("Postgres unavailable [request id %s]: %s", rid, exc)
        return internal_error(
            rid,
            status=503,
            message="The database is unavailable; retry later.",
            code="database_unavailable",
        )

    @app.exception_handler(psycopg.DataError)
    async def _bad_value(request: Request, exc: psycopg.DataError) -> JSONResponse:
        # Postgres refused a value the request carried (SQLSTATE class 22: a NUL in a
        # string, a number out of range): the client's input, so a 400, said generically.
        rid = request_id_of(request.headers)
        log.warning("Postgres refused a value [request id %s]: %s", rid, exc)
        return JSONResponse(
            error_body(
                f"A value in the request cannot be stored or looked up (request id {rid}).",
                "invalid_request_error",
                "invalid_value",
            ),
            status_code=400,
            headers={REQUEST_ID_HEADER: rid},
        )

    @app.exception_handler(psycopg.Error)
    async def _database_error(request: Request, exc: psycopg.Error) -> JSONResponse:
        rid = request_id_of(request.headers)
        log.error("Postgres error [request id %s]: %r", rid, exc, exc_info=exc)
        return internal_error(rid)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", code),
            status_code=exc.status_code,
            headers=exc.headers,
        )


def bearer_key(authorization: str | None) -> str:
    """The key in an `Authorization: Bearer <key>` header, or Unauthorized."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("Missing bearer token: send `Authorization: Bearer <api key>`.")
    key = authorization[7:].strip()
    if not key:
        raise Unauthorized("Empty bearer token.")
    return key
