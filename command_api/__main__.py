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
    uvicorn.run(
        create_app(settings),
        host=settings.command_host,
        port=settings.command_port,
        log_level="info",
        access_log=False,
    )


if __name__ == "__main__":
    main()
