"""`python -m query_api`: serve on CHATLOG_QUERY_HOST:CHATLOG_QUERY_PORT (default 8001)."""

from __future__ import annotations

import logging

import uvicorn

from query_api.app import create_app
from query_api.settings import QuerySettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = QuerySettings()
    uvicorn.run(
        create_app(settings),
        host=settings.query_host,
        port=settings.query_port,
        # what "auto" picks when installed, pinned so that a missing wheel fails loudly
        # instead of silently halving the SSE fan-out rate (asyncio loop + h11)
        loop="uvloop",
        http="httptools",
        log_level="warning",
        timeout_graceful_shutdown=5,  # open SSE streams would otherwise hold shutdown
        access_log=False,
    )


if __name__ == "__main__":
    main()
