import asyncio
import time

import httpx
import pytest

from command_api import create_app
from infra.auth import AUTH_CACHE_TTL_S, KeyResolver, create_key, hash_key
from infra.clients import apg_connect, pg_connect
from infra.settings import InfraSettings
from query_api import create_app as create_query_app
from tests.integration.command_api.conftest import command_settings
from tests.integration.query_api.conftest import query_settings

pytestmark = pytest.mark.integration


async def test_created_key_resolves_to_its_user_and_is_stored_hashed(
    infra_settings: InfraSettings,
) -> None:
    with pg_connect(infra_settings) as conn:
        key = create_key(conn, "alice")
        stored = conn.execute("SELECT key_hash, hint FROM command.api_keys").fetchall()
    assert stored == [(hash_key(key), key[:7])]
    resolver = KeyResolver()
    async with await apg_connect(infra_settings) as conn:
        assert await resolver.user_for(conn, key) == "alice"
        assert await resolver.user_for(conn, key + "x") is None


def test_a_resolver_cache_cannot_outlive_the_revocation_bound() -> None:
    with pytest.raises(ValueError):
        KeyResolver(ttl_s=AUTH_CACHE_TTL_S + 1)


async def test_a_revoked_key_is_refused_by_both_apis_within_the_bound(
    infra_settings: InfraSettings,
) -> None:
    """Each API has resolved (and cached) the key; after revocation both answer 401
    within AUTH_CACHE_TTL_S (polled, with a margin for a loaded machine)."""
    with pg_connect(infra_settings) as conn:
        key = create_key(conn, "revokee")
    auth = {"Authorization": f"Bearer {key}"}
    command = create_app(command_settings(infra_settings))
    query = create_query_app(query_settings(infra_settings))
    async with (
        command.router.lifespan_context(command),
        query.router.lifespan_context(query),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=command), base_url="http://c") as c,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=query), base_url="http://q") as q,
    ):

        async def statuses() -> tuple[int, int]:
            a = await c.post("/v1/chat/completions/chatcmpl-none/cancel", headers=auth)
            b = await q.get("/v1/conversations", headers=auth)
            return a.status_code, b.status_code

        assert await statuses() == (404, 200)  # authenticated: the key is cached now
        with pg_connect(infra_settings) as conn:
            conn.execute(
                "UPDATE command.api_keys SET revoked_at = now() WHERE key_hash = %s",
                (hash_key(key),),
            )
        revoked = time.monotonic()
        seen = await statuses()
        while seen != (401, 401) and time.monotonic() - revoked < AUTH_CACHE_TTL_S + 2:
            await asyncio.sleep(0.2)
            seen = await statuses()
        assert seen == (401, 401)
