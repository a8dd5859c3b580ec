from schemas.resources import read_model_ddl, search_index_spec


def test_ddl_defines_the_architecture_tables() -> None:
    sql = "\n".join(body for _, body in read_model_ddl())
    for table in ("conversations", "messages", "completions", "projection_checkpoints"):
        assert f"chatlog.{table}" in sql


def test_search_settings_filter_by_user_and_conversation() -> None:
    spec = search_index_spec()
    assert spec["primaryKey"] == "id"
    assert {"user_id", "conversation_id"} <= set(spec["settings"]["filterableAttributes"])
