"""The cluster profile's wiring (no services): brokers, quorum, replication, Ray nodes."""

from __future__ import annotations

from pathlib import Path

from infra.local import LocalStack
from infra.local.kafka import CLUSTER_JVM_MEMORY, JVM_MEMORY, KafkaNode
from infra.local.ray import RayNode
from infra.settings import InfraSettings, cluster_profile
from infra.system import System, settings_env


def test_the_profile_names_three_brokers_two_ray_nodes_and_two_of_each_service(
    tmp_path: Path,
) -> None:
    s = cluster_profile(InfraSettings(home=tmp_path, kafka_bootstrap="127.0.0.1:19392"))
    assert s.kafka_brokers == ["127.0.0.1:19392", "127.0.0.1:19394", "127.0.0.1:19396"]
    assert (s.replication_factor, s.min_insync_replicas) == (3, 2)
    assert s.home == tmp_path / "cluster"  # never mixed with the single-node profile's data
    assert s.ray_nodes == 2 and s.ray_address == f"127.0.0.1:{s.ray_port}"
    assert (s.command_instances, s.query_instances, s.processors_instances) == (2, 2, 2)
    names = [c.name for c in System(s).services()]
    assert names == [
        "processors", "processors-2", "inference", "query_api", "query_api-2",
        "command_api", "command_api-2", "gateway",
    ]  # fmt: skip
    env = settings_env(s)
    assert env["RAY_ADDRESS"] == s.ray_address and env["CHATLOG_REPLICAS"] == "2"
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["CHATLOG_REPLICATION_FACTOR"] == "3"


def test_three_combined_nodes_form_one_quorum_with_durable_internal_topics(
    tmp_path: Path,
) -> None:
    s = cluster_profile(InfraSettings(home=tmp_path, kafka_bootstrap="127.0.0.1:19392"))
    stack = LocalStack(s.model_copy(update={"home": tmp_path}))
    assert [(b.name, b.node_id, b.port) for b in stack.brokers] == [
        ("kafka-1", 1, 19392), ("kafka-2", 2, 19394), ("kafka-3", 3, 19396)
    ]  # fmt: skip
    node = stack.brokers[1]
    assert node.replication()["min.insync.replicas"] == "2"
    assert node.replication()["unclean.leader.election.enable"] == "false"
    assert node.replication()["offsets.topic.replication.factor"] == "3"
    assert node.command(tmp_path / "p")[1 : 1 + len(CLUSTER_JVM_MEMORY)] == list(CLUSTER_JVM_MEMORY)
    assert [n.name for n in stack.ray] == ["ray-head", "ray-worker-1"]


def test_a_single_node_keeps_its_names_and_replication_one(tmp_path: Path) -> None:
    node = KafkaNode(tmp_path, 19092)
    assert (node.name, node.node_id, node.memory) == ("kafka", 1, JVM_MEMORY)
    assert node.replication()["default.replication.factor"] == "1"
    assert node.replication()["min.insync.replicas"] == "1"
    assert LocalStack(InfraSettings(home=tmp_path)).ray == []  # inference starts its own


def test_ray_nodes_get_disjoint_ports_and_the_worker_joins_the_head(tmp_path: Path) -> None:
    head, worker = (RayNode(tmp_path, i, 26679, object_store_bytes=10**8) for i in (0, 1))

    def ports(cmd: list[str]) -> set[str]:
        return {a.split("=")[1] for a in cmd if a.split("=")[0].endswith("-port")}

    assert not ports(head.command()) & ports(worker.command())
    assert "--head" in head.command() and "--port=26679" in head.command()
    assert f"--address={head.address}" in worker.command()
    assert "--block" in worker.command()  # the node's processes stay in our process group


def test_kafka_security_settings_reach_every_client_library_in_its_own_spelling() -> None:
    s = InfraSettings(
        kafka_bootstrap="b1:9093,b2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="pw",
    )
    assert s.confluent_kafka_config() == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "pw",
    }
    aio = s.aiokafka_options()
    assert (aio["security_protocol"], aio["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (aio["sasl_plain_username"], aio["sasl_plain_password"]) == ("svc", "pw")
    assert aio["ssl_context"] is not None
    creds = s.faust_credentials()
    assert (creds.username, creds.password) == ("svc", "pw")
    plain = InfraSettings()
    assert plain.confluent_kafka_config()["security.protocol"] == "PLAINTEXT"
    assert "ssl_context" not in plain.aiokafka_options() and plain.faust_credentials() is None


def test_no_service_builds_a_kafka_client_from_the_bootstrap_list_alone() -> None:
    """Every Kafka client of the services takes `aiokafka_options()` or
    `confluent_kafka_config()`: one built from `bootstrap_servers` alone cannot connect
    to a SASL/TLS cluster (the replica view of the APIs did that, and `/v1/models` and
    the breakers would have seen no replica there)."""
    root = Path(__file__).resolve().parents[3]
    allowed = {"infra/settings.py", "infra/harness.py"}  # the one spelling; the test stack's admin
    offenders = []
    for package in ("command_api", "query_api", "processors", "inference", "infra", "schemas"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in allowed or rel.startswith("infra/local/"):  # the local engines' own admin
                continue
            text = path.read_text()
            for needle in ("bootstrap_servers=", '"bootstrap.servers"'):
                if needle in text:
                    offenders.append(f"{rel}: {needle}")
    assert offenders == []
