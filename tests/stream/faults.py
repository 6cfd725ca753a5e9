"""Fault-injection helpers: a Kafka broker of the test's own (a single KRaft node from the stack's
jars, on free ports, stopped and killed by its PID — never the shared broker), Debezium-shaped
envelopes produced by hand (Debezium cannot easily be pointed at that broker), and TCP proxies in
front of the target database that cut connections with a reset or stop forwarding silently."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    from tests.stream.pipeline import free_port

    return free_port(1)  # below the ephemeral range (see there)


def _jars_dir() -> Path:
    """The stack's Kafka jars: this checkout's, else the main checkout's (worktrees share it)."""
    for root in (
        REPO,
        Path(os.environ.get("CDCR_STACK_DIR", "/nonexistent")).parent,
        Path("/work/main"),
    ):
        d = root / ".stack" / "jars" / "kafka"
        if d.is_dir() and any(d.glob("kafka_*.jar")):
            return d
    raise RuntimeError("no Kafka jars found: run scripts/stack up once to fetch them")


class OwnBroker:
    """A single-node KRaft broker in ``workdir``: start, stop (SIGTERM), kill (SIGKILL), restart
    on the same ports and data. Only the PID it started is ever signalled."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = _free_port()
        self.controller_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.jars = _jars_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "server.properties"
        self.conf.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.dir / 'data'}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=2",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "message.max.bytes=16777216",
                    "",
                ]
            )
        )
        self._java = [
            "java",
            "-Xms128m",
            "-Xmx384m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={REPO / 'scripts/stack.d/log4j2.xml'}",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp",
            f"{self.jars}/*",
        ]
        cluster = uuid.uuid4().hex[:22]
        subprocess.run(
            [
                *self._java,
                f"-Dcdcr.log.file={self.dir / 'format.log'}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster,
                "-c",
                str(self.conf),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        log = self.dir / "kafka.log"
        log.write_text("")
        self.proc = subprocess.Popen(
            [*self._java, f"-Dcdcr.log.file={log}", "kafka.Kafka", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Kafka Server started" in log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"own broker exited: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.3)
        raise RuntimeError("own broker did not start in time")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
            fut.result(30)


# ---------------------------------------------------------------- Debezium-shaped envelopes
class Traffic:
    """Schemaless Debezium envelopes for ``public.<table>`` (id int key, name text, n int,
    note text), with strictly increasing LSNs, as the PostgreSQL connector writes them; keeps the
    state the target must end in (``expected``)."""

    def __init__(self, table: str, prefix: str, seed: int = 7) -> None:
        self.table = table
        self.topic = f"{prefix}.public.{table}"
        self.lsn = 1_000_000
        self.expected: dict[int, tuple[int, str, int | None]] = {}
        self.rng = random.Random(seed)
        self.produced: list[tuple[bytes, bytes | None]] = []

    def envelope(
        self,
        op: str,
        key: int,
        name: str | None = None,
        n: int | None = None,
        note: str | None = None,
    ) -> tuple[bytes, bytes]:
        self.lsn += 8
        after = None if op == "d" else {"id": key, "name": name, "n": n, "note": note}
        before = {"id": key, "name": "", "n": None, "note": None} if op == "d" else None
        ts = int(time.time() * 1000)
        value = {
            "before": before,
            "after": after,
            "source": {
                "version": "3.6.1.Final",
                "connector": "postgresql",
                "name": "faults",
                "ts_ms": ts,
                "snapshot": "false",
                "db": "source",
                "schema": "public",
                "table": self.table,
                "txId": self.lsn // 8,
                "lsn": self.lsn,
                "sequence": orjson.dumps([str(self.lsn - 8), str(self.lsn)]).decode(),
            },
            "op": op,
            "ts_ms": ts,
        }
        if op == "d":
            self.expected.pop(key, None)
        else:
            self.expected[key] = (key, name or "", n)
        return orjson.dumps({"id": key}), orjson.dumps(value)

    def changes(self, count: int, keys: int = 200) -> list[tuple[bytes, bytes | None]]:
        """``count`` random inserts/updates/deletes over ``keys`` keys (a delete's tombstone
        follows it, as Debezium writes it)."""
        out: list[tuple[bytes, bytes | None]] = []
        while len(out) < count:
            k = self.rng.randrange(keys)
            if k in self.expected and self.rng.random() < 0.15:
                key, value = self.envelope("d", k)
                out += [(key, value), (key, None)]
            else:
                op = "u" if k in self.expected else "c"
                out.append(self.envelope(op, k, f"v{self.lsn}", self.rng.randrange(10**6)))
        self.produced += out
        return out


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    p = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 16 * 1024 * 1024}
    )
    for k, v in records:
        p.produce(topic, key=k, value=v)
        p.poll(0)
    assert p.flush(60) == 0


# ---------------------------------------------------------------- TCP proxy
class Proxy:
    """Forwards 127.0.0.1:<port> to ``upstream``. ``reset()`` cuts every connection (the client
    sees a reset/EOF) and refuses new ones until ``restore()``; ``blackhole()`` keeps the
    connections open but forwards nothing and accepts new ones without ever connecting them (a
    dropped NAT entry or failed-over host: no reset, just silence)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode = "open"  # open | reset | blackhole
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "reset":
                client.close()
                continue
            with self.lock:
                self.conns.append(client)
            if self.mode == "blackhole":
                continue  # accepted, never answered
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.append(server)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with suppress(OSError):
            while data := a.recv(65536):
                while self.mode == "blackhole":
                    time.sleep(0.1)  # swallow: hold the bytes, answer nothing
                if self.mode == "reset":
                    break
                b.sendall(data)
        for s in (a, b):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        self.mode = "reset"
        with self.lock:
            for s in self.conns:
                with suppress(OSError):
                    s.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                with suppress(OSError):
                    s.close()
            self.conns.clear()

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def restore(self) -> None:
        # Connections caught in the black hole stay dead, as a dropped NAT entry's do.
        if self.mode == "blackhole":
            self.reset()
        self.mode = "open"

    def close(self) -> None:
        self.reset()
        self.listener.close()


