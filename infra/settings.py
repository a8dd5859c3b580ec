"""Connection settings shared by every service (env prefix `CHATLOG_`).

Each service has its own settings class that inherits these and adds its knobs. The
launcher starts local services on the ports named in these URLs, so one value decides
both where a service runs and where clients look for it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import DEFAULT_PARTITIONS, Topics

LOCAL_MEILI_KEY = "chatlog-local-master-key-0123456789"
# The models served by default (#14 item 4): SmolLM2-135M-Instruct on the transformers
# engine, and the same weights configured to decode greedily (InferenceSettings.
# model_settings says how each differs).
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
GREEDY_MODEL = "SmolLM2-135M-Instruct-greedy"


class InfraSettings(BaseSettings):
    """Where Kafka, Postgres and Meilisearch are, and how names are prefixed."""

    model_config = SettingsConfigDict(env_prefix="CHATLOG_", env_ignore_empty=True, extra="ignore")

    environment: str = "local"
    home: Path = Path(".chatlog")
    # One broker or a comma-separated list; the local launcher runs one node per entry.
    kafka_bootstrap: str = "127.0.0.1:19092"
    # Kafka's security, passed through to every client (confluent-kafka, aiokafka, faust):
    # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL; SASL PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512
    # with a username and password; TLS with a CA file (and a client certificate for mTLS).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    topic_prefix: str = ""
    partitions: int = DEFAULT_PARTITIONS
    # Our topics' durability: with 3 and 2, an acks=all write is on two brokers before it is
    # acknowledged, and one broker may die without losing or refusing anything.
    replication_factor: int = 1
    min_insync_replicas: int = 1
    # chat.completions' retention (token chunks are bulky and only serve live and resumed
    # streams); chat.conversations and chat.answers keep everything (retention.ms=-1).
    completions_retention_ms: int = 3 * 24 * 3600 * 1000
    # chat.dlq's: copies of poison records (the originals stay in their topics), kept a
    # month so an operator back from a holiday can still fix and re-publish them.
    dlq_retention_ms: int = 30 * 24 * 3600 * 1000
    # `chatlog status` calls a projection degraded (and exits non-zero) past this lag.
    status_max_lag_events: int = 1_000
    postgres_url: str = "postgresql://chatlog@127.0.0.1:15432/chatlog"
    meili_url: str | None = "http://127.0.0.1:17700"
    meili_key: str = LOCAL_MEILI_KEY
    index_prefix: str = ""
    # Comma-separated ids of the served models, the first the default. Each has its own
    # replicas (and consumer group) and its own breaker; how a model's replicas differ from
    # the inference defaults (engine, replicas, ...) is InferenceSettings.model_settings.
    models: str = f"{DEFAULT_MODEL},{GREEDY_MODEL}"
    # Ray's shared-memory object store for the inference replicas (`ray.init(object_store_
    # memory=...)`). Tokens go to Kafka directly, never through Ray objects, so a small store
    # is plenty; Ray's default is 30% of the machine's memory, on /dev/shm.
    ray_object_store_bytes: int = 256 * 1024 * 1024
    # An existing Ray cluster for the inference deployment (`RAY_ADDRESS`, as Ray spells it,
    # or CHATLOG_RAY_ADDRESS). None: `python -m inference` starts a Ray of its own.
    ray_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CHATLOG_RAY_ADDRESS", "RAY_ADDRESS", "ray_address"),
    )
    # The local launcher's own Ray cluster (infra/local/ray.py): a head and ray_nodes - 1
    # workers, the head's GCS on ray_port. 0: none (inference runs Ray in its process).
    ray_nodes: int = 0
    ray_port: int = 16379
    # The gateway (infra/gateway.py): the one base URL, the API instances behind it, TLS.
    gateway_port: int = 8080
    command_instances: int = 1
    query_instances: int = 1
    # Processors instances: one consumer group, the partitions shared between them; each
    # batch's checkpoint, in its own transaction, fences a batch a rebalance made stale.
    processors_instances: int = 1
    # Above the command API's max_body_bytes, so bodies in between get the API's own 413.
    gateway_max_body_bytes: int = 8 * 1024 * 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Browser sessions: their lifetime, and the origins (comma-separated) CORS allows.
    session_ttl_s: float = 12 * 3600.0
    cors_origins: str = ""
    # Replica health (#14): each replica beats on chat.replicas every heartbeat_interval_s;
    # readers call it gone once its last beat is older than replica_stale_s.
    heartbeat_interval_s: float = 1.0
    replica_stale_s: float = 4.0
    # Queue deadline (#14): a prompt not started this long after it was accepted ends with a
    # retryable CompletionFailed `queue_timeout` (0 disables). A started attempt with no
    # event for stall_timeout_s ends with `stalled`. Read by the command API's deadline
    # keeper (the one writer) and by the replicas (which refuse an expired prompt).
    queue_timeout_s: float = 30.0
    stall_timeout_s: float = 120.0

    @property
    def kafka_brokers(self) -> list[str]:
        """The bootstrap list's entries (`host:port`)."""
        return [b.strip() for b in self.kafka_bootstrap.split(",") if b.strip()]

    def confluent_kafka_config(self) -> dict[str, str | int | float | bool]:
        """bootstrap.servers and the security settings, as confluent-kafka (librdkafka)
        spells them: merge into any producer, consumer or admin config."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        optional = {
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": self.kafka_sasl_password,
            "ssl.ca.location": self.kafka_ssl_cafile,
            "ssl.certificate.location": self.kafka_ssl_certfile,
            "ssl.key.location": self.kafka_ssl_keyfile,
        }
        return config | {k: str(v) for k, v in optional.items() if v is not None}

    def aiokafka_options(self) -> dict[str, Any]:
        """bootstrap_servers and the security settings as aiokafka's keyword arguments
        (faust takes the same through `broker_credentials`: see `faust_credentials`)."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            options |= {
                "sasl_mechanism": self.kafka_sasl_mechanism,
                "sasl_plain_username": self.kafka_sasl_username,
                "sasl_plain_password": self.kafka_sasl_password,
            }
        if "SSL" in self.kafka_security_protocol:
            options["ssl_context"] = self.ssl_context()
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context from the CA file (system CAs without one) and client certificate."""
        context = ssl.create_default_context(
            cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
        )
        if self.kafka_ssl_certfile:
            context.load_cert_chain(
                str(self.kafka_ssl_certfile),
                str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            )
        return context

    def faust_credentials(self) -> Any:
        """faust's `broker_credentials` for the security settings (None: plaintext)."""
        import faust

        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL"):
            return faust.SASLCredentials(
                username=self.kafka_sasl_username,
                password=self.kafka_sasl_password,
                mechanism=self.kafka_sasl_mechanism or "PLAIN",
                ssl_context=self.ssl_context() if protocol == "SASL_SSL" else None,
            )
        if protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        return None

    @property
    def model_ids(self) -> list[str]:
        """The served model ids; the first is the default."""
        return [m.strip() for m in self.models.split(",") if m.strip()]

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def index_name(self, base: str) -> str:
        return self.index_prefix + base

    def check_secrets(self) -> None:
        """Refuse the well-known local master key anywhere but a local environment."""
        if self.environment != "local" and self.meili_url and self.meili_key == LOCAL_MEILI_KEY:
            raise ValueError("CHATLOG_MEILI_KEY must be set outside the local environment")


def port_of(url: str, default: int) -> int:
    """The port in a URL or `host:port` string."""
    parsed = urlsplit(url if "//" in url else f"//{url}")
    return parsed.port or default


def cluster_profile(settings: InfraSettings) -> InfraSettings:
    """The cluster profile on this machine (`chatlog up --cluster`): three Kafka brokers
    (the first on the configured port, the others 2 and 4 above it), topics replicated 3
    times with min ISR 2, a Ray head and a worker node, two instances of every service.

    It lives in `<home>/cluster`, apart from the single-node profile's data: its read
    models come from another log and must never mix with that one's.
    """
    first = port_of(settings.kafka_brokers[0], 19092)
    return settings.model_copy(
        update={
            "home": Path(settings.home) / "cluster",
            "kafka_bootstrap": ",".join(f"127.0.0.1:{first + 2 * i}" for i in range(3)),
            "replication_factor": 3,
            "min_insync_replicas": 2,
            "ray_nodes": 2,
            "ray_address": f"127.0.0.1:{settings.ray_port}",
            "command_instances": max(2, settings.command_instances),
            "query_instances": max(2, settings.query_instances),
            "processors_instances": max(2, settings.processors_instances),
        }
    )
