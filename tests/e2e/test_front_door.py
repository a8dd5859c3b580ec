"""The front door (issue #13): the whole API through one nginx, two instances of each API.

One system for the module: scripted engine, 2 command API and 2 query API instances behind
the gateway. Everything a client does goes to `system.base_url` only; the instances are
addressed directly just to show that Postgres-held limits and idempotency span them.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.auth import apply_auth_ddl, create_key
from infra.clients import pg_connect
from infra.local.procs import read_pid
from infra.settings import InfraSettings
from infra.system import System
from tests.e2e.conftest import SCRIPTED_MODEL, running_system
from tests.e2e.sse import eventually, read_until_end, text_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GATEWAY_MAX_BODY = 2 * 1024 * 1024  # the command API's own limit is 1 MiB


@pytest.fixture(scope="module")
def system(
    infra_settings: InfraSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    settings = infra_settings.model_copy(
        update={
            "command_instances": 2,
            "query_instances": 2,
            "gateway_max_body_bytes": GATEWAY_MAX_BODY,
        }
    )
    # No concurrency cap: the burst below is about the per-minute limit alone.
    env = {"CHATLOG_MAX_CONCURRENT_GENERATIONS": "0"}
    with running_system(settings, tmp_path_factory.mktemp("front"), env) as sys_:
        yield sys_


def new_key(settings: InfraSettings) -> str:
    with pg_connect(settings) as conn:
        apply_auth_ddl(conn)
        return create_key(conn, f"gw-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def key(infra_settings: InfraSettings) -> str:
    return new_key(infra_settings)


@pytest.fixture(scope="module")
def client(system: System, key: str) -> Iterator[httpx.Client]:
    """A client of the gateway's origin (so the relative `stream_url`s resolve)."""
    origin = system.base_url.removesuffix("/v1")
    with httpx.Client(base_url=origin, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def prompt(content: str) -> dict[str, Any]:
    return {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": content}]}


def echo(text: str) -> str:
    return " ".join([f"Echo: {text}"] * 3)


def streamed_content(body: str) -> str:
    """The content an OpenAI SSE body (`chat.completion.chunk`s) carries, joined."""
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in body.splitlines()
        if line.startswith("data: {")
    ]
    return "".join((c["choices"] or [{}])[0].get("delta", {}).get("content") or "" for c in chunks)


def assert_error_shape(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["code"] == code
    return error


def test_the_openai_sdk_works_from_the_one_url(system: System, key: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=system.base_url, api_key=key, max_retries=0)
    assert [m.id for m in client.models.list()] == [SCRIPTED_MODEL]
    assert client.models.retrieve(SCRIPTED_MODEL).id == SCRIPTED_MODEL
    parts = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=SCRIPTED_MODEL, stream=True, messages=[{"role": "user", "content": "door"}]
        )
        if chunk.choices
    ]
    assert "".join(parts) == echo("door")
    completion = client.chat.completions.create(
        model=SCRIPTED_MODEL, messages=[{"role": "user", "content": "front"}]
    )
    assert completion.choices[0].message.content == echo("front")


def test_reads_and_writes_route_to_their_service(client: httpx.Client) -> None:
    resp = client.post(
        "/v1/chat/completions", json=prompt("routed"), headers={"Prefer": "respond-async"}
    )
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    assert resp.headers["x-request-id"] == accepted["id"]  # the service's own, passed once
    # The relative stream_url of a 202 answers on the same origin, as SSE, unbuffered.
    evs = read_until_end(client, accepted["stream_url"])
    assert evs[-1].event == "done"
    conv = accepted["conversation_id"]
    # A read that is a POST goes to the query API; a PATCH to the command API.
    search = client.post("/v1/conversations/search", json={"query": "routed", "limit": 5})
    assert search.status_code == 200, search.text
    assert client.get(f"/v1/conversations/{conv}").status_code == 200
    renamed = client.patch(f"/v1/conversations/{conv}", json={"title": "through the door"})
    assert renamed.status_code == 200, renamed.text
    assert client.get(f"/v1/chat/completions/{accepted['id']}").status_code == 200


