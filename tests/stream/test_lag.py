"""``cdcr lag`` against the real Kafka broker: offsets, seconds, statuses, JSON and the exporter.

Tolerances: with the monitor's clock injected, time lag is exact to the millisecond (Kafka stores
message timestamps in ms), checked to 0.01 s. Through the CLI the clock is the wall clock, so the
time lag is checked against the clock read around the call, with 5 s of slack.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from cdc_reconciler import wiring
from cdc_reconciler.cli import app
from cdc_reconciler.config import KafkaSettings
from cdc_reconciler.connectors.kafka import KafkaEdgeError
from cdc_reconciler.connectors.kafka.admin import KafkaAdmin
from cdc_reconciler.stream.lag import LagMonitor, Status, TimeLagSource, collect
from tests.conftest import Services

pytestmark = pytest.mark.services

PARTITIONS = 3
N = 10  # messages per partition
# The first message of every partition is this old; message i is i seconds younger.
AGE0_S = 1000.0
TIME_TOLERANCE_CLI_S = 5.0


@pytest.fixture()
def admin(services: Services) -> KafkaAdmin:
    return wiring.kafka_admin(KafkaSettings(bootstrap_servers=services.kafka_bootstrap))


@pytest.fixture(autouse=True)
def _delete_groups(admin: KafkaAdmin, unique_name: Callable[[str], str]) -> Iterator[None]:
    """Deletes the consumer groups this test made (every name from ``unique_name`` shares its
    suffix), so that no group is left behind."""
    suffix = unique_name("x")[1:]  # "_<test>_<tag>"
    yield
    admin.delete_groups(g for g in admin.list_groups() if g.endswith(suffix))


@pytest.fixture()
def topic_factory(
    admin: KafkaAdmin, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(partitions: int = PARTITIONS) -> str:
        name = f"{unique_name('lag')}-{len(made)}".replace("_", "-")  # several per test
        admin.create_topic(name, partitions)
        made.append(name)
        _wait_for_leaders(admin, name, partitions)
        return name

    yield make
    admin.delete_topics(made)


def _wait_for_leaders(admin: KafkaAdmin, topic: str, partitions: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            # Listing topics refreshes the client's metadata (new partitions included).
            if admin.topic_partitions(f"^{re.escape(topic)}$").get(topic) == partitions:
                admin.watermarks([(topic, p) for p in range(partitions)])
                return
        except KafkaEdgeError:
            time.sleep(0.1)
    pytest.fail(f"topic {topic} has no leaders after 15 s")


def produce(
    services: Services,
    topic: str,
    *,
    per_partition: int,
    base: datetime,
    partitions: int = PARTITIONS,
    start: int = 0,
) -> None:
    """Message i of every partition has the timestamp base + i seconds."""
    p = Producer({"bootstrap.servers": services.kafka_bootstrap, "linger.ms": 5})
    base_ms = int(base.timestamp() * 1000)
    for i in range(start, start + per_partition):
        for part in range(partitions):
            p.produce(
                topic, value=f"{part}:{i}".encode(), partition=part, timestamp=base_ms + i * 1000
            )
    assert p.flush(15) == 0


def consume_and_commit(services: Services, group: str, topic: str, upto: dict[int, int]) -> None:
    """Consume offsets [0, upto[p]) of each partition with ``group`` and commit upto[p]; then
    leave (the group ends with no members)."""
    c = Consumer(
        {
            "bootstrap.servers": services.kafka_bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        c.assign([TopicPartition(topic, p, 0) for p in upto])
        seen = dict.fromkeys(upto, 0)
        deadline = time.monotonic() + 20
        while any(seen[p] < upto[p] for p in upto) and time.monotonic() < deadline:
            for m in c.consume(100, timeout=0.5):
                assert m.error() is None, m.error()
                part, off = m.partition(), m.offset()
                assert part is not None and off is not None
                seen[part] = max(seen[part], off + 1)
        assert all(seen[p] >= upto[p] for p in upto), seen
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in upto.items()], asynchronous=False)
    finally:
        c.close()


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_offset_and_time_lag_per_partition(
    services: Services,
    admin: KafkaAdmin,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    topic = topic_factory()
    now = datetime.now(UTC).replace(microsecond=0)
    base = now - timedelta(seconds=AGE0_S)
    produce(services, topic, per_partition=N, base=base)
    group = unique_name("g")
    upto = {0: 2, 1: 5, 2: N}
    consume_and_commit(services, group, topic, upto)

    mon = LagMonitor(admin, [group], now_getter=FixedClock(now))
    collect(mon, samples=2, interval_s=0.1)
    (g,) = mon.report().groups
    got = {p.partition: p for p in g.partitions}
    assert sorted(got) == [0, 1, 2]
    for part, m in upto.items():
        p = got[part]
        assert (p.committed, p.log_end, p.offset_lag) == (m, N, N - m)
        if m == N:
            assert (p.time_lag_s, p.time_lag_source, p.status) == (
                0.0,
                TimeLagSource.CAUGHT_UP,
                Status.OK,
            )
        else:
            # The oldest unconsumed message is offset m, stamped base + m seconds; the newest is
            # N - 1: the group is N - 1 - m seconds of writes behind, and offset m has waited
            # AGE0_S - m seconds.
            assert p.time_lag_source is TimeLagSource.TIMESTAMP
            assert p.time_lag_s == pytest.approx(N - 1 - m, abs=0.01)
            assert p.age_s == pytest.approx(AGE0_S - m, abs=0.01)
            assert p.status is Status.STOP  # lag and nobody in the group
    assert g.total_offset_lag == (N - 2) + (N - 5)


def test_stopped_group_while_messages_arrive_is_stop(
    services: Services,
    admin: KafkaAdmin,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    topic = topic_factory()
    produce(services, topic, per_partition=N, base=datetime.now(UTC) - timedelta(seconds=5))
    group = unique_name("g")
    consume_and_commit(services, group, topic, dict.fromkeys(range(PARTITIONS), N))

    stop = threading.Event()

    def keep_producing() -> None:
        i = N
        while not stop.is_set():
            produce(services, topic, per_partition=1, base=datetime.now(UTC), start=i)
            i += 1
            time.sleep(0.05)

    t = threading.Thread(target=keep_producing, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        mon = LagMonitor(admin, [group])
        collect(mon, samples=3, interval_s=0.3)
        report = mon.report()
    finally:
        stop.set()
        t.join(10)
    (g,) = report.groups
    assert g.members == 0
    assert g.status is Status.STOP
    assert all(p.committed == N and p.offset_lag > 0 for p in g.partitions)
    assert {p.status for p in g.partitions} == {Status.STOP}


def test_caught_up_idle_group_is_ok(
    services: Services,
    admin: KafkaAdmin,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    topic = topic_factory()
    produce(services, topic, per_partition=N, base=datetime.now(UTC) - timedelta(seconds=60))
    group = unique_name("g")
    consume_and_commit(services, group, topic, dict.fromkeys(range(PARTITIONS), N))

    mon = LagMonitor(admin, [group])
    collect(mon, samples=3, interval_s=0.2)
    (g,) = mon.report().groups
    assert g.status is Status.OK and g.total_offset_lag == 0 and g.max_time_lag_s == 0.0
    assert [(p.offset_lag, p.time_lag_s, p.status) for p in g.partitions] == [
        (0, 0.0, Status.OK)
    ] * PARTITIONS


def test_member_that_does_not_commit_is_stall(
    services: Services,
    admin: KafkaAdmin,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    topic = topic_factory(partitions=1)
    produce(
        services,
        topic,
        per_partition=N,
        partitions=1,
        base=datetime.now(UTC) - timedelta(seconds=AGE0_S),
    )
    group = unique_name("g")
    consume_and_commit(services, group, topic, {0: 3})
    c = Consumer(
        {
            "bootstrap.servers": services.kafka_bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while not c.assignment() and time.monotonic() < deadline:
            c.poll(0.2)  # joins the group; never commits
        assert c.assignment()
        mon = LagMonitor(admin, [group])
        collect(mon, samples=2, interval_s=0.2)
        (g,) = mon.report().groups
    finally:
        c.close()
    assert g.members == 1
    (p,) = g.partitions
    assert (p.committed, p.offset_lag, p.status) == (3, N - 3, Status.STALL)


def test_unknown_group_is_an_error(admin: KafkaAdmin, unique_name: Callable[[str], str]) -> None:
    result = CliRunner().invoke(app, ["lag", "--group", unique_name("nobody"), "--json"])
    assert result.exit_code == 1
    assert "FAILED" in result.output and "unknown consumer group" in result.output


def test_unreachable_broker_keeps_the_kafka_error_code() -> None:
    dead = wiring.kafka_admin(KafkaSettings(bootstrap_servers="127.0.0.1:1"), timeout_s=1)
    with pytest.raises(KafkaEdgeError) as info:
        dead.describe_groups(["g"])
    assert info.value.code in (
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    )
    assert info.value.code_name and "broker reachable" in str(info.value)


PARTITION_KEYS = {
    "topic",
    "partition",
    "committed",
    "reason",
    "position",
    "log_start",
    "log_end",
    "offset_lag",
    "time_lag_s",
    "time_lag_source",
    "time_lag_over_30m",
    "oldest_unconsumed_age_s",
    "status",
    "applied",
    "applied_event_time",
    "applied_updated_at",
}
GROUP_KEYS = {
    "group",
    "state",
    "members",
    "status",
    "total_offset_lag",
    "max_time_lag_s",
    "partitions_without_commit",
    "partitions",
}
TOP_KEYS = {"schema_version", "generated_at", "samples", "interval_s", "applied_offsets", "groups"}
STATUSES = {"OK", "WARN", "REWIND", "STALL", "STOP"}


def test_cli_json_schema_with_applied_offsets(
    services: Services,
    admin: KafkaAdmin,
    target_engine: sa.Engine,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    topic = topic_factory()
    produce(services, topic, per_partition=N, base=datetime.now(UTC) - timedelta(seconds=AGE0_S))
    group = unique_name("g")
    consume_and_commit(services, group, topic, {0: 4, 1: 4, 2: 4})
    with target_engine.connect() as conn:
        if not conn.execute(sa.text("select to_regclass('cdcr.applied_offsets')")).scalar():
            pytest.fail("cdcr.applied_offsets missing in the target: run `cdcr migrate`")
    applied_at = datetime(2026, 1, 1, tzinfo=UTC)
    with target_engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into cdcr.applied_offsets (consumer_group, topic, partition, next_offset, "
                "last_event_time) values (:g, :t, 0, 6, :at)"
            ),
            {"g": group, "t": topic, "at": applied_at},
        )
    try:
        before = datetime.now(UTC)
        result = CliRunner().invoke(
            app,
            ["lag", "--group", group, "--json", "--samples", "2", "--interval", "0.1"],
            env=dict(os.environ),
        )
        after = datetime.now(UTC)
    finally:
        with target_engine.begin() as conn:
            conn.execute(
                sa.text("delete from cdcr.applied_offsets where consumer_group = :g"), {"g": group}
            )
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    assert set(doc) == TOP_KEYS and doc["schema_version"] == 1
    assert doc["samples"] == 2 and doc["interval_s"] == 0.1
    generated = datetime.fromisoformat(doc["generated_at"].replace("Z", "+00:00"))
    assert before <= generated <= after
    assert doc["applied_offsets"] == {"available": True, "note": None}
    (g,) = doc["groups"]
    assert set(g) == GROUP_KEYS and g["group"] == group and g["status"] in STATUSES
    assert g["total_offset_lag"] == 3 * (N - 4)
    assert [p["partition"] for p in g["partitions"]] == [0, 1, 2]
    for p in g["partitions"]:
        assert set(p) == PARTITION_KEYS and p["status"] in STATUSES
        assert (p["topic"], p["committed"], p["log_start"], p["log_end"], p["offset_lag"]) == (
            topic,
            4,
            0,
            N,
            N - 4,
        )
        assert p["time_lag_source"] == "timestamp"
        assert p["time_lag_s"] == pytest.approx(N - 1 - 4, abs=0.01)  # message times, no clock
        assert p["reason"] is None and p["position"] == 4 and p["time_lag_over_30m"] is False
        expected = AGE0_S - 4
        assert (
            expected - 1
            <= p["oldest_unconsumed_age_s"]
            <= expected + (after - before).total_seconds() + TIME_TOLERANCE_CLI_S
        )
    assert g["partitions"][0]["applied"] == 6
    assert g["partitions"][0]["applied_event_time"] == "2026-01-01T00:00:00Z"
    assert g["partitions"][0]["applied_updated_at"] is not None  # when the engine advanced it
    assert g["partitions"][1]["applied"] is None


def _free_port() -> int:
    from tests.stream.pipeline import free_port

    return free_port(1)  # below the ephemeral range (see there)


def test_serve_exports_parseable_gauges(
    services: Services, topic_factory: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = topic_factory()
    produce(services, topic, per_partition=N, base=datetime.now(UTC) - timedelta(seconds=AGE0_S))
    group = unique_name("g")
    consume_and_commit(services, group, topic, {0: 1, 1: N, 2: 7})
    port = _free_port()
    # Through main() as the `cdcr` script does (runpy's -m would import cli.py twice).
    cmd = [
        sys.executable,
        "-c",
        "from cdc_reconciler.cli import main; main()",
        "lag",
        "--group",
        group,
        "--serve",
        str(port),
        "--refresh",
        "0.5",
        "--samples",
        "1",
    ]
    with subprocess.Popen(
        cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        try:
            body = _scrape(f"http://127.0.0.1:{port}/metrics", proc)
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    families = {f.name: f for f in text_string_to_metric_families(body)}
    lag = {
        s.labels["partition"]: s.value
        for s in families["cdcr_consumer_offset_lag"].samples
        if s.labels["group"] == group
    }
    assert lag == {"0": N - 1.0, "1": 0.0, "2": N - 7.0}
    secs = {
        s.labels["partition"]: s.value for s in families["cdcr_consumer_time_lag_seconds"].samples
    }
    assert secs["1"] == 0.0
    assert secs["0"] == pytest.approx(N - 1 - 1, abs=0.01)  # newest (N-1) minus oldest unread (1)
    ages = {
        s.labels["partition"]: s.value
        for s in families["cdcr_consumer_oldest_unconsumed_age_seconds"].samples
    }
    assert ages["1"] == 0.0 and AGE0_S - 1 - 1 <= ages["0"] <= AGE0_S - 1 + 30
    status = {
        (s.labels["partition"], s.labels["status"]): s.value
        for s in families["cdcr_consumer_status"].samples
    }
    assert status[("1", "OK")] == 1.0 and status[("0", "STOP")] == 1.0
    assert sum(v for (part, _), v in status.items() if part == "0") == 1.0
    assert {s.labels["topic"] for s in families["cdcr_consumer_status"].samples} == {topic}
    assert families["cdcr_lag_up"].samples[0].value == 1.0


def _scrape(url: str, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"cdcr lag --serve exited with {proc.returncode}: {err.decode()}")
        try:
            resp = httpx.get(url, timeout=2)
            if resp.status_code == 200:
                return resp.text
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within 30 s")