class OwnRedis:
    """A redis-server of the test's own on a free port, without persistence (a restart is a
    flush), stopped by its PID."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.1)
        raise RuntimeError("own redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


# ---------------------------------------------------------------- checks
def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def metric(port: int, name: str) -> float | None:
    return scrape(port).get((name, ()))


def probe(port: int, path: str) -> tuple[int, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return r.status_code, r.json()


def log_end(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"end-{uuid.uuid4().hex}"})
    try:
        meta = c.list_topics(topic, timeout=10)
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.topics[topic].partitions
        }
    finally:
        c.close()


def accounts(target: sa.Engine, group: str, topic: str) -> dict[int, dict[str, int]]:
    with target.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select partition, consumed, applied, skipped_duplicate, skipped_stale, "
                "dead_lettered, skipped_noop, next_offset from cdcr.applied_offsets "
                "where consumer_group = :g and topic = :t"
            ),
            {"g": group, "t": topic},
        ).all()
    return {r.partition: dict(r._mapping) for r in rows}


def caught_up(target: sa.Engine, bootstrap: str, group: str, topic: str) -> bool:
    ends = log_end(bootstrap, topic)
    got = accounts(target, group, topic)
    return all(got.get(p, {}).get("next_offset", 0) >= end for p, end in ends.items() if end)


def check_accounting(target: sa.Engine, bootstrap: str, group: str, topic: str) -> None:
    """Every consumed record ended as exactly one outcome, and the applied offsets are at the
    log end of every partition."""
    ends = log_end(bootstrap, topic)
    got = accounts(target, group, topic)
    for p, end in ends.items():
        if not end:
            continue
        a = got[p]
        outcomes = (
            a["applied"]
            + a["skipped_duplicate"]
            + a["skipped_stale"]
            + a["dead_lettered"]
            + a["skipped_noop"]
        )
        assert a["consumed"] == outcomes, a
        assert a["consumed"] >= end, (a, end)  # redeliveries count again, never fewer
        assert a["next_offset"] == end, (a, end)


def target_rows(target: sa.Engine, table: str) -> dict[int, tuple[int, str, int | None]]:
    with target.connect() as conn:
        return {
            r[0]: (r[0], r[1], r[2])
            for r in conn.execute(sa.text(f'select id, name, n from public."{table}" order by id'))
        }


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb in a new directory, trust auth on 127.0.0.1, a
    free port), run as the ``postgres`` OS user when the tests run as root; started, crashed
    (``pg_ctl stop -m immediate``) and restarted through its own data directory only."""

    def __init__(self) -> None:
        import glob
        import pwd
        import tempfile

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("PostgreSQL server binaries not found")
        self.bin = Path(bins[-1])
        # Under /tmp itself: pytest's own temporary directories are private to root.
        workdir = Path(tempfile.mkdtemp(prefix="cdcr-faults-pg-"))
        self.dir = workdir
        self.data = workdir / "data"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            [
                *self._as,
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{workdir}'\nshared_buffers = 32MB\n"
                "max_connections = 30\nfsync = off\n"
            )

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{db}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        self._ctl("-l", str(self.dir / "pg.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        with suppress(subprocess.CalledProcessError):
            self._ctl("-m", mode, "-w", "stop")

    def remove(self) -> None:
        import shutil

        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