def test_the_gateway_passes_or_sets_a_request_id(client: httpx.Client) -> None:
    given = client.get("/v1/models", headers={"X-Request-ID": "front-door-check-1"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "front-door-check-1"
    fresh = client.get("/v1/models")
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    insane = client.get("/v1/models", headers={"X-Request-ID": "a b<script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", insane.headers["x-request-id"])


def test_errors_of_the_gateway_itself_are_openai_shaped(client: httpx.Client) -> None:
    assert_error_shape(client.get("/not-the-api"), 404, "not_found")
    api_limit = client.post(
        "/v1/chat/completions",
        content=b"x" * (GATEWAY_MAX_BODY // 2 + 1024),
        headers={"Content-Type": "application/json"},
    )
    assert_error_shape(api_limit, 413, "payload_too_large")  # the command API's own
    gateway_limit = client.post(
        "/v1/chat/completions",
        content=b"x" * (GATEWAY_MAX_BODY + 1024),
        headers={"Content-Type": "application/json"},
    )
    error = assert_error_shape(gateway_limit, 413, "payload_too_large")
    assert "<html" not in gateway_limit.text and error["type"] == "invalid_request_error"


def upstreams_of(system: System, request_line: str) -> set[str]:
    log = system.logfile("gateway").read_text()
    return set(re.findall(rf'"{re.escape(request_line)} HTTP/1\.1" \d+ .* up=(\S+) ', log))


def test_a_burst_across_two_command_instances_holds_the_rate_limit(
    system: System, infra_settings: InfraSettings
) -> None:
    key = new_key(infra_settings)
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
    with httpx.Client(base_url=system.base_url, timeout=60, headers=headers) as c:

        def send(i: int) -> int:
            return c.post("/chat/completions", json=prompt(f"burst {i}")).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(send, range(75)))
    assert set(statuses) <= {202, 429}, statuses
    assert statuses.count(202) == 60
    command_ports = {f"127.0.0.1:{p}" for p in system.instance_ports("command_api")}
    assert len(command_ports) == 2
    assert upstreams_of(system, "POST /v1/chat/completions") >= command_ports


def test_one_idempotency_key_sent_to_both_instances_is_one_request(
    system: System, key: str
) -> None:
    idem = f"gw-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async", "Idempotency-Key": idem}
    body = prompt(f"once {idem}")
    urls = [f"http://127.0.0.1:{p}" for p in system.instance_ports("command_api")]

    def send(url: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        racing = list(pool.map(send, urls))
    later = [send(url) for url in urls]
    assert all(r.status_code in (202, 409) for r in racing), [r.text for r in racing]
    assert all(r.status_code == 202 for r in later), [r.text for r in later]
    ids = {r.json()["id"] for r in racing + later if r.status_code == 202}
    assert len(ids) == 1


def query_metric(system: System, name: str, ports: list[int] | None = None) -> list[float]:
    """`name` of each query instance (or those on `ports`), in the gateway's order (each
    one's own /metrics)."""
    values = []
    for port in system.instance_ports("query_api") if ports is None else ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        assert found, text
        values.append(float(found.group(1)))
    return values


def open_subscribers(system: System) -> float:
    """Open SSE subscribers over every query instance."""
    return sum(query_metric(system, "chatlog_query_subscribers"))


def test_each_read_is_served_by_the_query_instance_whose_hub_reads_its_partition(
    system: System, client: httpx.Client
) -> None:
    """Each instance's hub reads half of chat.completions; a stream or a status read that
    the gateway balanced to the other instance is handed to the owner by nginx itself."""
    accepted = [
        client.post(
            "/v1/chat/completions", json=prompt(f"share {i}"), headers={"Prefer": "respond-async"}
        ).json()
        for i in range(6)
    ]
    before = sum(query_metric(system, "chatlog_query_owner_redirects_total"))
    for i, a in enumerate(accepted):
        # round robin: of two opens in a row, one lands on the instance that is not the owner
        for _ in range(2):
            evs = read_until_end(client, a["stream_url"])
            assert evs[-1].event == "done" and text_of(evs) == echo(f"share {i}")
        status = client.get(f"/v1/chat/completions/{a['id']}").json()
        assert status["status"] == "finished" and status["text"] == echo(f"share {i}")
    assert sum(query_metric(system, "chatlog_query_owner_redirects_total")) > before
    # nobody adopted a partition: every read that landed elsewhere reached its owner
    half = system.settings.partitions / 2
    assert query_metric(system, "chatlog_query_hub_partitions") == [half, half]


def test_a_client_that_goes_away_closes_the_upstream_stream(
    system: System, client: httpx.Client
) -> None:
    accepted = client.post(
        "/v1/chat/completions", json=prompt("long " * 150), headers={"Prefer": "respond-async"}
    ).json()
    with client.stream("GET", accepted["stream_url"]) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()  # held: a dropped iterator closes the connection at once
        assert any(line.startswith("event: chunk") for line in lines)
        assert open_subscribers(system) == 1
    eventually(lambda: open_subscribers(system) == 0)
    # ... and, as without the gateway, the generation itself goes on to its end.
    status = f"/v1/chat/completions/{accepted['id']}"
    eventually(lambda: client.get(status).json()["status"] == "finished")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (no CA involved)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def gateway_with(system: System, **update: Any) -> Iterator[None]:
    """The gateway restarted on settings with `update`, then back as it was."""
    gateway, plain = system.service("gateway"), system.settings
    system.stop(gateway)
    system.settings = plain.model_copy(update=update)
    try:
        system.start(gateway)
        yield
    finally:
        system.stop(gateway)
        system.settings = plain
        system.start(gateway)


def test_a_browser_signs_in_streams_with_the_cookie_and_signs_out(system: System, key: str) -> None:
    origin = system.base_url.removesuffix("/v1")
    with httpx.Client(base_url=origin, timeout=60) as browser:
        signed_in = browser.post("/v1/sessions", json={"api_key": key})
        assert signed_in.status_code == 200, signed_in.text
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        session = browser.cookies["chatlog_session"]
        # Reads need nothing but the cookie: an EventSource on a stream works.
        assert browser.get("/v1/models").status_code == 200
        accepted = browser.post(
            "/v1/chat/completions",
            json=prompt("cookie"),
            headers={"Prefer": "respond-async", "Origin": origin},
        )
        assert accepted.status_code == 202, accepted.text
        assert read_until_end(browser, accepted.json()["stream_url"])[-1].event == "done"
        # A cookie-only write from another site (a form post) or without Origin: refused.
        forged = browser.post(
            "/v1/chat/completions",
            content=b"model=x",
            headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
        )
        assert_error_shape(forged, 403, "origin_mismatch")
        no_origin = browser.post("/v1/chat/completions", json=prompt("x"))
        assert_error_shape(no_origin, 403, "origin_mismatch")
        # CORS is off by default: no other origin may read answers.
        cross = browser.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in cross.headers
        signed_out = browser.delete("/v1/sessions", headers={"Origin": origin})
        assert signed_out.status_code == 200, signed_out.text
    # The ended session stops working (within the auth caches' 5 s).
    dead = {"Cookie": f"chatlog_session={session}"}
    eventually(lambda: httpx.get(f"{system.base_url}/models", headers=dead).status_code == 401)
    # A session is no API key: it cannot mint another session.
    again = httpx.post(f"{origin}/v1/sessions", json={"api_key": session})
    assert_error_shape(again, 401, "invalid_api_key")


def test_cors_allows_the_named_origins_preflight_included(system: System, key: str) -> None:
    app = "http://app.example:3000"
    with gateway_with(system, cors_origins=app):
        preflight = httpx.options(
            f"{system.base_url}/chat/completions",
            headers={"Origin": app, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == app
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        auth = {"Origin": app, "Authorization": f"Bearer {key}"}
        read = httpx.get(f"{system.base_url}/models", headers=auth)
        assert read.headers["access-control-allow-origin"] == app
        assert read.headers["access-control-allow-credentials"] == "true"
        other = httpx.get(f"{system.base_url}/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_tls_when_a_certificate_and_key_are_set(system: System, key: str, tmp_path: Path) -> None:
    cert, private = self_signed(tmp_path)
    with gateway_with(system, tls_cert=cert, tls_key=private):
        assert system.base_url.startswith("https://")
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(verify=str(cert), headers=headers, timeout=30) as tls:
            assert tls.get(f"{system.base_url}/models").status_code == 200
            # Under TLS the session cookie is Secure too.
            signed_in = tls.post(f"{system.base_url}/sessions", json={"api_key": key})
            assert "Secure" in signed_in.headers["set-cookie"]
        # Plain HTTP to the TLS port: a JSON 400, not nginx's page.
        plain_http = system.base_url.replace("https://", "http://")
        assert_error_shape(httpx.get(f"{plain_http}/models", headers=headers), 400, "tls_required")


def test_under_tls_stream_true_is_relayed_through_the_balanced_upstream(
    system: System, key: str, tmp_path: Path
) -> None:
    cert, private = self_signed(tmp_path)
    first = system.service("query_api")
    with gateway_with(system, tls_cert=cert, tls_key=private):
        system.stop(first)  # the relay must not be tied to the first query instance
        try:
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(verify=str(cert), headers=headers, timeout=60) as tls:
                for i in range(2):  # the gateway balances: each command instance relays one
                    streamed = tls.post(
                        f"{system.base_url}/chat/completions",
                        json={**prompt(f"tls relay {i}"), "stream": True},
                    )
                    assert streamed.status_code == 200, streamed.text
                    assert streamed.text.rstrip().endswith("data: [DONE]")
                    assert streamed_content(streamed.text) == echo(f"tls relay {i}")
        finally:
            system.start(first)


def test_a_dead_query_instance_is_routed_around_then_none_is_a_json_502(
    system: System, client: httpx.Client
) -> None:
    accepted = client.post(
        "/v1/chat/completions", json=prompt("survive"), headers={"Prefer": "respond-async"}
    ).json()
    read_until_end(client, accepted["stream_url"])
    second = system.service("query_api-2")
    pid = read_pid(system.pidfile(second))
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    for _ in range(10):
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v1/conversations").status_code == 200
        assert read_until_end(client, accepted["stream_url"])[-1].event == "done"
    # New prompts of the dead instance's share (half of them): its backup adopts their
    # partitions and streams them whole.
    survivor = system.instance_ports("query_api")[:1]
    for i in range(12):
        late = client.post(
            "/v1/chat/completions", json=prompt(f"adopt {i}"), headers={"Prefer": "respond-async"}
        ).json()
        evs = read_until_end(client, late["stream_url"])
        assert evs[-1].event == "done" and text_of(evs) == echo(f"adopt {i}")
        read = query_metric(system, "chatlog_query_hub_partitions", survivor)
        if read[0] > system.settings.partitions / 2:
            break
    else:
        pytest.fail("no prompt of the dead instance's share came in 12")
    # The command API relays `stream: true` through the gateway too, so that survives it.
    streamed = client.post("/v1/chat/completions", json={**prompt("still"), "stream": True})
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    system.stop(system.service("query_api"))
    down = client.get("/v1/models")
    assert_error_shape(down, 502, "upstream_unavailable")
    assert down.headers["retry-after"] == "1" and down.headers["x-request-id"]


def test_the_rendered_config_lives_under_the_run_dir(system: System) -> None:
    conf = Path(system.gateway_dir / "nginx.conf").read_text()
    # Relative paths only, so the official image runs the same file from its mount.
    assert "pid nginx.pid;" in conf and str(system.gateway_dir) not in conf
