"""The chat page's core, in a real browser on the whole system: sign in and out, send and
stream, the sidebar, stop, reload mid-answer, the query API killed mid-answer, a message
that looks like HTML, two users."""

from __future__ import annotations

import os
import signal

import httpx
from playwright.sync_api import Browser, Dialog, expect

from infra.local.procs import read_pid
from infra.system import System, component
from tests.browser.chat import ChatPage, stored

# A long prompt: its answer (the prompt echoed, cut at the default 512 tokens, one byte
# each) takes seconds to write.
LONG = " ".join(f"word{i}" for i in range(150))
MAX_TOKENS = 512


def expected(prompt: str) -> str:
    """The scripted engine's answer to `prompt`."""
    return " ".join([f"Echo: {prompt}"] * 3)[:MAX_TOKENS]


def test_page_is_served_by_the_gateway(origin: str) -> None:
    resp = httpx.get(f"{origin}/", headers={"Accept-Encoding": "gzip"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    js = httpx.get(f"{origin}/app.js", headers={"Accept-Encoding": "gzip"})
    assert js.status_code == 200 and js.headers["content-encoding"] == "gzip"
    assert js.headers["content-type"].startswith("application/javascript")
    # the whole page, compressed as it travels, within the 150 KB
    wire = [
        httpx.get(f"{origin}/{f}", headers={"Accept-Encoding": "gzip"}).num_bytes_downloaded
        for f in ("", "app.js", "style.css", "favicon.svg")
    ]
    assert sum(wire) < 150_000
    # anything else is still the API's JSON 404
    missing = httpx.get(f"{origin}/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_sign_in_send_stream_and_sign_out(
    chat: ChatPage, keys: dict[str, str], api: httpx.Client
) -> None:
    chat.open()
    expect(chat.page.get_by_label("API key")).to_be_visible()
    chat.page.get_by_label("API key").fill("sk-not-a-key")
    chat.page.get_by_role("button", name="Sign in").click()
    expect(chat.page.get_by_role("alert")).to_have_text("That API key is not valid.")

    chat.sign_in(keys["alice"])
    chat.send("Hello there, page")
    expect(chat.page.locator("article.msg.user .text").last).to_have_text("Hello there, page")
    answer = chat.wait_finished()
    cid, rid = chat.conversation_id(), chat.request_id()
    msg = stored(api, cid, rid)
    assert chat.answer_text(answer) == msg["content"] == expected("Hello there, page")
    # the sidebar lists it, newest first, and a reload keeps the conversation open
    expect(chat.page.locator("nav .conv").first).to_have_attribute("data-id", cid)
    chat.screenshot("chat")
    chat.page.reload()
    expect(chat.last_answer.locator(".md")).to_have_text(expected("Hello there, page"))

    chat.page.get_by_role("button", name="Sign out").click()
    expect(chat.page.get_by_label("API key")).to_be_visible()
    chat.page.reload()
    expect(chat.page.get_by_label("API key")).to_be_visible()  # the session is gone


def test_enter_sends_shift_enter_adds_a_line(chat: ChatPage, keys: dict[str, str]) -> None:
    chat.sign_in(keys["alice"])
    box = chat.page.get_by_label("Message", exact=True)
    box.fill("first line")
    box.press("Shift+Enter")
    box.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    box.press("Enter")
    expect(chat.page.locator("article.msg.user .text").last).to_have_text("first line\nsecond line")
    expect(box).to_have_value("")
    chat.wait_finished()


def test_reload_mid_answer_continues_exactly_once(
    chat: ChatPage, keys: dict[str, str], api: httpx.Client
) -> None:
    chat.sign_in(keys["alice"])
    chat.send(LONG)
    chat.wait_chars(200)
    rid = chat.request_id()
    chat.page.reload()
    answer = chat.wait_finished()
    assert chat.request_id() == rid
    text = chat.answer_text(answer)
    assert text == stored(api, chat.conversation_id(), rid)["content"] == expected(LONG)


def test_stop_ends_the_answer_where_it_is(
    chat: ChatPage, keys: dict[str, str], api: httpx.Client
) -> None:
    chat.sign_in(keys["alice"])
    chat.send(LONG)
    chat.wait_chars(100)
    chat.page.get_by_role("button", name="Stop answering").click()
    answer = chat.page.locator("article.msg.assistant[data-status=cancelled]")
    expect(answer).to_be_visible(timeout=30_000)
    expect(answer.get_by_role("status")).to_have_text("Stopped.")
    msg = stored(api, chat.conversation_id(), chat.request_id())
    assert msg["status"] == "cancelled"
    shown = chat.answer_text(answer)
    # cut anywhere: a stored trailing space (the chunk "word16 ") is not shown by the page
    assert shown == str(msg["content"]).rstrip() and 100 <= len(shown) < len(expected(LONG))
    expect(chat.page.get_by_role("button", name="Send")).to_be_visible()


def test_query_api_killed_mid_answer_the_page_recovers(
    chat: ChatPage, keys: dict[str, str], api: httpx.Client, system: System
) -> None:
    chat.sign_in(keys["alice"])
    chat.send(LONG)
    chat.wait_chars(100)
    rid = chat.request_id()
    query_api = component("query_api")
    pid = read_pid(system.pidfile(query_api))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    state = chat.last_answer.get_by_role("status")
    expect(state).to_have_text("Reconnecting…")
    chat.screenshot("reconnecting")
    system.stop(query_api)  # reaps it and its pid file
    system.start(query_api)
    answer = chat.wait_finished()
    assert chat.request_id() == rid
    assert chat.answer_text(answer) == stored(api, chat.conversation_id(), rid)["content"]
    assert chat.answer_text(answer) == expected(LONG)


def test_a_message_that_looks_like_html_shows_as_text(chat: ChatPage, keys: dict[str, str]) -> None:
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    chat.page.on("dialog", on_dialog)
    chat.sign_in(keys["alice"])
    evil = "<img src=x onerror=alert(1)>"
    chat.send(evil)
    answer = chat.wait_finished()
    expect(chat.page.locator("article.msg.user .text").last).to_have_text(evil)
    assert chat.answer_text(answer) == expected(evil)
    assert chat.page.locator("section.messages img").count() == 0
    chat.page.reload()  # and from the stored history, too
    expect(chat.last_answer.locator(".md")).to_have_text(expected(evil))
    assert chat.page.locator("section.messages img").count() == 0
    assert dialogs == []


def test_two_users_never_see_each_other(
    browser: Browser, origin: str, keys: dict[str, str]
) -> None:
    pages = {}
    for user in ("alice", "bob"):
        context = browser.new_context(base_url=origin)
        page = context.new_page()
        page.set_default_timeout(20_000)
        pages[user] = ChatPage(page)
        pages[user].sign_in(keys[user])
    alice, bob = pages["alice"], pages["bob"]
    alice.send("alice's secret plan")
    alice.wait_finished()
    alice_cid = alice.conversation_id()
    bob.send("bob's own question")
    bob.wait_finished()
    bob.page.reload()
    expect(bob.page.locator("nav .conv").first).to_be_visible()
    assert not any("alice" in t for t in bob.sidebar_titles())
    assert alice_cid not in bob.page.locator("nav .conv").evaluate_all(
        "els => els.map(e => e.dataset.id)"
    )
    # opening alice's conversation by its address shows bob nothing of it
    bob.page.goto(f"/#c={alice_cid}")
    bob.page.reload()
    expect(bob.page.get_by_role("alert")).to_be_visible()
    expect(bob.page.locator("section.messages")).not_to_contain_text("secret")
    for p in pages.values():
        p.page.context.close()
