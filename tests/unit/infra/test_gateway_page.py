"""The gateway publishes the chat page: a copy of the build in its own directory (so the
rendered config names it relatively, as the official image needs), or nothing without one."""

from __future__ import annotations

from pathlib import Path

from infra import gateway


def test_the_build_is_copied_and_replaces_an_old_copy(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html><title>chatlog</title>")
    (dist / "app.js").write_text("console.log(1)")
    target = tmp_path / "gw" / "web"
    target.mkdir(parents=True)
    (target / "stale.js").write_text("old")
    gateway.publish_page(target, dist)
    assert sorted(p.name for p in target.iterdir()) == ["app.js", "index.html"]


def test_without_a_build_nothing_is_published(tmp_path: Path) -> None:
    target = tmp_path / "web"
    target.mkdir()
    (target / "index.html").write_text("stale")
    gateway.publish_page(target, tmp_path / "missing")
    assert not target.exists()  # `/` answers the JSON 404, the API is unaffected


def test_the_page_locations_are_rendered() -> None:
    cfg = gateway.GatewayConfig(
        port=18080, command_ports=[18000], query_ports=[18001], max_body_bytes=1024
    )
    text = gateway.render(cfg)
    assert "location = / {" in text and "include static.conf;" in text
