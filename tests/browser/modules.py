"""One of the page's modules run alone in Debian's chromium: no system, no page load.

The page's own esbuild bundles the module into a script that defines one global; a blank
page runs it after any stand-ins (e.g. an EventSource that records what it opens).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser

WEB = Path(__file__).resolve().parents[2] / "web"


def bundle(entry: str, global_name: str) -> str:
    """`web/<entry>` and what it imports, as one script defining `global_name`."""
    esbuild = WEB / "node_modules" / ".bin" / "esbuild"
    command = [str(esbuild), entry, "--bundle", "--format=iife", f"--global-name={global_name}"]
    out = subprocess.run(command, cwd=WEB, capture_output=True, text=True, check=True)
    return out.stdout


def evaluate(browser: Browser, scripts: list[str], check: str, arg: Any = None) -> Any:
    """`check` (a JS function) on a blank page after `scripts`; what it returns."""
    page = browser.new_page()
    try:
        page.set_content("<!doctype html><html><body></body></html>")
        for script in scripts:
            page.add_script_tag(content=script)
        return page.evaluate(check, arg)
    finally:
        page.close()
