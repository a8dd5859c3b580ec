"""Which failures are transient (a dependency is down: pause and retry, never DLQ)."""

from __future__ import annotations

import psycopg
from aiokafka.errors import KafkaError
from meilisearch.errors import (
    MeilisearchApiError,
    MeilisearchCommunicationError,
    MeilisearchTimeoutError,
)


class SearchUnavailable(Exception):
    """Meilisearch did not finish a task in time, or a dependency is not there yet."""


def is_transient(exc: BaseException) -> bool:
    """True for outages and contention; False for errors that the data itself causes."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True  # connection lost, server shut down, serialization/deadlock rollback
    if isinstance(exc, MeilisearchCommunicationError | MeilisearchTimeoutError):
        return True
    if isinstance(exc, MeilisearchApiError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", True))
    return isinstance(exc, SearchUnavailable | OSError | TimeoutError)


class RebuildRefused(Exception):
    """A rebuild would switch in a read model that lacks part of the log: it does not."""
