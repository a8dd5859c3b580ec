"""No input gets a 5xx, and the OpenAPI documents tell the truth (issue #12 item 5).

Both APIs run as their own processes (real sockets, keep-alive) on this module's real Kafka topics,
Postgres database and Meilisearch index; schemathesis reads each one's served
`/openapi.json` and sends what it generates, valid and invalid, with a real key. Checks:
no 5xx, every status and content type documented, every body as its schema says, and no
Postgres or Python error text in any response. Bounded by `MAX_EXAMPLES` per operation.
(Not checked: that invalid input is refused. Both APIs ignore unknown query parameters
on purpose, which schemathesis' negative_data_rejection counts as accepting bad data.)

The command API is called with `Prefer: respond-async`, so an accepted prompt answers 202
at once (no inference runs here: a `stream: true` prompt would wait for tokens).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from infra.auth import create_key
from infra.clients import pg_connect
from infra.settings import InfraSettings
from infra.system import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_EXAMPLES = 40
LEAKS = ("psycopg", "Traceback", "Internal Server Error", 'File "/')


class Served:
    """One API as its own process (`python -m <package>`) on this module's settings.

    Not a thread of this process: the apps' background Kafka consumers (aiokafka shuffles
    its fetches with the global `random`) would change the global random state while
    Hypothesis generates a case, which it reports as a strategy using `random` (a
    deprecation, an error here) and then as a flaky test."""

    def __init__(self, package: str, port_var: str, env: dict[str, str], log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", package],
            env={**os.environ, **env, port_var: str(self.port)},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> str:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"{self.url} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def key(infra_settings: InfraSettings) -> str:
    with pg_connect(infra_settings, autocommit=True) as conn:
        return create_key(conn, "schemathesis")


@pytest.fixture(scope="module")
def query_url(
    infra_settings: InfraSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = {
        **settings_env(infra_settings),
        "CHATLOG_OWNER_WAIT_S": "0.2",
        "CHATLOG_STARTUP_ATTEMPTS": "3",
    }
    log = tmp_path_factory.mktemp("schemathesis") / "query_api.log"
    with Served("query_api", "CHATLOG_QUERY_PORT", env, log) as url:
        yield url


@pytest.fixture(scope="module")
def command_url(
    infra_settings: InfraSettings, query_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = {
        **settings_env(infra_settings),
        "CHATLOG_QUERY_API_URL": query_url,
        "CHATLOG_CONTINUATION_WAIT_S": "0.2",
    }
    log = tmp_path_factory.mktemp("schemathesis") / "command_api.log"
    with Served("command_api", "CHATLOG_COMMAND_PORT", env, log) as url:
        yield url


@pytest.fixture(scope="module")
def query_schema(query_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{query_url}/openapi.json")


@pytest.fixture(scope="module")
def command_schema(command_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{command_url}/openapi.json")


def no_error_text(ctx: Any, response: Any, case: Any) -> bool | None:
    """No response shows a database's or Python's error text (item 19)."""
    text = response.text if isinstance(response.text, str) else ""
    leaked = [word for word in LEAKS if word in text]
    if leaked:
        raise AssertionError(
            f"{case.method} {case.path} answered error text {leaked}: {text[:300]}"
        )
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    no_error_text,
]
SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
    derandomize=True,
    phases=(hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink),
)


def explore(strategy: Any, headers: dict[str, str]) -> tuple[str | None, Counter[int]]:
    """Run the checks over `strategy`'s cases: the first failure (shrunk) as text, or
    None, and the statuses seen."""
    seen: Counter[int] = Counter()

    @SETTINGS
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
        seen[response.status_code] += 1

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        pass  # nothing to make invalid: an operation without parameters or body
    except Exception as exc:  # one operation's failure must not hide another's
        return str(exc), seen
    return None, seen


def failures(schema: Any, mode: GenerationMode, headers: dict[str, str]) -> list[str]:
    """Each operation's first failing case, as text; [] when all hold.

    The schemathesis pytest plugin (`from_fixture(...).parametrize()`) does not run under
    pytest 9 (it sets `Function._nodeid`), so each operation gets its own @given here."""
    found = []
    for result in schema.get_all_operations():
        operation = result.ok()
        failure, _ = explore(operation.as_strategy(generation_mode=mode), headers)
        if failure:
            found.append(f"{operation.label} ({mode.value}): {failure}")
    return found


ODD = ["\x00", "\ud800", "\udfff", "\ufeff", "\u2028", "\U0010ffff"]


def text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Any code points; half the time one that breaks encoders (U+0000, a lone surrogate:
    JSON carries both escaped) spliced in, which random text alone rarely holds."""
    any_text = st.text(st.characters(exclude_categories=()), min_size=1, max_size=max_size)
    spliced = st.tuples(any_text, st.sampled_from(ODD), any_text).map("".join)
    return st.one_of(any_text, spliced)


def prompts(model: str) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies that pass the schema and every documented rule, with arbitrary text: the
    ones that reach the event log (a schema-random body is nearly always a 400)."""
    history = st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant"]), "content": text()}
        ),
        max_size=3,
    )
    last = st.fixed_dictionaries({"role": st.just("user"), "content": text()}).filter(
        lambda m: m["content"].strip()
    )
    return st.fixed_dictionaries(
        {
            "model": st.just(model),
            "messages": st.tuples(history, last).map(lambda t: [*t[0], t[1]]),
        },
        optional={
            "stop": st.one_of(text(20), st.lists(text(20), min_size=1, max_size=4)),
            "user": text(),
            "max_tokens": st.integers(1, 16),
            "seed": st.integers(-(2**63), 2**63 - 1),
            "stream": st.booleans(),
        },
    )


def with_body(pair: tuple[Any, dict[str, Any]]) -> Any:
    case, body = pair
    case.body = body
    return case


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_command_api(command_schema: Any, key: str, mode: GenerationMode) -> None:
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
    found = failures(command_schema, mode, headers)
    assert not found, "\n\n".join(found)


def test_command_api_accepts_any_text(
    command_schema: Any, key: str, infra_settings: InfraSettings
) -> None:
    accept = command_schema["/v1/chat/completions"]["POST"]
    bodies = prompts(infra_settings.model_ids[0])
    strategy = st.tuples(accept.as_strategy(), bodies).map(with_body)
    failure, seen = explore(strategy, {"Authorization": f"Bearer {key}", "Prefer": "respond-async"})
    assert failure is None, failure
    assert seen[202] > 0, seen  # the accept path itself ran, not only its validation


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_query_api(query_schema: Any, key: str, mode: GenerationMode) -> None:
    found = failures(query_schema, mode, {"Authorization": f"Bearer {key}"})
    assert not found, "\n\n".join(found)
