"""Helpers for the processors' integration tests: publish events, fold to the log end."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import replace

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.clients import producer_config
from infra.settings import InfraSettings
from processors.pg_projection import PostgresProjection
from processors.runner import Runner
from processors.search_projection import SearchProjection
from processors.settings import ProcessorSettings
from schemas.codec import Headers, encode
from schemas.events import CompletionFinished, ConversationEvent, Event, TokenChunk

RawRecord = tuple[str, bytes, bytes | None, Headers]  # topic, key, value, headers


def processor_settings(infra: InfraSettings, **overrides: object) -> ProcessorSettings:
    base = {**infra.model_dump(), "metrics_port": 0, "search_batch_wait_ms": 200}
    return ProcessorSettings(**{**base, **overrides})


def topic_of(settings: InfraSettings, event: Event) -> str:
    if isinstance(event, ConversationEvent):
        return settings.topics.conversations
    return settings.topics.completions


def publish(settings: InfraSettings, items: Iterable[Event | RawRecord]) -> None:
    """Append events (or raw records) to their topics, in order, and wait for the acks."""
    producer = Producer(producer_config(settings))
    for item in items:
        if isinstance(item, tuple):
            topic, key, raw, raw_headers = item
            producer.produce(topic, value=raw, key=key, headers=raw_headers)
        else:
            value, headers = encode(item)
            producer.produce(topic_of(settings, item), value=value, key=item.key.encode(),
                             headers=headers)  # fmt: skip
        producer.poll(0)
    assert producer.flush(30) == 0


async def fold_to_end(settings: ProcessorSettings, *, search: bool = False) -> int:
    """Run the Postgres (then search) projection until it reaches the log end."""
    folded = 0
    projections = [PostgresProjection(settings)]
    if search:
        projections.append(SearchProjection(settings))  # type: ignore[arg-type]
    for projection in projections:
        runner = Runner(settings, projection, group=None, stop_at_lag=0)
        try:
            await runner.run()
        finally:
            await projection.close()
        folded += runner.folded
    return folded


def with_answers(settings: InfraSettings, events: Iterable[Event]) -> list[Event | RawRecord]:
    """`events` as a replica writes them: each final carries its attempt's text (v2) and is
    also written, right after, to chat.answers."""
    texts: dict[tuple[str, int], list[str]] = {}
    out: list[Event | RawRecord] = []
    for e in events:
        if isinstance(e, TokenChunk):
            texts.setdefault((e.request_id, e.attempt), []).append(e.text)
        if isinstance(e, CompletionFinished) and e.text is None:
            e = replace(e, text="".join(texts.get((e.request_id, e.attempt), [])))
        out.append(e)
        if isinstance(e, CompletionFinished):
            value, headers = encode(e)
            out.append((settings.topics.answers, e.key.encode(), value, headers))
    return out


def delete_all_records(settings: InfraSettings, topic: str) -> dict[int, int]:
    """Delete every record of `topic` (as retention would): partition -> new low watermark."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    futures = admin.delete_records(
        [TopicPartition(topic, p, -1) for p in partitions], operation_timeout=30
    )
    return {tp.partition: f.result(60).low_watermark for tp, f in futures.items()}


def subprocess_env(settings: InfraSettings, **extra: str) -> dict[str, str]:
    """The environment that points `python -m processors` at this test's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
    env.update(
        CHATLOG_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        CHATLOG_TOPIC_PREFIX=settings.topic_prefix,
        CHATLOG_POSTGRES_URL=settings.postgres_url,
        CHATLOG_MEILI_URL=settings.meili_url or "",
        CHATLOG_MEILI_KEY=settings.meili_key,
        CHATLOG_INDEX_PREFIX=settings.index_prefix,
        CHATLOG_HOME=str(settings.home),
        CHATLOG_METRICS_PORT="0",
        **extra,
    )
    return env


class TcpProxy:
    """A TCP forwarder that a test can take down and bring back: a dependency outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
