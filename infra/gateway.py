"""The front door: one nginx in front of every API instance, so clients need one base URL.

nginx (Debian's package, or the official image in docker-compose) routes writes to the
command API and reads to the query API, balances several instances of each, keeps SSE
unbuffered and answers its own errors in the OpenAI shape. Its config is rendered here from
the settings and the instances' ports into `<dir>/nginx.conf`; every path in it is relative
to `<dir>` (`nginx -p <dir>`), so the same rendered file serves the official image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from infra.local.procs import ServiceError
from infra.settings import InfraSettings

TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
HEALTH_PATH = "/gateway/healthz"
# Where a query instance redirects a read to its owner (query_api.routes.owner says why).
OWNER_PREFIX = "/_chatlog/query"
# The chat page, built by `scripts/setup` (npm ci + build in web/); served at `/`.
WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"

# status -> (type, code, message) of the errors nginx answers itself.
ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "invalid_request", "The request could not be parsed."),
    403: (
        "invalid_request_error",
        "origin_mismatch",
        "A request authenticated by the session cookie must come from this site (Origin).",
    ),
    404: ("invalid_request_error", "not_found", "No such endpoint; the API lives under /v1/."),
    405: ("invalid_request_error", "method_not_allowed", "Method not allowed."),
    408: ("invalid_request_error", "request_timeout", "The request took too long to arrive."),
    413: ("invalid_request_error", "payload_too_large", "The request body is too large."),
    414: ("invalid_request_error", "uri_too_long", "The request URI is too long."),
    431: ("invalid_request_error", "headers_too_large", "The request headers are too large."),
    497: ("invalid_request_error", "tls_required", "This port speaks HTTPS; use https://."),
    500: ("server_error", "gateway_error", "The gateway failed; try again."),
    502: (
        "service_unavailable",
        "upstream_unavailable",
        "The service behind the gateway is unavailable; try again shortly.",
    ),
    503: ("service_unavailable", "service_unavailable", "The gateway is overloaded; try again."),
    504: (
        "service_unavailable",
        "upstream_timeout",
        "The service behind the gateway did not answer in time; try again.",
    ),
}
RETRY_AFTER = {502: 1, 503: 1, 504: 1}
# Where prepare() copies the certificate and key: inside the gateway's directory, so the
# official image, which sees only that directory, serves the same TLS (relative paths).
TLS_CERT, TLS_KEY = "tls/cert.pem", "tls/key.pem"


@dataclass(frozen=True)
class GatewayConfig:
    """What the rendered config depends on: where it listens and the instances' ports."""

    port: int
    command_ports: Sequence[int]
    query_ports: Sequence[int]
    max_body_bytes: int
    tls_cert: Path | None = None
    tls_key: Path | None = None
    host: str = "127.0.0.1"
    upstream_host: str = "127.0.0.1"
    cors_origins: Sequence[str] = ()
    max_fails: int = 2
    fail_timeout_s: int = 5
    # A plain-HTTP listener on loopback in front of the query instances, for the command
    # API's stream relay: balanced like the front door's, whether or not that speaks TLS.
    relay_port: int | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/v1"


