"""The write side: validates and authorises commands and appends events to the log."""

from command_api.app import create_app
from command_api.settings import CommandSettings

__all__ = ["CommandSettings", "create_app"]
