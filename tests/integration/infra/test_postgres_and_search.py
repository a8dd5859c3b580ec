"""The read-model DDL on the real Postgres, the index settings on the real Meilisearch."""

from __future__ import annotations

import pytest

from infra.clients import apply_read_model_ddl, ensure_search_index, meili_client, pg_connect
from infra.settings import InfraSettings

pytestmark = pytest.mark.integration


def test_ddl_applies_twice_and_creates_the_tables(infra_settings: InfraSettings) -> None:
    apply_read_model_ddl(infra_settings)  # the harness applied it once already
    apply_read_model_ddl(infra_settings)
    with pg_connect(infra_settings) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'chatlog'"
        ).fetchall()
    assert {r[0] for r in rows} >= {
        "conversations",
        "messages",
        "completions",
        "projection_checkpoints",
    }


def test_full_text_column_follows_content(infra_settings: InfraSettings) -> None:
    with pg_connect(infra_settings) as conn:
        conn.execute(
            "INSERT INTO chatlog.messages (id, conversation_id, request_id, role, content, status,"
            " created_at) VALUES ('r:assistant', 'c', 'r', 'assistant', 'Kafka streams events', "
            "'finished', now())"
        )
        hit = conn.execute(
            "SELECT id FROM chatlog.messages WHERE search @@ plainto_tsquery('english', 'stream')"
        ).fetchall()
    assert hit == [("r:assistant",)]


def test_meilisearch_takes_the_settings_and_tolerates_typos(infra_settings: InfraSettings) -> None:
    name = ensure_search_index(infra_settings)  # idempotent: already created by the harness
    index = meili_client(infra_settings).index(name)
    assert set(index.get_filterable_attributes()) >= {"user_id", "conversation_id"}
    task = index.add_documents(
        [
            {
                "id": "m1",
                "user_id": "alice",
                "conversation_id": "c1",
                "content": "Kafka streams events",
            },
            {
                "id": "m2",
                "user_id": "bob",
                "conversation_id": "c2",
                "content": "Kafka streams events",
            },
            {
                "id": "m3",
                "user_id": "alice",
                "conversation_id": "c3",
                "content": "Postgres stores rows",
            },
        ]
    )
    assert (
        meili_client(infra_settings).wait_for_task(task.task_uid, timeout_in_ms=60_000).status
        == "succeeded"
    )
    result = index.search("kafak strem", {"filter": "user_id = 'alice'"})
    assert [h["id"] for h in result["hits"]] == ["m1"]
