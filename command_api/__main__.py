"""`python -m command_api`: serve on CHATLOG_COMMAND_HOST:CHATLOG_COMMAND_PORT (default 8000)."""

from __future__ import annotations

import logging

import uvicorn

from command_api.app import create_app
from command_api.settings import CommandSettings


def main() -> None:
    settings = CommandSettings()
    settings.check_secrets()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    host, port = settings.command_host, settings.command_port
    # Explicit (uvicorn's "auto" picks the same when installed): the benchmark's bare
    # reference endpoint is served with the same two.
    if settings.command_workers > 1:  # each worker builds its app from the same env
        uvicorn.run(
            "command_api.app:create_app",
            factory=True,
            workers=settings.command_workers,
            host=host,
            port=port,
            access_log=False,
            loop="uvloop",
            http="httptools",
        )
    else:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            access_log=False,
            loop="uvloop",
            http="httptools",
        )


if __name__ == "__main__":
    main()
