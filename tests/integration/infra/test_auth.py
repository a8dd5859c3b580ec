import pytest

from infra.auth import KeyResolver, create_key, hash_key
from infra.clients import apg_connect, pg_connect
from infra.settings import InfraSettings

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
