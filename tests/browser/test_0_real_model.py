"""The chat page with the real model (SmolLM2-135M-Instruct on the CPU): one conversation,
streamed and stored alike. Its own system (the real engine), so it is slow; named to run
first, so that system is down before the package's scripted one starts (never both)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from infra.auth import apply_auth_ddl, create_key
from infra.clients import pg_connect
from infra.settings import InfraSettings
from tests.browser.chat import ChatPage, readme_shots, stored
from tests.e2e.conftest import running_system

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def real(
    infra_settings: InfraSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(origin, API key) of a system whose inference runs the real model."""
    pytest.importorskip("torch")
    from inference.model_files import ModelNotFound, default_gguf

    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    env = {"CHATLOG_ENGINE": "transformers", "CHATLOG_MODELS": MODEL, "CHATLOG_DEVICE": "cpu"}
    with running_system(infra_settings, tmp_path_factory.mktemp("real"), env) as system:
        with pg_connect(infra_settings) as conn:
            apply_auth_ddl(conn)
            key = create_key(conn, "alice")
        yield system.base_url.removesuffix("/v1"), key


def test_the_real_model_answers_in_the_page(browser: Browser, real: tuple[str, str]) -> None:
    origin, key = real
    context = browser.new_context(base_url=origin, viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    chat = ChatPage(page, None, readme_shots())
    chat.sign_in(key)
    expect(page.get_by_label("Model")).to_have_value(MODEL)
    chat.send("What is the capital of France? Answer in one sentence.")
    expect(chat.last_answer).to_have_attribute("data-status", "finished", timeout=180_000)
    shown = chat.answer_text()
    cid, rid = chat.conversation_id(), chat.request_id()
    with httpx.Client(
        base_url=origin, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as api:
        msg = stored(api, cid, rid)
    # markdown may format the model's text (emphasis, code): its words are what is shown
    assert shown.strip() and shown.split() == re.sub(r"[*_`#]", "", str(msg["content"])).split()
    chat.screenshot("real-model")
    context.close()
