"""Apache Kafka 4.x, single KRaft node (broker + controller), run on the JDK from jars."""

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


class KafkaNode:
    """One local Kafka broker+controller under `home`, listening on `port` (+1 for the controller)."""

    name = "kafka"

    def __init__(self, home: Path, port: int) -> None:
        self.port = port
        self.libs = home / "tools" / f"kafka-{KAFKA_VERSION}" / "libs"
        self.data = home / "data" / "kafka"
        self.log = home / "logs" / "kafka.log"
        self.pidfile = home / "run" / "kafka.pid"

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

    def _configure(self) -> Path:
        self.data.mkdir(parents=True, exist_ok=True)
        props = self.data / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.port + 1}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.port + 1}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={(self.data / 'logs').resolve()}",
                    "num.partitions=12",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=12",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        if not (self.data / "logs" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
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

    def start(self, timeout_s: float = 90.0) -> None:
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
            *JVM_MEMORY,
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
        return bool(admin.list_topics(timeout=2).brokers)

    def stop(self) -> bool:
        return stop_pid(self.pidfile, timeout_s=30)

    def healthy(self) -> bool:
        return self.running() and port_open(self.port)
