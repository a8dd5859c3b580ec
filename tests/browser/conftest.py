"""The chat page in a real browser: Debian's chromium driven by Playwright, on the whole
system (the e2e `running_system`: four services and the gateway, scripted engine).

One system for the package, one browser per module; each test gets a fresh browser context (its own
cookies), so a test signs in as a user would. The scripted engine echoes the prompt
(`Echo: <prompt>` three times), so a long prompt makes an answer long enough to act on
while it is written: tests wait for a visible state (N characters shown), then act.
Screenshots land in the module's run directory; with `CHATLOG_SCREENSHOTS=DIR` the ones
the README shows are (re)written there too (`docs/screenshots`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from infra import gateway
from infra.auth import apply_auth_ddl, create_key
from infra.clients import pg_connect
from infra.harness import Services, isolated_settings
from infra.settings import InfraSettings
from infra.system import System
from tests.browser.chat import ChatPage, readme_shots
from tests.e2e.conftest import running_system

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Slow enough that a long prompt's answer is still being written when a test acts on it;
# fast enough that a short one ends within a second.
TOKEN_RATE = "100"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skipped on a machine without the browser or the build, except in CI, where a
    missing install step must fail, not hide."""
    ready = Path(CHROMIUM).exists() and (gateway.WEB_DIST / "index.html").exists()
    if not ready and os.environ.get("CI") != "true":
        skip = pytest.mark.skip(reason="needs Debian's chromium and web/dist (scripts/setup)")
        for item in items:
            if "tests/browser/" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="package")
def browser_settings(services: Services) -> Iterator[InfraSettings]:
    """One private topic prefix / database / index for the whole package: its modules
    share one system, which is most of their time (the CI budget is 3 minutes)."""
    with isolated_settings(services, "tests.browser") as settings:
        yield settings


@pytest.fixture(scope="package")
def system(
    browser_settings: InfraSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    env = {"CHATLOG_SCRIPTED_TOKEN_RATE": TOKEN_RATE}
    with running_system(browser_settings, tmp_path_factory.mktemp("system"), env) as sys_:
        yield sys_


@pytest.fixture(scope="package")
def keys(browser_settings: InfraSettings) -> dict[str, str]:
    with pg_connect(browser_settings) as conn:
        apply_auth_ddl(conn)
        return {user: create_key(conn, user) for user in ("alice", "bob")}


@pytest.fixture(scope="package")
def origin(system: System) -> str:
    return system.base_url.removesuffix("/v1")


@pytest.fixture(scope="package")
def api(origin: str, keys: dict[str, str]) -> Iterator[httpx.Client]:
    """Alice's API client through the gateway: what the page shows is checked against it."""
    with httpx.Client(
        base_url=origin, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # --no-sandbox: tests run as root here, where chromium's sandbox refuses to start
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield b
    b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def chat(
    browser: Browser, origin: str, shots: Path, request: pytest.FixtureRequest
) -> Iterator[ChatPage]:
    """A fresh browser context (no cookie) on the page; a screenshot when the test ends."""
    context = browser.new_context(base_url=origin, viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    cp = ChatPage(page, shots, readme_shots())
    yield cp
    page.screenshot(path=str(shots / f"{request.node.name}.png"))
    context.close()