def config_from(
    settings: InfraSettings,
    port: int,
    command_ports: Sequence[int],
    query_ports: Sequence[int],
    relay_port: int | None = None,
) -> GatewayConfig:
    """The gateway config for `settings`, given where the instances listen."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ServiceError("set both CHATLOG_TLS_CERT and CHATLOG_TLS_KEY, or neither")
    return GatewayConfig(
        port=port,
        command_ports=command_ports,
        query_ports=query_ports,
        max_body_bytes=settings.gateway_max_body_bytes,
        tls_cert=Path(settings.tls_cert).absolute() if settings.tls_cert else None,
        tls_key=Path(settings.tls_key).absolute() if settings.tls_key else None,
        cors_origins=[o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()],
        relay_port=relay_port,
    )


def _servers(cfg: GatewayConfig, ports: Sequence[int]) -> str:
    if not ports:
        raise ServiceError("the gateway needs at least one instance of each API")
    return "\n".join(
        f"        server {cfg.upstream_host}:{p} max_fails={cfg.max_fails} "
        f"fail_timeout={cfg.fail_timeout_s}s;"
        for p in ports
    )


def _listen(cfg: GatewayConfig) -> str:
    if not cfg.tls:
        return f"        listen {cfg.host}:{cfg.port};"
    return (
        f"        listen {cfg.host}:{cfg.port} ssl;\n"
        f"        ssl_certificate {TLS_CERT};\n"
        f"        ssl_certificate_key {TLS_KEY};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;"
    )


def _relay_server(cfg: GatewayConfig) -> str:
    """The loopback listener the command API relays streams through (no TLS, no CORS, no
    cookies: the relay sends the caller's bearer key); absent without a relay port."""
    if cfg.relay_port is None:
        return ""
    return (
        "    server {\n"
        f"        listen 127.0.0.1:{cfg.relay_port};\n"
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_buffering off;\n"
        "        proxy_connect_timeout 2s;\n"
        "        proxy_read_timeout 1h;\n"
        "        proxy_next_upstream error timeout http_502 http_504;\n"
        "        proxy_next_upstream_tries 3;\n"
        "        proxy_set_header X-Chatlog-Route $chatlog_route;\n"
        "        location /v1/ {\n"
        "            proxy_pass http://query_api;\n"
        "        }\n"
        f"{_owner_locations(cfg)}"
        "    }"
    )


def _owner_upstreams(cfg: GatewayConfig) -> str:
    """One upstream per query instance: that instance, then the others as backups (one
    of them adopts the dead owner's partitions: query_api.hub_share). None for one."""
    if len(cfg.query_ports) < 2:
        return ""
    blocks = []
    for i, port in enumerate(cfg.query_ports):
        backups = "".join(
            f"        server {cfg.upstream_host}:{p} backup;\n"
            for j, p in enumerate(cfg.query_ports)
            if j != i
        )
        blocks.append(
            f"    upstream chatlog_query_{i} {{\n"
            f"        server {cfg.upstream_host}:{port} max_fails={cfg.max_fails} "
            f"fail_timeout={cfg.fail_timeout_s}s;\n"
            f"{backups}"
            "        keepalive 16;\n"
            "    }\n"
        )
    return "".join(blocks)


def _owner_locations(cfg: GatewayConfig) -> str:
    """Where an instance's X-Accel-Redirect sends a read: its owner's upstream (internal:
    no client can name these paths)."""
    if len(cfg.query_ports) < 2:
        return ""
    return "".join(
        f"        location {OWNER_PREFIX}/{i}/ {{\n"
        "            internal;\n"
        f"            proxy_pass http://chatlog_query_{i}/;\n"
        "        }\n"
        for i in range(len(cfg.query_ports))
    )


def _error_locations() -> str:
    blocks = []
    for status, (type_, code, message) in sorted(ERRORS.items()):
        body = json.dumps(
            {"error": {"message": message, "type": type_, "param": None, "code": code}}
        )
        retry = (
            f"            add_header Retry-After {RETRY_AFTER[status]} always;\n"
            if status in RETRY_AFTER
            else ""
        )
        answered = 400 if status == 497 else status  # 497 is nginx's, never on the wire
        blocks.append(
            f"        location = /_gateway/{status} {{\n"
            "            internal;\n"
            "            add_header X-Request-ID $chatlog_request_id always;\n"
            f"{retry}"
            f"            return {answered} '{body}\\n';\n"
            "        }"
        )
    return "\n".join(blocks)


def _origin_ok(origin: str) -> bool:
    """An origin as browsers send it (scheme://host[:port]); anything else could break the
    config's quoting, so it is refused."""
    if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
        raise ServiceError(f"CHATLOG_CORS_ORIGINS: {origin!r} is not an origin like https://host")
    return True


def _user() -> str:
    """Started as root, nginx runs its workers as `nobody`, who cannot read the page under a
    data directory below a 0700 one (root's home, pytest's temp dirs): the workers stay the
    user that started it. Unprivileged, nginx cannot switch users and needs no line."""
    return "user root;" if os.geteuid() == 0 else ""


def render(cfg: GatewayConfig) -> str:
    """The nginx.conf text for `cfg`."""
    template = resources.files("infra").joinpath("templates/nginx.conf").read_text()
    values = {
        "user": _user(),
        "max_body_bytes": str(cfg.max_body_bytes),
        "command_servers": _servers(cfg, cfg.command_ports),
        "query_servers": _servers(cfg, cfg.query_ports),
        "listen": _listen(cfg),
        "error_locations": _error_locations(),
        "relay_server": _relay_server(cfg),
        "owner_upstreams": _owner_upstreams(cfg),
        "owner_locations": _owner_locations(cfg),
        "owner_prefix": OWNER_PREFIX,
        "cors_origins": "\n".join(
            f'        "{o}" $http_origin;' for o in cfg.cors_origins if _origin_ok(o)
        ),
    }
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    return template


def nginx_binary() -> str:
    """Debian's nginx (`scripts/setup` installs it); /usr/sbin is not always on PATH."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        raise ServiceError(
            "nginx is not installed (scripts/setup installs it: apt-get install nginx)"
        )
    return found


def _copy_private(source: Path, target: Path) -> None:
    """Copy `source` to `target` readable by the owner only (it may be a private key)."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    target.touch(mode=0o600)
    target.write_bytes(source.read_bytes())


def publish_page(target: Path, source: Path = WEB_DIST) -> None:
    """Copy the built page into the gateway's directory, so the rendered config names it by
    a relative path (`root web`) that holds in the official image too. Without a build
    (no `scripts/setup` yet) `/` answers the JSON 404 and the API is unaffected."""
    shutil.rmtree(target, ignore_errors=True)
    if (source / "index.html").is_file():
        shutil.copytree(source, target)


def prepare(cfg: GatewayConfig, directory: Path) -> list[str]:
    """Write the config and temp dirs under `directory`, check it with `nginx -t`, and
    return the command line that runs it in the foreground."""
    for name in TEMP_DIRS:
        (directory / "tmp" / name).mkdir(parents=True, exist_ok=True)
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        _copy_private(cfg.tls_cert, directory / TLS_CERT)
        _copy_private(cfg.tls_key, directory / TLS_KEY)
    (directory / "nginx.conf").write_text(render(cfg))
    static = resources.files("infra").joinpath("templates/static.conf").read_text()
    (directory / "static.conf").write_text(static)
    publish_page(directory / "web")
    argv = [nginx_binary(), "-e", "stderr", "-p", f"{directory}/", "-c", "nginx.conf"]
    check = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise ServiceError(f"gateway config {directory / 'nginx.conf'} is invalid: {check.stderr}")
    return argv
