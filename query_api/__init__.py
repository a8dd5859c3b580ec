"""chatlog's read side: history, search and resumable live streams (ARCHITECTURE §6-§7)."""

from query_api.app import create_app
from query_api.settings import QuerySettings

__all__ = ["QuerySettings", "create_app"]
