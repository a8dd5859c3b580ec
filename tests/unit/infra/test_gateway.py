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
