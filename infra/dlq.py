"""The dead-letter topic's record format, shared by every consumer that can meet poison.

A DLQ record keeps the original key, value and headers, and adds headers naming the
error and where the record came from, so an operator can find, fix and re-publish it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

HeaderPairs = list[tuple[str, bytes]]

ERROR_HEADER = "dlq-error"
ERROR_TYPE_HEADER = "dlq-error-type"
SOURCE_TOPIC_HEADER = "dlq-source-topic"
SOURCE_PARTITION_HEADER = "dlq-source-partition"
SOURCE_OFFSET_HEADER = "dlq-source-offset"
CONSUMER_HEADER = "dlq-consumer"


def dlq_headers(
    original: Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None,
    *,
    error: BaseException,
    consumer: str,
    topic: str,
    partition: int,
    offset: int,
) -> HeaderPairs:
    """The original headers plus the DLQ's own (error, type, source topic/partition/offset)."""
    pairs = original.items() if isinstance(original, Mapping) else (original or ())
    out: HeaderPairs = [
        (k, v.encode() if isinstance(v, str) else v) for k, v in pairs if v is not None
    ]
    out += [
        (ERROR_HEADER, str(error)[:2000].encode()),
        (ERROR_TYPE_HEADER, type(error).__name__.encode()),
        (CONSUMER_HEADER, consumer.encode()),
        (SOURCE_TOPIC_HEADER, topic.encode()),
        (SOURCE_PARTITION_HEADER, str(partition).encode()),
        (SOURCE_OFFSET_HEADER, str(offset).encode()),
    ]
    return out
