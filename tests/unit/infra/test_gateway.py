"""The gateway's rendered nginx config: valid for nginx, and refusing bad settings early."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infra import gateway
from infra.local.procs import ServiceError
from infra.settings import InfraSettings
from infra.system import System


def config(**kw: object) -> gateway.GatewayConfig:
    base: dict[str, object] = {
        "port": 18080,
        "command_ports": [18000, 18002],
        "query_ports": [18001],
        "max_body_bytes": 1024,
    }
    return gateway.GatewayConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_the_rendered_config_passes_nginx_t_with_every_instance(tmp_path: Path) -> None:
    argv = gateway.prepare(config(cors_origins=["https://app.example"]), tmp_path)
    text = (tmp_path / "nginx.conf").read_text()
    assert "server 127.0.0.1:18000 " in text and "server 127.0.0.1:18002 " in text
    assert '"https://app.example" $http_origin;' in text
    assert "@" not in text.replace("$", "")  # every placeholder filled
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_each_query_instance_has_an_internal_owner_location_with_the_others_as_backups(
    tmp_path: Path,
) -> None:
    argv = gateway.prepare(config(query_ports=[18001, 18003], relay_port=18090), tmp_path)
    text = (tmp_path / "nginx.conf").read_text()
    assert "upstream chatlog_query_1 {\n        server 127.0.0.1:18003 max_fails" in text
    assert "server 127.0.0.1:18001 backup;" in text and "server 127.0.0.1:18003 backup;" in text
    # in the front door and in the relay listener the command API streams through
    assert text.count("location /_chatlog/query/1/ {\n            internal;") == 2
    assert text.count("proxy_set_header X-Chatlog-Route $chatlog_route;") == 2
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    # one instance reads every partition: nothing to route
    gateway.prepare(config(), tmp_path)
    assert "chatlog_query_0" not in (tmp_path / "nginx.conf").read_text()


def test_an_origin_that_is_not_an_origin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="CORS_ORIGINS"):
        gateway.render(config(cors_origins=['https://x" $y; include /etc/passwd; "']))


def test_tls_needs_both_certificate_and_key(tmp_path: Path) -> None:
    settings = InfraSettings(tls_cert=tmp_path / "cert.pem")
    with pytest.raises(ServiceError, match="CHATLOG_TLS_KEY"):
        gateway.config_from(settings, 8080, [8000], [8001])
    assert gateway.config_from(InfraSettings(), 8080, [8000], [8001]).base_url == (
        "http://127.0.0.1:8080/v1"
    )


def test_down_and_status_see_the_instances_an_earlier_up_started(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "command_api-3.pid").write_text("1")
    names = [c.name for c in System(InfraSettings(), run_dir=tmp_path).services()]
    assert names[-4:] == ["command_api", "command_api-2", "command_api-3", "gateway"]
    scaled = System(InfraSettings(query_instances=2), run_dir=tmp_path / "other")
    assert "query_api-2" in [c.name for c in scaled.services()]


def test_under_tls_the_stream_relay_goes_through_the_balanced_upstream(tmp_path: Path) -> None:
    settings = InfraSettings(
        query_instances=2, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"
    )
    system = System(settings, query_port=18001, gateway_port=18080, run_dir=tmp_path)
    relay = system.relay_port
    assert relay is not None and system.relay_url == f"http://127.0.0.1:{relay}"
    assert system.relay_url != system.query_url
    # The loopback listener it names balances the query instances, in plain HTTP.
    cfg = config(query_ports=[18001, 18003], relay_port=relay)
    server = gateway.render(cfg).split(f"listen 127.0.0.1:{relay};", 1)[1]
    assert "proxy_pass http://query_api;" in server and "ssl" not in server.split("}")[0]
    # One instance: the relay reads it directly (one hop fewer), and nothing is rendered.
    single = System(InfraSettings(), query_port=18001, run_dir=tmp_path / "one")
    assert single.relay_url == "http://127.0.0.1:18001" and single.relay_port is None


def test_the_tls_config_runs_from_a_copy_of_its_directory(tmp_path: Path) -> None:
    """The official image sees only the mounted gateway directory: certificate and key
    must be in it, named relatively, like every other path."""
    from tests.e2e.test_front_door import self_signed

    (tmp_path / "certs").mkdir()
    cert, key = self_signed(tmp_path / "certs")
    rendered = tmp_path / "rendered"
    gateway.prepare(config(tls_cert=cert, tls_key=key, relay_port=18090), rendered)
    assert ((rendered / gateway.TLS_KEY).stat().st_mode & 0o777) == 0o600
    mounted = tmp_path / "mounted"
    rendered.rename(mounted)
    (tmp_path / "certs").rename(tmp_path / "gone")  # only the mount's copy is left
    text = (mounted / "nginx.conf").read_text()
    assert str(tmp_path) not in text
    argv = [gateway.nginx_binary(), "-e", "stderr", "-p", f"{mounted}/", "-c", "nginx.conf"]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
