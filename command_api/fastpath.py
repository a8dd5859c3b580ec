"""One route served without FastAPI's per-request machinery: the accept path.

`POST /v1/chat/completions` is nearly all of the write traffic. Through FastAPI, each
request walks the router (every route matched in turn), solves dependencies (even for a
handler that takes only the Request), and passes the exit-stack, body-limit and telemetry
middlewares: together more server CPU per prompt than the bare endpoint's whole request.
`DirectRoute` serves that one method and path by calling the same handler with the same
exception handlers (the app's, so errors keep their OpenAI shape and rejection counts);
everything else goes through FastAPI unchanged. It sits inside the metrics middleware,
which sees the route as the router would have set it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoute:
    """Pure ASGI middleware: `route` (a plain `(request) -> Response` endpoint) is called
    directly for its exact method and path; an exception it raises goes to the handler
    the app registered for it (by class, most specific first), else propagates as it would
    from FastAPI (a 500 from the server-error middleware)."""

    def __init__(self, app: ASGIApp, *, owner: FastAPI, route: APIRoute, method: str) -> None:
        self.app = app
        self._owner = owner
        self._route = route
        self._path = route.path
        self._method = method
        self._endpoint: Endpoint = route.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self._path
            or scope["method"] != self._method
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route  # what the router sets: the metrics' route label
        scope["endpoint"] = self._endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await self._endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable[[Request, Exception], Any] | None:
        handlers = self._owner.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:  # the server-error middleware's, as under FastAPI
                return None
            if cls in handlers:
                return handlers[cls]  # type: ignore[no-any-return]
        return None
