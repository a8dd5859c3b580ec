"""The chat page's tools, in a real browser on the whole system: search with highlighted
(escaped) hits, rename, delete with a confirmation, regenerate and edit with the branch
switcher, the model picker; keyboard and screen-reader use, dark and narrow layouts."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from playwright.sync_api import Browser, expect

from infra.auth import create_key
from infra.clients import pg_connect
from infra.settings import InfraSettings
from tests.browser.chat import ChatPage, readme_shots
from tests.e2e.conftest import SCRIPTED_MODEL

PAGE = 30  # conversations per page the page asks for


def until(check, what: str, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Poll an observable state (a projection, an index) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def accept(client: httpx.Client, n: int) -> httpx.Response | None:
    """Submit `n` prompts, each a new conversation, waiting whenever the user's concurrent
    generations are at their limit; the first other refusal is returned (None: all in)."""
    body = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    done = 0
    while done < n:
        resp = client.post("/v1/chat/completions", json=body)
        if resp.status_code == 202:
            done += 1
        elif resp.json()["error"]["code"] == "too_many_concurrent_generations":
            time.sleep(0.2)  # until one of them finishes
        else:
            return resp
    return None


def test_search_finds_and_opens_a_conversation(chat: ChatPage, keys: dict[str, str]) -> None:
    chat.sign_in(keys["alice"])
    chat.send("a zebra crossing <b>bold</b> here")
    chat.wait_finished()
    cid = chat.conversation_id()
    chat.page.get_by_role("button", name="+ New chat").click()
    expect(chat.page.locator("article.msg")).to_have_count(0)
    box = chat.page.get_by_label("Search messages")
    box.fill("zebra")
    hits = chat.page.locator("section.hits button.hit")

    def found() -> bool:
        box.press("Enter")
        chat.page.wait_for_timeout(300)
        return hits.count() > 0

    until(found, "the search index to hold the message")
    first = hits.first
    expect(first.locator("mark").first).to_have_text("zebra", ignore_case=True)
    expect(first.locator(".snippet")).to_contain_text("<b>bold</b>")  # as text, escaped
    assert first.locator(".snippet b").count() == 0
    chat.screenshot("search")
    first.click()
    expect(chat.page.locator("article.msg.user .text").first).to_have_text(
        "a zebra crossing <b>bold</b> here"
    )
    assert chat.conversation_id() == cid


def test_sidebar_loads_more_as_it_scrolls(
    chat: ChatPage, browser_settings: InfraSettings, origin: str
) -> None:
    with pg_connect(browser_settings) as conn:
        key = create_key(conn, "carol")
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
    with httpx.Client(base_url=origin, headers=headers, timeout=30) as carol:
        assert accept(carol, PAGE + 5) is None
        until(
            lambda: len(carol.get("/v1/conversations?limit=100").json()["data"]) == PAGE + 5,
            "every conversation projected",
        )
    chat.sign_in(key)
    items = chat.page.locator("nav .conv")
    expect(items).to_have_count(PAGE)  # the first page of the cursor API
    items.last.scroll_into_view_if_needed()  # the list's end comes into view: the next page
    expect(items).to_have_count(PAGE + 5)


def test_a_rate_limit_is_said_in_plain_words(
    chat: ChatPage, browser_settings: InfraSettings, origin: str
) -> None:
    with pg_connect(browser_settings) as conn:
        key = create_key(conn, "dave")
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
    with httpx.Client(base_url=origin, headers=headers, timeout=30) as dave:
        refused = accept(dave, 61)  # one over the per-minute limit (60)
    assert refused is not None and refused.json()["error"]["code"] == "rate_limit_exceeded"
    chat.sign_in(key)
    chat.send("one more")
    expect(chat.page.get_by_role("alert")).to_contain_text(
        re.compile(r"Too many requests: please wait and try again in \d+ seconds?\.")
    )
    expect(chat.page.get_by_label("Message", exact=True)).to_have_value("one more")  # kept


def test_rename_and_delete_with_confirmation(
    chat: ChatPage, keys: dict[str, str], api: httpx.Client
) -> None:
    chat.sign_in(keys["alice"])
    chat.send("to be renamed")
    chat.wait_finished()
    cid = chat.conversation_id()
    item = chat.page.locator(f"nav .conv[data-id='{cid}']")
    item.get_by_role("button", name=re.compile("^Rename ")).click()
    title = chat.page.get_by_label("New title")
    title.fill("Renamed in the browser")
    title.press("Enter")
    expect(item.locator(".open")).to_have_text("Renamed in the browser")
    until(
        lambda: api.get(f"/v1/conversations/{cid}").json()["title"] == "Renamed in the browser",
        "the rename to be projected",
    )
    chat.page.reload()
    expect(item.locator(".open")).to_have_text("Renamed in the browser")
    expect(chat.page.get_by_role("heading", level=1)).to_have_text("Renamed in the browser")

    item.get_by_role("button", name=re.compile("^Delete ")).click()
    dialog = chat.page.get_by_role("dialog")
    expect(dialog).to_contain_text("Renamed in the browser")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(item).to_be_visible()
    item.get_by_role("button", name=re.compile("^Delete ")).click()
    dialog.get_by_role("button", name="Delete").click()
    expect(item).to_have_count(0)
    until(lambda: api.get(f"/v1/conversations/{cid}").status_code == 404, "the delete projected")
    chat.page.reload()
    expect(chat.page.get_by_role("navigation", name="Conversations")).to_be_visible()
    expect(item).to_have_count(0)


def test_regenerate_edit_and_switch_branches(chat: ChatPage, keys: dict[str, str]) -> None:
    chat.sign_in(keys["alice"])
    chat.send("branch me")
    chat.wait_finished()
    first = chat.request_id()
    chat.last_answer.get_by_role("button", name="Regenerate answer").click()
    expect(chat.last_answer).not_to_have_attribute("data-request-id", first)
    chat.wait_finished()
    second = chat.request_id()
    versions = chat.last_answer.get_by_role("group", name="Versions")
    expect(versions).to_contain_text("2 / 2")
    versions.get_by_role("button", name="Previous version").click()
    expect(versions).to_contain_text("1 / 2")
    expect(chat.last_answer).to_have_attribute("data-request-id", first)
    chat.page.reload()  # the switch is stored, not only shown
    expect(chat.last_answer).to_have_attribute("data-request-id", first)
    versions.get_by_role("button", name="Next version").click()
    expect(chat.last_answer).to_have_attribute("data-request-id", second)

    before = chat.request_id()
    user = chat.page.locator("article.msg.user").last
    user.get_by_role("button", name="Edit message").click()
    chat.page.get_by_label("Edit message").fill("branch me, edited")
    chat.page.get_by_role("button", name="Save & send").click()
    expect(chat.last_answer).not_to_have_attribute("data-request-id", before)
    answer = chat.wait_finished()
    assert chat.answer_text(answer) == " ".join(["Echo: branch me, edited"] * 3)
    user = chat.page.locator("article.msg.user").last
    expect(user.locator(".text")).to_have_text("branch me, edited")
    expect(user.get_by_role("group", name="Versions")).to_contain_text("2 / 2")
    chat.screenshot("branches")
    user.get_by_role("button", name="Previous version").click()
    expect(chat.page.locator("article.msg.user .text").last).to_have_text("branch me")


def test_model_picker_lists_the_served_models(
    chat: ChatPage, keys: dict[str, str], api: httpx.Client
) -> None:
    served = [m["id"] for m in api.get("/v1/models").json()["data"]]
    chat.sign_in(keys["alice"])
    picker = chat.page.get_by_label("Model")
    expect(picker.locator("option")).to_have_count(len(served))
    assert picker.locator("option").all_inner_texts() == served
    expect(picker).to_have_value(served[0])


def test_keyboard_and_screen_reader_use(chat: ChatPage, keys: dict[str, str]) -> None:
    chat.open()
    key = chat.page.get_by_label("API key")
    expect(key).to_be_focused()
    key.type(keys["alice"])
    key.press("Enter")  # the whole sign-in by keyboard
    expect(chat.page.get_by_role("navigation", name="Conversations")).to_be_visible()
    box = chat.page.get_by_label("Message", exact=True)
    box.focus()
    box.fill(" ".join(f"w{i}" for i in range(120)))
    box.press("Enter")
    writing = chat.page.locator("article.msg.assistant.writing")
    expect(writing).to_have_attribute("aria-live", "polite")
    expect(writing).to_have_attribute("aria-busy", "true")
    chat.wait_finished()
    # every control has a name a screen reader can say
    unnamed = chat.page.evaluate(
        """() => [...document.querySelectorAll('button, input, textarea, select')]
            .filter(e => e.offsetParent !== null)
            .filter(e => !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim()))
            .map(e => e.outerHTML)"""
    )
    assert unnamed == []


def test_dark_and_narrow_layouts(
    browser: Browser, origin: str, keys: dict[str, str], shots: Path
) -> None:
    context = browser.new_context(
        base_url=origin, color_scheme="dark", viewport={"width": 390, "height": 780}
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    chat = ChatPage(page, shots, readme_shots())
    chat.sign_in(keys["alice"])
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(27, 29, 33)"
    nav = page.get_by_role("navigation", name="Conversations")
    assert not nav.evaluate("e => e.getBoundingClientRect().right > 0")  # a closed drawer
    chat.send("hello from a phone")
    chat.wait_finished()
    chat.screenshot("narrow-dark")
    page.get_by_role("button", name="Show conversations").click()
    expect(nav).to_be_in_viewport()
    context.close()
