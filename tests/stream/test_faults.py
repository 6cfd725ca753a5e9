"""Fault injection with the consumer left running (issue 16): the broker stopped and killed, the
target cut by a proxy with resets and silently, Redis stopped and flushed, `cdcr run` killed -9
at random points, poison and 5 MB records. Each ends with the target compared row by row with the
state the produced changes describe, and the accounting checked (consumed = applied + duplicate +
stale + dead-lettered + no-op, applied offsets at the log end).

The broker (and Redis, where it is stopped) is the test's own process on free ports, stopped
and killed by its PID; the shared services are never touched. Debezium is not pointed at that
broker: the tests produce Debezium-shaped envelopes themselves (tests/stream/faults.py).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Message
from pydantic import SecretStr

from cdc_reconciler.stream import command
from tests.conftest import Services
from tests.helpers import settings_for, wait_for
from tests.stream.faults import (
    OwnBroker,
    OwnPostgres,
    OwnRedis,
    Proxy,
    Traffic,
    caught_up,
    check_accounting,
    metric,
    probe,
    produce,
    target_rows,
)
from tests.stream.pipeline import free_port

pytestmark = [pytest.mark.services, pytest.mark.faults]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    b = OwnBroker(tmp_path_factory.mktemp("kafka"))
    b.start()
    yield b
    b.kill()


@dataclass
class Case:
    table: str
    prefix: str
    group: str
    traffic: Traffic
    broker: OwnBroker
    env: dict[str, str]

    @property
    def topic(self) -> str:
        return self.traffic.topic

    def settings(self, monkeypatch: pytest.MonkeyPatch, **extra: str) -> Any:
        return settings_for(monkeypatch, **{**self.env, **extra})

    def send(self, records: list[tuple[bytes, bytes | None]]) -> None:
        produce(self.broker.bootstrap, self.topic, records)


@pytest.fixture()
def case(
    broker: OwnBroker,
    target_engine: sa.Engine,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Case]:
    table = unique_name("f")
    prefix = f"p{table[-6:]}"
    with target_engine.begin() as conn:
        conn.execute(
            sa.text(
                f'create table public."{table}" (id int primary key, name text, n int, note text, '
                "_cdc_pos numeric(40,0) not null, _cdc_ts timestamptz not null)"
            )
        )
    traffic = Traffic(table, prefix, seed=hash(table) & 0xFFFF)
    broker.create_topic(traffic.topic, partitions=2)
    env = {
        "KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA__TOPIC_PATTERN": rf"^{prefix}\.public\.{table}$",
        "KAFKA__TOPIC_PREFIX": prefix,
        "KAFKA__GROUP_ID": f"g_{table}",
        "KAFKA__BATCH_TIMEOUT_S": "0.2",
        "KAFKA__SESSION_TIMEOUT_MS": "6000",
        "KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "REDIS__NAMESPACE": table,
        "METRICS__PORT": str(free_port()),
    }
    yield Case(table, prefix, f"g_{table}", traffic, broker, env)
    with target_engine.begin() as conn:
        conn.execute(sa.text(f'drop table if exists public."{table}"'))
        conn.execute(
            sa.text("delete from cdcr.tombstones where table_name = :t"), {"t": f"public.{table}"}
        )
        conn.execute(
            sa.text("delete from cdcr.dead_letters where topic = :t"), {"t": traffic.topic}
        )
        conn.execute(
            sa.text("delete from cdcr.applied_offsets where consumer_group = :g"),
            {"g": f"g_{table}"},
        )


class Running:
    """`cdcr run` (command.run) in a thread with /metrics, /healthz and /readyz served."""

    def __init__(self, settings: Any) -> None:
        self.stop = threading.Event()
        self.port = settings.metrics.port
        self.error: BaseException | None = None
        self.summary: Any = None

        def main() -> None:
            try:
                self.summary = command.run(settings, serve_metrics=True, stop=self.stop)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.error = exc

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(90)
        if self.thread.is_alive():
            frame = sys._current_frames().get(self.thread.ident or 0)
            stack = "".join(traceback.format_stack(frame)) if frame else "?"
            pytest.fail(f"cdcr run did not stop within 90 s after SIGTERM; it is in:\n{stack}")


def converged(case: Case, target: sa.Engine) -> None:
    wait_for(
        "the target caught up",
        lambda: caught_up(target, case.broker.bootstrap, case.group, case.topic),
        timeout=120,
    )
    assert target_rows(target, case.table) == case.traffic.expected
    check_accounting(target, case.broker.bootstrap, case.group, case.topic)


# ---------------------------------------------------------------- the broker
def test_broker_stopped_and_killed_is_waited_out(
    case: Case,
    broker: OwnBroker,
    target_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = case.settings(monkeypatch, HEALTH__KAFKA_DOWN_UNREADY_S="3")
    run = Running(settings)
    try:
        case.send(case.traffic.changes(300))
        wait_for(
            "first changes applied",
            lambda: caught_up(target_engine, broker.bootstrap, case.group, case.topic),
        )
        assert metric(run.port, "cdcr_kafka_up") == 1
        for how, down_s in (("SIGTERM", 2.0), ("SIGKILL", 16.0)):
            # Mid-stream: batches are being applied and committed when the broker goes.
            case.send(case.traffic.changes(2000))
            broker.stop(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
            wait_for(
                f"cdcr_kafka_up 0 after {how}",
                lambda: metric(run.port, "cdcr_kafka_up") == 0,
                timeout=30,
            )
            status, body = wait_for(
                "/readyz to say Kafka",
                lambda: (r := probe(run.port, "/readyz"))[0] == 503 and r,
                timeout=30,
            )
            assert [p["check"] for p in body["problems"]] == ["kafka"], body
            assert body["kafka"]["up"] is False and body["kafka"]["since"]
            time.sleep(down_s)  # longer than the topic refresh and its metadata timeout
            assert run.alive(), f"cdcr run ended during the outage: {run.error!r}"
            broker.start()
            case.send(case.traffic.changes(300))
            wait_for(
                f"changes applied after the {how} outage",
                lambda: caught_up(target_engine, broker.bootstrap, case.group, case.topic),
                timeout=120,
            )
            assert metric(run.port, "cdcr_kafka_up") == 1
            assert probe(run.port, "/readyz")[0] == 200
        assert run.alive()
    finally:
        run.close()
    assert run.error is None
    converged(case, target_engine)
    messages = [r.getMessage() for r in caplog.records]
    downs = [m for m in messages if m.startswith("kafka unreachable")]
    ups = [m for m in messages if m.startswith("kafka reachable again after")]
    # Logged once per change of state (a reminder only past a minute), with the duration.
    assert len(downs) == 2 and len(ups) == 2, messages
    assert float(ups[1].split("after ")[1].split("s")[0]) >= 16


# ---------------------------------------------------------------- poison and oversized records
def test_poison_and_oversized_records_are_dead_lettered(
    case: Case, broker: OwnBroker, target_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = case.settings(monkeypatch)
    big = b"x" * (5 * 1024 * 1024)
    big_note = "n" * (5 * 1024 * 1024)
    t = case.traffic
    # All on one partition, in this order (one flush each), so the good records after the
    # poison ones are of the same partition.
    p = _producer_one_partition(broker.bootstrap)
    for chunk in (
        t.changes(50),
        [(b'{"id":1}', b"not json at all")],
        [(b'{"id":2}', b'{"just": "json"}')],
        [(b'{"id":3}', big)],
        [t.envelope("c", 5000, "big", 1, note=big_note)],
        t.changes(50),
    ):
        for k, v in chunk:
            p.produce(case.topic, key=k, value=v, partition=0)
        assert p.flush(60) == 0
    run = Running(settings)
    try:
        wait_for(
            "all applied",
            lambda: caught_up(target_engine, broker.bootstrap, case.group, case.topic),
            timeout=120,
        )
        assert run.alive()
    finally:
        run.close()
    converged(case, target_engine)
    with target_engine.connect() as conn:
        note_len = conn.execute(
            sa.text(f'select length(note) from public."{case.table}" where id = 5000')
        ).scalar()
        dead = conn.execute(
            sa.text(
                'select "offset", error_kind, length(value) from cdcr.dead_letters '
                'where topic = :t order by "offset"'
            ),
            {"t": case.topic},
        ).all()
    assert note_len == len(big_note)  # a 5 MB value that fits the target is applied
    assert [(d.error_kind, d.length) for d in dead] == [
        ("decode:not_json", 15),
        ("decode:not_an_envelope", 16),
        ("decode:not_json", len(big)),
    ]
    letters = _read_all(broker.bootstrap, f"{case.prefix}.cdcr.dlq")
    by_offset = {
        int(h["cdcr.source.offset"]): (h, v)
        for h, v in letters
        if h["cdcr.source.topic"] == case.topic
    }
    assert sorted(by_offset) == [d.offset for d in dead]
    headers, value = by_offset[dead[2].offset]
    assert headers["cdcr.value.trimmed"] == "record_too_large"
    assert headers["cdcr.value.size"] == str(len(big))
    assert headers["cdcr.source.partition"] == "0"
    assert value is not None and 0 < len(value) < 1_000_000 and big.startswith(value)


def _producer_one_partition(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 16 * 1024 * 1024})


def _headers(m: Message) -> dict[str, str]:
    """A consumed record's headers by name; librdkafka gives them as (name, bytes) pairs."""
    pairs = m.headers() or []
    assert isinstance(pairs, list), pairs
    out: dict[str, str] = {}
    for k, v in pairs:
        assert isinstance(v, bytes), (k, v)
        out[k] = v.decode()
    return out


