"""POST /v1/sessions (sign in with an API key) and DELETE /v1/sessions (sign out).

A browser cannot send `Authorization` on an EventSource; a session cookie it can. The
cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it),
Secure when the gateway speaks TLS; the gateway turns it into a bearer token for both
APIs and refuses cookie-authenticated writes without a matching Origin (infra/gateway.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, Field

from command_api.deps import Ctx
from infra.auth import SESSION_COOKIE, create_session, end_session, is_session
from infra.http import Unauthorized, bearer_key

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


class SignIn(BaseModel):
    api_key: str = Field(min_length=1, max_length=200)


def _secure(request: Request) -> bool:
    return request.headers.get("x-forwarded-proto", request.url.scheme) == "https"


@router.post("")
async def sign_in(body: SignIn, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
    """Exchange an API key (never a session) for a session cookie."""
    async with ctx.pool.connection() as conn:
        user = None if is_session(body.api_key) else await ctx.resolver.user_for(conn, body.api_key)
        if user is None:
            raise Unauthorized("Invalid API key.", param="api_key")
        session = await create_session(conn, user, ctx.settings.session_ttl_s)
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=int(ctx.settings.session_ttl_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return {"object": "session", "user": user, "expires_in": int(ctx.settings.session_ttl_s)}


@router.delete("")
async def sign_out(
    ctx: Ctx,
    request: Request,
    response: Response,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """End the caller's session (the gateway passes its cookie as the bearer token)."""
    token = bearer_key(authorization)
    if not is_session(token):
        raise Unauthorized("No session: sign in with POST /v1/sessions.")
    async with ctx.pool.connection() as conn:
        await end_session(conn, token)
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request)
    )
    return {"object": "session", "deleted": True}
