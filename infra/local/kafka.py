"""Apache Kafka 4.x in KRaft mode, run on the JDK from jars: one node, or a cluster of N.

Every node is a combined broker + controller (`process.roles=broker,controller`). On one
machine that is the right trade: three separate controllers would be three more JVMs on
two cores, for a separation that only pays off when controllers and brokers fail apart
(separate hosts). Three combined nodes still form a three-voter Raft quorum that survives
one node's death, which is the fault the cluster profile exercises.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path

from infra.local.procs import ServiceError, port_open, read_pid, spawn, stop_pid, wait_until

KAFKA_VERSION = "4.1.1"  # keep in step with infra/kafka/pom.xml
# The JVM's memory budget (README "Memory budget"): a fixed heap, direct buffers and class
# metadata capped; the log itself lives in the page cache, outside these.
JVM_MEMORY = ("-Xms768m", "-Xmx768m", "-XX:MaxDirectMemorySize=256m", "-XX:MaxMetaspaceSize=192m")
# Each of a cluster's three nodes: half the heap (three JVMs on one shared machine; a
# broker's heap holds metadata and request buffers, not the log, so 384 MiB is plenty for
# a few thousand partitions' worth of metadata here).
CLUSTER_JVM_MEMORY = (
    "-Xms384m",
    "-Xmx384m",
    "-XX:MaxDirectMemorySize=128m",
    "-XX:MaxMetaspaceSize=160m",
)



def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, never starting with "-"
    (kafka-storage's argument parser would read it as an option: one start in 64 failed,
    "argument --cluster-id/-t: expected one argument"; Kafka's own Uuid.randomUuid()
    redraws for the same reason)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id

class KafkaNode:
    """One local Kafka broker+controller under `home`, listening on `port` (+1 for the controller).

    Alone (`peers` empty) it is node 1 with replication factor 1 everywhere. In a cluster,
    `peers` are every node's broker ports (its own included, the controller on port + 1);
    node ids follow their order and internal topics get replication 3, min ISR 2.
    """

    def __init__(self, home: Path, port: int, *, peers: tuple[int, ...] = ()) -> None:
        self.port = port
        self.peers = peers or (port,)
        self.node_id = self.peers.index(port) + 1
        self.name = "kafka" if len(self.peers) == 1 else f"kafka-{self.node_id}"
        self.memory = JVM_MEMORY if len(self.peers) == 1 else CLUSTER_JVM_MEMORY
        self.libs = home / "tools" / f"kafka-{KAFKA_VERSION}" / "libs"
        self.data = home / "data" / self.name
        self.log = home / "logs" / f"{self.name}.log"
        self.pidfile = home / "run" / f"{self.name}.pid"
        # One cluster id per data directory: every node of a cluster formats with it.
        self.cluster_id_file = home / "data" / "kafka-cluster-id"

    def installed(self) -> bool:
        return (self.libs / ".complete").exists()

    def install(self) -> None:
        """Resolve the broker's jars from Maven Central into tools/ (once)."""
        if self.installed():
            return
        if shutil.which("mvn") is None:
            raise ServiceError("Maven (mvn) is missing: install it (apt-get install -y maven)")
        self.libs.mkdir(parents=True, exist_ok=True)
        pom_path = Path(__file__).parents[1] / "kafka" / "pom.xml"
        proc = subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom_path),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.libs}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ServiceError(f"mvn could not fetch Kafka {KAFKA_VERSION}: {proc.stdout[-2000:]}")
        (self.libs / ".complete").write_text(KAFKA_VERSION)

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise ServiceError(
                "Java 17+ is missing: install it (apt-get install -y openjdk-17-jre-headless)"
            )
        return java

    def replication(self) -> dict[str, str]:
        """The broker settings that depend on the cluster's size (its durability)."""
        n = len(self.peers)
        isr = str(min(2, n))
        return {
            "default.replication.factor": str(n),
            "min.insync.replicas": isr,
            # a replica that fell out of sync never becomes leader: no acknowledged write lost
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": str(n),
            "transaction.state.log.replication.factor": str(n),
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": str(n),
            "share.coordinator.state.topic.min.isr": isr,
        }

    def _cluster_id(self) -> str:
        if len(self.peers) == 1 or not self.cluster_id_file.exists():
            cluster_id = new_cluster_id()
            if len(self.peers) == 1:
                return cluster_id
            self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            self.cluster_id_file.write_text(cluster_id)
        return self.cluster_id_file.read_text().strip()

    def _configure(self) -> Path:
        self.data.mkdir(parents=True, exist_ok=True)
        props = self.data / "server.properties"
        voters = ",".join(f"{i}@127.0.0.1:{p + 1}" for i, p in enumerate(self.peers, start=1))
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    f"controller.quorum.voters={voters}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.port + 1}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={(self.data / 'logs').resolve()}",
                    "num.partitions=12",
                    "auto.create.topics.enable=false",
                    "offsets.topic.num.partitions=12",
                    *(f"{k}={v}" for k, v in self.replication().items()),
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        if not (self.data / "logs" / "meta.properties").exists():
            cluster_id = self._cluster_id()
            proc = subprocess.run(
                [
                    self._java(),
                    "-cp",
                    f"{self.libs}/*",
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise ServiceError(f"kafka storage format failed: {proc.stdout}{proc.stderr}")
        return props

    def running(self) -> bool:
        return read_pid(self.pidfile) is not None

    def start(self, timeout_s: float = 90.0, *, wait: bool = True) -> None:
        """Start the node; with `wait`, until it serves metadata (a cluster's node can only
        once a quorum of its peers runs: start them all with wait=False, then `wait_ready`)."""
        if not self.installed():
            raise ServiceError(
                "Kafka jars are missing: run `chatlog setup` (needs mvn + Maven Central)"
            )
        if self.running():
            return
        if port_open(self.port):
            raise ServiceError(
                f"port {self.port} is taken by another process; set CHATLOG_KAFKA_BOOTSTRAP"
            )
        spawn(self.command(self._configure()), log=self.log, pidfile=self.pidfile)
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        wait_until(
            lambda: self.running() and port_open(self.port) and self._broker_ready(),
            timeout_s=timeout_s,
            what=f"Kafka on port {self.port}",
            hint=f"See {self.log}.",
        )

    def command(self, props: Path) -> list[str]:
        """The broker's command line, its memory budget included."""
        return [
            self._java(),
            *self.memory,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-cp",
            f"{self.libs}/*",
            "kafka.Kafka",
            str(props),
        ]

    def _broker_ready(self) -> bool:
        if not self.running():
            raise ServiceError(f"Kafka exited during start-up; see {self.log}")
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}"})
        # this node registered with the quorum (not merely: some broker answers)
        return self.node_id in admin.list_topics(timeout=2).brokers

    def stop(self) -> bool:
        return stop_pid(self.pidfile, timeout_s=30)

    def healthy(self) -> bool:
        return self.running() and port_open(self.port)