def _read_all(bootstrap: str, topic: str) -> list[tuple[dict[str, str], bytes | None]]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-{os.getpid()}-{time.time()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: list[tuple[dict[str, str], bytes | None]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for m in c.consume(100, timeout=1):
            if m.error() is None:
                out.append((_headers(m), m.value()))
        if out and len(out) >= 3:
            break
    c.close()
    return out


# ---------------------------------------------------------------- the target cut
def test_target_cut_with_resets_and_silently_recovers(
    case: Case,
    target_engine: sa.Engine,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = sa.engine.make_url(services.target_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = case.settings(
        monkeypatch,
        TARGET__URL=proxied,
        TARGET__CONNECT_TIMEOUT_S="2",
        HEALTH__STALL_S="4",
        HEALTH__TARGET_DOWN_UNREADY_S="2",
    )
    run = Running(settings)
    try:
        case.send(case.traffic.changes(200))
        wait_for(
            "first changes applied",
            lambda: caught_up(target_engine, case.broker.bootstrap, case.group, case.topic),
        )

        # 1. Reset: connections cut, new ones refused.
        proxy.reset()
        case.send(case.traffic.changes(200))
        wait_for("cdcr_target_up 0", lambda: metric(run.port, "cdcr_target_up") == 0, timeout=30)
        status, body = wait_for(
            "/readyz to say target",
            lambda: (r := probe(run.port, "/readyz"))[0] == 503 and r,
            timeout=30,
        )
        assert "target" in [p["check"] for p in body["problems"]], body
        assert not caught_up(target_engine, case.broker.bootstrap, case.group, case.topic)
        proxy.restore()
        wait_for(
            "applied after the reset",
            lambda: caught_up(target_engine, case.broker.bootstrap, case.group, case.topic),
            timeout=60,
        )
        assert metric(run.port, "cdcr_target_up") == 1

        # 2. Silence: the proxy holds every connection open and forwards nothing (no reset).
        proxy.blackhole()
        stalls = metric(run.port, "cdcr_stalls_total") or 0
        case.send(case.traffic.changes(200))
        wait_for(
            "the watchdog to see the stall",
            lambda: (metric(run.port, "cdcr_stalls_total") or 0) > stalls,
            timeout=30,
        )
        status, body = wait_for(
            "/readyz unhealthy while silent",
            lambda: (r := probe(run.port, "/readyz"))[0] == 503 and r,
            timeout=30,
        )
        assert {p["check"] for p in body["problems"]} & {"stalled", "target"}, body
        time.sleep(3)
        proxy.restore()
        wait_for(
            "applied after the silent cut",
            lambda: caught_up(target_engine, case.broker.bootstrap, case.group, case.topic),
            timeout=90,
        )
        assert probe(run.port, "/healthz")[0] == 200
        assert run.alive()
    finally:
        run.close()
        proxy.close()
    assert run.error is None
    converged(case, target_engine)
    assert any(r.getMessage().startswith("stalled: records waiting") for r in caplog.records)
    with target_engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("select count(*) from cdcr.dead_letters where topic = :t"),
                {"t": case.topic},
            ).scalar()
            == 0
        )


# ---------------------------------------------------------------- Redis
def test_redis_down_and_flushed(
    case: Case, target_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    redis = OwnRedis(tmp_path)
    redis.start()
    settings = case.settings(monkeypatch, REDIS__URL=redis.url)
    run = Running(settings)
    try:
        first = case.traffic.changes(200)
        case.send(first)
        wait_for(
            "first changes applied",
            lambda: caught_up(target_engine, case.broker.bootstrap, case.group, case.topic),
        )
        assert metric(run.port, "cdcr_redis_up") == 1
        redis.stop()
        case.send(case.traffic.changes(200))
        wait_for(
            "applied without Redis",
            lambda: caught_up(target_engine, case.broker.bootstrap, case.group, case.topic),
        )
        assert metric(run.port, "cdcr_redis_up") == 0
        assert probe(run.port, "/readyz")[0] == 200  # Redis is a fast path, not a dependency
        redis.start()  # no persistence: it comes back empty, as after FLUSHALL
        # Redeliver the first changes: with Redis flushed they meet the position guard.
        case.send([*first, *case.traffic.changes(200)])
        wait_for(
            "applied after Redis returned empty",
            lambda: caught_up(target_engine, case.broker.bootstrap, case.group, case.topic),
        )
        wait_for("cdcr_redis_up 1", lambda: metric(run.port, "cdcr_redis_up") == 1, timeout=30)
        assert run.alive()
    finally:
        run.close()
        redis.stop()
    # The redelivered first changes are older than the rows: the model's state stands.
    assert run.error is None
    converged(case, target_engine)


# ---------------------------------------------------------------- kill -9
def test_kill_9_at_random_points(
    case: Case, target_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, **{f"CDCR_{k}": v for k, v in case.env.items()}}
    rng = random.Random(16)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"{case.table}.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "cdc_reconciler", "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    done = threading.Event()

    def traffic() -> None:
        for _ in range(30):
            case.send(case.traffic.changes(200, keys=500))
            time.sleep(0.4)
        done.set()

    producer = threading.Thread(target=traffic, daemon=True)
    proc = start()
    kills = 0
    try:
        producer.start()
        while not done.is_set() or kills < 4:
            time.sleep(rng.uniform(1.5, 4.0))
            proc.send_signal(signal.SIGKILL)  # our own child, by PID
            proc.wait(30)
            kills += 1
            proc = start()
            if kills >= 8:
                break
        producer.join(120)
        wait_for(
            "caught up after the kills",
            lambda: caught_up(target_engine, case.broker.bootstrap, case.group, case.topic),
            timeout=120,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    assert kills >= 4
    assert "Traceback" not in log.read_text(errors="replace")
    log.unlink(missing_ok=True)
    converged(case, target_engine)


# ---------------------------------------------------------------- failover
def test_dead_members_partitions_move_within_seconds(case: Case, target_engine: sa.Engine) -> None:
    """Two members share the group with the default session timeout; one is killed -9 and the
    survivor applies its partition's new records within seconds (45 s before issue 16)."""
    env = {**os.environ, **{f"CDCR_{k}": v for k, v in case.env.items()}}
    env.pop("CDCR_KAFKA__SESSION_TIMEOUT_MS")
    env.pop("CDCR_KAFKA__HEARTBEAT_INTERVAL_MS")
    ports = [free_port(), free_port()]
    procs: list[subprocess.Popen[bytes]] = []

    def partitions(port: int) -> int:
        try:
            return int(probe(port, "/readyz")[1]["partitions"])
        except Exception:  # noqa: BLE001 - not serving yet
            return -1

    try:
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cdc_reconciler", "run"],
                    env={**env, "CDCR_METRICS__PORT": str(port)},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            time.sleep(1)
        wait_for("one partition each", lambda: [partitions(p) for p in ports] == [1, 1], timeout=60)
        case.send(case.traffic.changes(200))
        wait_for(
            "applied by both",
            lambda: caught_up(target_engine, case.broker.bootstrap, case.group, case.topic),
        )
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(30)
        killed = time.monotonic()
        case.send(case.traffic.changes(200))
        wait_for(
            "the survivor took the partition over",
            lambda: caught_up(target_engine, case.broker.bootstrap, case.group, case.topic),
            timeout=60,
            every=0.2,
        )
        moved_s = time.monotonic() - killed
        assert partitions(ports[1]) == 2
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(30)
    print(f"partitions of the killed member applied by the survivor after {moved_s:.1f}s")
    assert moved_s < 20, moved_s
    converged(case, target_engine)


# ---------------------------------------------------------------- the target cluster restarted
def test_target_cluster_crash_and_restart(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole target cluster of the test's own crashed (immediate stop, as a power cut) and
    stopped cleanly, each while changes keep arriving; the consumer waits and converges."""
    from cdc_reconciler import migrations
    from cdc_reconciler.config import DatabaseSettings, Settings

    pg = OwnPostgres()
    pg.start()
    admin = sa.create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("create database target"))
        admin.dispose()
        migrations.upgrade(
            Settings.model_construct(target=DatabaseSettings(url=SecretStr(pg.url("target")))),
            "head",
        )
        target = sa.create_engine(pg.url("target"), pool_pre_ping=True)
        with target.begin() as conn:
            conn.execute(
                sa.text(
                    f'create table public."{case.table}" (id int primary key, name text, n int, '
                    "note text, _cdc_pos numeric(40,0) not null, _cdc_ts timestamptz not null)"
                )
            )
        settings = case.settings(
            monkeypatch,
            TARGET__URL=pg.url("target"),
            TARGET__CONNECT_TIMEOUT_S="2",
            HEALTH__TARGET_DOWN_UNREADY_S="2",
        )
        run = Running(settings)
        try:
            case.send(case.traffic.changes(200))
            wait_for(
                "first changes applied",
                lambda: caught_up(target, case.broker.bootstrap, case.group, case.topic),
            )
            for mode in ("immediate", "fast"):
                pg.stop(mode)
                case.send(case.traffic.changes(200))
                wait_for(
                    f"cdcr_target_up 0 ({mode})",
                    lambda: metric(run.port, "cdcr_target_up") == 0,
                    timeout=30,
                )
                time.sleep(3)
                assert run.alive(), f"cdcr run ended during the outage: {run.error!r}"
                pg.start()
                wait_for(
                    f"applied after the {mode} restart",
                    lambda: caught_up(target, case.broker.bootstrap, case.group, case.topic),
                    timeout=90,
                )
                assert metric(run.port, "cdcr_target_up") == 1
        finally:
            run.close()
        assert run.error is None
        wait_for(
            "the target caught up",
            lambda: caught_up(target, case.broker.bootstrap, case.group, case.topic),
        )
        assert target_rows(target, case.table) == case.traffic.expected
        check_accounting(target, case.broker.bootstrap, case.group, case.topic)
        target.dispose()
    finally:
        admin.dispose()
        pg.remove()


# ---------------------------------------------------------------- dead letters in an outage
def test_dead_letters_wait_for_the_broker(
    broker: OwnBroker, monkeypatch: pytest.MonkeyPatch, unique_name: Callable[[str], str]
) -> None:
    """Producing a dead letter while the broker is down waits (Kafka reported down) and
    delivers once it is back; a value too large for the producer goes trimmed."""
    from cdc_reconciler import wiring
    from cdc_reconciler.connectors.kafka import Record
    from cdc_reconciler.stream.dead_letters import DeadLetter, DeadLetterSink
    from cdc_reconciler.stream.metrics import Dependency

    settings = settings_for(monkeypatch, KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap)
    topic = unique_name("dlq")
    broker.create_topic(topic)
    kafka = Dependency("kafka")
    sink = DeadLetterSink(wiring.kafka_producer(settings.kafka), topic, kafka=kafka)
    big = b"v" * (3 * 1024 * 1024)
    letter = DeadLetter(Record("src.public.t", 1, 77, b'{"id":9}', big), "decode:not_json", "x")
    result: dict[str, Any] = {}

    def publish() -> None:
        try:
            sink.publish([letter])
            result["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    broker.stop()
    try:
        t = threading.Thread(target=publish, daemon=True)
        t.start()
        wait_for("Kafka reported down", lambda: not kafka.up, timeout=30)
        time.sleep(3)
        assert t.is_alive() and not result
    finally:
        broker.start()
    t.join(90)
    assert result == {"ok": True}
    assert kafka.up
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": unique_name("read"),
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    got: list[Message] = []
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        got = [m for m in c.consume(10, timeout=1) if m.error() is None]
    c.close()
    assert len(got) == 1
    headers = _headers(got[0])
    assert headers["cdcr.value.trimmed"] == "record_too_large"
    assert headers["cdcr.source.offset"] == "77" and headers["cdcr.source.partition"] == "1"
    value = got[0].value()
    assert value is not None and big.startswith(value) and len(value) < 1_000_000
