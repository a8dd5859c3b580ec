"""The local launcher: real Kafka, PostgreSQL and Meilisearch with no Docker.

Everything lives under one data directory (`CHATLOG_HOME`, default `.chatlog/`):
`tools/` (pinned Kafka jars, the Meilisearch binary), `data/<service>/`, `logs/`, `run/` (pids).
"""

from infra.local.stack import LocalStack, ServiceStatus

__all__ = ["LocalStack", "ServiceStatus"]
