"""The page as a user sees it, for the browser tests: what to type and click, what to read."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from playwright.sync_api import Locator, Page, expect


class ChatPage:
    def __init__(self, page: Page, shots: Path | None = None, readme: Path | None = None) -> None:
        self.page = page
        self.shots = shots
        self.readme = readme

    def open(self) -> None:
        self.page.goto("/")

    def sign_in(self, key: str) -> None:
        self.open()
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.get_by_role("navigation", name="Conversations")).to_be_visible()

    def send(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        box.fill(text)
        box.press("Enter")

    @property
    def answers(self) -> Locator:
        return self.page.locator("article.msg.assistant")

    @property
    def last_answer(self) -> Locator:
        return self.answers.last

    def answer_text(self, answer: Locator | None = None) -> str:
        return (answer or self.last_answer).locator(".md").inner_text()

    def wait_chars(self, n: int) -> None:
        """Until the answer being written shows at least `n` characters (still writing)."""
        self.page.wait_for_function(
            "n => { const a = [...document.querySelectorAll('article.msg.assistant.writing .md')]"
            ".pop(); return a && a.textContent.length >= n; }",
            arg=n,
        )

    def wait_finished(self) -> Locator:
        """The last answer, once stored as finished (the page re-read it from the API)."""
        done = self.page.locator("article.msg.assistant[data-status=finished]").last
        expect(self.last_answer).to_have_attribute("data-status", "finished", timeout=30_000)
        return done

    def request_id(self) -> str:
        rid = self.last_answer.get_attribute("data-request-id")
        assert rid
        return rid

    def conversation_id(self) -> str:
        return str(self.page.evaluate("new URLSearchParams(location.hash.slice(1)).get('c')"))

    def sidebar_titles(self) -> list[str]:
        return self.page.locator("nav .conv .open").all_inner_texts()

    def screenshot(self, name: str) -> None:
        if self.shots is not None:
            self.page.screenshot(path=str(self.shots / f"{name}.png"))
        if self.readme is not None:
            self.readme.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(self.readme / f"{name}.png"))


def readme_shots() -> Path | None:
    """Where the README's screenshots go when this run should (re)write them."""
    where = os.environ.get("CHATLOG_SCREENSHOTS")
    return Path(where) if where else None


def stored(api: httpx.Client, cid: str, rid: str) -> dict[str, object]:
    """The assistant message of `rid` as the API stores it, once history has its end.

    The page learns an answer's end from the stream, which the hub serves ahead of the
    projection: history may still say `streaming` for a moment, so wait, as a client must."""
    deadline = time.monotonic() + 30
    while True:
        page = api.get(f"/v1/conversations/{cid}/messages").json()
        mine = [m for m in page["data"] if m["request_id"] == rid and m["role"] == "assistant"]
        if mine and mine[0]["status"] not in ("queued", "streaming"):
            return dict(mine[0])
        assert time.monotonic() < deadline, f"history never ended {rid}: {mine}"
        time.sleep(0.1)
