"""The relay's client to the query API: every concurrent stream gets its own connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import cast

from command_api.upstream import SseEvent, StreamSource, relay_client

STREAMS = 150  # past httpx's default pool of 100
FRAME = b'event: chunk\nid: 1:0\ndata: {"text": "hi"}\n\n'


async def held_streams(opened: list[int], release: asyncio.Event) -> asyncio.Server:
    """A stand-in query API: answers each stream with one frame, then holds it open."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(FRAME) + FRAME + b"\r\n"
        )
        await writer.drain()
        opened.append(1)
        await release.wait()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_more_streams_than_httpx_default_pool_are_relayed_at_once() -> None:
    opened: list[int] = []
    release = asyncio.Event()
    server = await held_streams(opened, release)
    port = server.sockets[0].getsockname()[1]
    async with relay_client(f"http://127.0.0.1:{port}") as http:
        source = StreamSource(http, max_reconnects=0)
        # Each relay stays open (held here) after its first event, as during a generation.
        streams = [
            cast(AsyncGenerator[SseEvent], source.events(f"req-{i}", "Bearer k"))
            for i in range(STREAMS)
        ]
        firsts = await asyncio.wait_for(asyncio.gather(*(anext(s) for s in streams)), timeout=60)
        assert [e.event for e in firsts] == ["chunk"] * STREAMS and len(opened) == STREAMS
        release.set()
        for s in streams:
            await s.aclose()
    server.close()
