import socket
import threading
import time

import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from infra.http import NotFound, RateLimited, has_nul, install_error_handlers, unstorable


class Body(BaseModel):
    n: int


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/missing")
    def missing() -> None:
        raise NotFound("No such conversation.", param="id")

    @app.get("/limited")
    def limited() -> None:
        raise RateLimited("Slow down.", headers={"Retry-After": "3"})

    @app.post("/body")
    def body(b: Body) -> int:
        return b.n

    return app


def test_errors_have_the_openai_shape() -> None:
    client = TestClient(make_app())
    r = client.get("/missing")
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "No such conversation.",
            "type": "invalid_request_error",
            "param": "id",
            "code": "not_found",
        }
    }
    r = client.get("/limited")
    assert (r.status_code, r.headers["retry-after"]) == (429, "3")
    assert r.json()["error"]["type"] == "rate_limit_error"
    r = client.post("/body", json={"n": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert client.get("/nope").json()["error"]["code"] == "not_found"


def failing_app() -> FastAPI:
    """An app whose routes fail the ways a bug or Postgres does, with secrets in the text."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/bug")
    def bug() -> None:
        raise RuntimeError("secret-internal-detail at /srv/app.py")

    @app.get("/db-down")
    def db_down() -> None:
        raise psycopg.OperationalError('connection to "10.0.0.7" failed: password secret')

    @app.get("/db-error")
    def db_error() -> None:
        raise psycopg.errors.UndefinedTable('relation "chatlog.secret_table" does not exist')

    @app.get("/db-value")
    def db_value() -> None:
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")

    return app


@pytest.mark.parametrize(
    ("path", "status"), [("/bug", 500), ("/db-down", 503), ("/db-error", 500), ("/db-value", 400)]
)
def test_unexpected_and_database_errors_say_nothing_but_a_request_id(
    path: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = TestClient(failing_app(), raise_server_exceptions=False)
    r = client.get(path)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    rid = r.headers["x-request-id"]
    assert len(rid) >= 16 and rid in error["message"]
    for leak in ("secret", "10.0.0.7", "NUL", "app.py", "RuntimeError"):
        assert leak not in r.text
    # the detail is in the log, under the same id
    logged = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert logged


def test_a_sane_caller_request_id_is_kept_and_an_odd_one_replaced() -> None:
    client = TestClient(failing_app(), raise_server_exceptions=False)
    r = client.get("/bug", headers={"X-Request-ID": "trace-42.a:b"})
    assert r.headers["x-request-id"] == "trace-42.a:b" and "trace-42.a:b" in r.text
    r = client.get("/bug", headers={"X-Request-ID": "<script>" + "x" * 200})
    assert "<script>" not in r.text and r.headers["x-request-id"] != "<script>"


def test_unstorable_text() -> None:
    assert unstorable("a\x00b") and unstorable("lone \ud800") and has_nul("ok", "\x00")
    assert not unstorable("héllo ✓ 😀") and not has_nul("ok")


def test_an_unexpected_error_keeps_the_connection() -> None:
    """Under uvicorn, a request that raised used to get a plain-text 500 and a closed
    connection; now the same socket answers the next request too."""
    server = uvicorn.Server(uvicorn.Config(failing_app(), port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for _ in range(2):
                sock.sendall(b"GET /bug HTTP/1.1\r\nHost: t\r\n\r\n")
                head, body = _read_response(sock)
                assert head.startswith(b"HTTP/1.1 500") and b'"server_error"' in body
    finally:
        server.should_exit = True
        thread.join(10)


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[
            1
        ]
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return head, body
