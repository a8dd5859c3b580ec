"""Benchmark of the processors: fold rate, rebuild time, Meilisearch indexing rate.

    CHATLOG_TEST_KEEP=1 .venv/bin/python -m bench.processors --conversations 3000

Uses the test stack (the harness: a private topic prefix, database and index prefix,
removed afterwards). Events are the `processors.script.workload` mix: ~90% TokenChunk,
each final also on chat.answers with its text, as replicas write them.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from infra.harness import isolated_settings, provide_services
from processors.pg_projection import PostgresProjection
from processors.rebuild import rebuild_postgres, rebuild_search
from processors.runner import Runner
from processors.script import workload
from processors.search_projection import SearchProjection
from processors.settings import ProcessorSettings
from tests.integration.processors.support import processor_settings, publish, with_answers


async def fold(
    settings: ProcessorSettings, projection: PostgresProjection | SearchProjection
) -> int:
    runner = Runner(settings, projection, group=None, stop_at_lag=0)
    try:
        await runner.run()
    finally:
        await projection.close()
    return runner.folded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=3000)
    parser.add_argument("--chunks", type=int, default=30)
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--skip-rebuild", action="store_true")
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args()
    with provide_services() as services, isolated_settings(services, "bench_processors") as infra:
        settings = processor_settings(infra)
        t0 = time.perf_counter()
        events = with_answers(
            settings, workload(args.conversations, chunks_per_request=args.chunks)
        )
        publish(settings, events)
        print(f"published {len(events):,} events in {time.perf_counter() - t0:.1f}s")

        if not args.skip_live:
            t0 = time.perf_counter()
            n = asyncio.run(fold(settings, PostgresProjection(settings)))
            took = time.perf_counter() - t0
            print(f"postgres live fold: {n:,} events in {took:.1f}s = {n / took:,.0f} events/s")

        if not args.skip_rebuild:
            t0 = time.perf_counter()
            n = asyncio.run(rebuild_postgres(settings, quiet=True))
            took = time.perf_counter() - t0
            print(
                f"postgres rebuild+switch: {n:,} events in {took:.1f}s = {n / took:,.0f} events/s"
            )

        if not args.skip_search:
            from processors.readout import search_documents

            t0 = time.perf_counter()
            n = asyncio.run(fold(settings, SearchProjection(settings)))
            took = time.perf_counter() - t0
            docs = len(search_documents(settings))
            print(f"search live: {n:,} events, {docs:,} documents in {took:.1f}s"
                  f" = {docs / took:,.0f} messages/s")  # fmt: skip
            t0 = time.perf_counter()
            n = asyncio.run(rebuild_search(settings, quiet=True))
            took = time.perf_counter() - t0
            print(f"search rebuild+swap: {docs:,} documents in {took:.1f}s"
                  f" = {docs / took:,.0f} messages/s")  # fmt: skip


if __name__ == "__main__":
    main()
