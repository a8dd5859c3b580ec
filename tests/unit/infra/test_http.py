from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from infra.http import NotFound, RateLimited, install_error_handlers


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
