"""``cdcr lag`` never hides a partition, and its time lag stays sane: the cases of docs/lag.md,
each against the real Kafka broker, mostly through the CLI as an operator runs it.

Timestamps are set by the producer, so time lag (newest minus oldest unconsumed message) is
exact to the millisecond; the age of the oldest unconsumed message is read against the wall
clock with TIME_TOLERANCE_S of slack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from cdc_reconciler.cli import app
from cdc_reconciler.connectors.kafka.admin import KafkaAdmin
from cdc_reconciler.stream.lag import LagMonitor, Reason, Status, collect
from tests.conftest import Services
from tests.stream import test_lag
from tests.stream.test_lag import _wait_for_leaders, consume_and_commit, produce

# test_lag.py's fixtures, shared by name.
admin = test_lag.admin
topic_factory = test_lag.topic_factory
_delete_groups = test_lag._delete_groups  # autouse: the test's groups are deleted after it

pytestmark = pytest.mark.services

TIME_TOLERANCE_S = 5.0


def _no_nan(const: str) -> Any:
    raise AssertionError(f"non-JSON number {const} in cdcr lag --json")


def lag_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`cdcr lag --json ARGS` as an operator runs it; the parsed document."""
    result = CliRunner().invoke(app, ["lag", "--json", *args], env={**os.environ, **(env or {})})
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout, parse_constant=_no_nan)
    return doc


def parts_of(doc: dict[str, Any], group: str) -> dict[tuple[str, int], dict[str, Any]]:
    (g,) = [g for g in doc["groups"] if g["group"] == group]
    return {(p["topic"], p["partition"]): p for p in g["partitions"]}


def group_of(doc: dict[str, Any], group: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [g for g in doc["groups"] if g["group"] == group]
    (g,) = found
    return g


def commit(services: Services, group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Commit offsets for a group without consuming (as `kafka-consumer-groups --reset-offsets`
    does): the group has no member afterwards."""
    c = Consumer(
        {
            "bootstrap.servers": services.kafka_bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
        }
    )
    try:
        c.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
        )
    finally:
        c.close()


def test_four_partitions_250_250_100_0_exact(
    services: Services, topic_factory: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """The issue's case: 1,000 records over 4 partitions, consumed 250/250/100/0 and committed;
    the partition never committed on is listed and counted."""
    topic = topic_factory(partitions=4)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=300)
    produce(services, topic, per_partition=250, partitions=4, base=base)
    group = unique_name("g")
    consume_and_commit(services, group, topic, {0: 250, 1: 250, 2: 100})

    before = datetime.now(UTC)
    doc = lag_json("--group", group)
    g, parts = group_of(doc, group), parts_of(doc, group)
    assert sorted(parts) == [(topic, p) for p in range(4)]
    got = [
        (p["committed"], p["position"], p["log_end"], p["offset_lag"], p["reason"])
        for p in parts.values()
    ]
    assert got == [
        (250, 250, 250, 0, None),
        (250, 250, 250, 0, None),
        (100, 100, 250, 150, None),
        (None, 0, 250, 250, "no_commit"),
    ]
    assert g["total_offset_lag"] == 400 and g["partitions_without_commit"] == 1
    p2, p3 = parts[(topic, 2)], parts[(topic, 3)]
    # Message i is stamped base + i s: behind the log end by 249 - position seconds.
    assert p2["time_lag_s"] == pytest.approx(149.0, abs=0.01)
    assert p3["time_lag_s"] == pytest.approx(249.0, abs=0.01)
    waited = (before - base).total_seconds()
    assert waited - 1 <= p3["oldest_unconsumed_age_s"] <= waited + TIME_TOLERANCE_S
    # Nobody consumes: the lagging partitions are STOP, the caught-up ones OK.
    assert [p["status"] for p in parts.values()] == ["OK", "OK", "STOP", "STOP"]
    assert g["status"] == "STOP" and g["max_time_lag_s"] == pytest.approx(249.0, abs=0.01)

    # A group with auto.offset.reset=latest would start partition 3 at its log end.
    latest = parts_of(lag_json("--group", group, "--offset-reset", "latest"), group)
    p3 = latest[(topic, 3)]
    assert (p3["committed"], p3["position"], p3["offset_lag"], p3["reason"]) == (
        None,
        250,
        0,
        "no_commit",
    )
    assert sum(p["offset_lag"] for p in latest.values()) == 150

    table = CliRunner().invoke(app, ["lag", "--group", group], env={**os.environ, "COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "no_commit" in table.output and "400" in table.output


def test_uncommitted_partition_of_an_active_group_is_never_ok(
    services: Services,
    admin: KafkaAdmin,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    topic = topic_factory(partitions=2)
    only_assigned = topic_factory(partitions=1)  # the group never commits here at all
    base = datetime.now(UTC) - timedelta(seconds=15)
    produce(services, topic, per_partition=10, partitions=2, base=base)
    produce(services, only_assigned, per_partition=3, partitions=1, base=base)
    group = unique_name("g")
    consume_and_commit(services, group, topic, {0: 10})
    c = Consumer(
        {
            "bootstrap.servers": services.kafka_bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        c.subscribe([topic, only_assigned])
        deadline = time.monotonic() + 30
        while len(c.assignment()) < 3 and time.monotonic() < deadline:
            c.poll(0.2)  # joins the group and is assigned all three partitions; never commits
        assert len(c.assignment()) == 3
        mon = LagMonitor(admin, [group])
        collect(mon, samples=1, interval_s=0)
        (g,) = mon.report().groups
    finally:
        c.close()
    assert g.members == 1
    p0, p1, a0 = sorted(g.partitions, key=lambda p: (p.topic != topic, p.partition))
    assert (p0.committed, p0.offset_lag, p0.status) == (10, 0, Status.OK)
    # Young records (15 s < the 60 s stall threshold) and a live member, but no commit: WARN.
    assert (p1.committed, p1.reason, p1.offset_lag, p1.status) == (
        None,
        Reason.NO_COMMIT,
        10,
        Status.WARN,
    )
    # A topic the group is only assigned (no commit on it anywhere) is listed too.
    assert (a0.topic, a0.committed, a0.reason, a0.offset_lag, a0.status) == (
        only_assigned,
        None,
        Reason.NO_COMMIT,
        3,
        Status.WARN,
    )
    assert g.status is Status.WARN and g.total_offset_lag == 13


def test_partition_added_after_the_group_started_and_own_group_pattern(
    services: Services,
    admin: KafkaAdmin,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    topic_a = topic_factory(partitions=2)
    topic_b = topic_factory(partitions=1)
    base = datetime.now(UTC) - timedelta(seconds=30)
    produce(services, topic_a, per_partition=5, partitions=2, base=base)
    produce(services, topic_b, per_partition=3, partitions=1, base=base)
    group = unique_name("g")
    consume_and_commit(services, group, topic_a, {0: 5, 1: 5})

    admin.add_partitions(topic_a, 3)
    _wait_for_leaders(admin, topic_a, 3)
    p = Producer({"bootstrap.servers": services.kafka_bootstrap})
    for i in range(4):
        p.produce(topic_a, value=f"new:{i}".encode(), partition=2)
    assert p.flush(15) == 0

    # Any group: every partition of the topics it committed on, the new one included.
    parts = parts_of(lag_json("--group", group), group)
    assert sorted(parts) == [(topic_a, 0), (topic_a, 1), (topic_a, 2)]
    new = parts[(topic_a, 2)]
    assert (new["committed"], new["reason"], new["log_end"], new["offset_lag"]) == (
        None,
        "no_commit",
        4,
        4,
    )

    # `cdcr run`'s own group (kafka.group_id): also every topic its pattern matches, even one it
    # never committed on or was assigned.
    own = {"CDCR_KAFKA__GROUP_ID": group, "CDCR_KAFKA__TOPIC_PATTERN": f"^({topic_a}|{topic_b})$"}
    doc = lag_json(env=own)
    parts = parts_of(doc, group)
    assert sorted(parts) == [(topic_a, 0), (topic_a, 1), (topic_a, 2), (topic_b, 0)]
    assert parts[(topic_b, 0)]["reason"] == "no_commit"
    assert parts[(topic_b, 0)]["offset_lag"] == 3
    assert group_of(doc, group)["total_offset_lag"] == 4 + 3

    # Its group before `cdcr run` ever ran: not an unknown group, everything still to consume.
    fresh = unique_name("fresh")
    doc = lag_json(env={**own, "CDCR_KAFKA__GROUP_ID": fresh})
    g = group_of(doc, fresh)
    assert g["partitions_without_commit"] == 4 and g["total_offset_lag"] == 5 + 5 + 4 + 3
    assert g["status"] == "STOP"


def test_idle_group_has_zero_time_lag_never_nan(
    services: Services, topic_factory: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = topic_factory(partitions=3)
    p = Producer({"bootstrap.servers": services.kafka_bootstrap})
    for i in range(6):
        p.produce(topic, value=b"x", partition=i % 2)  # partition 2 stays empty
    assert p.flush(15) == 0
    group = unique_name("g")
    consume_and_commit(services, group, topic, {0: 3, 1: 3})
    time.sleep(1.0)  # idle: nothing new arrives

    doc = lag_json("--group", group)
    g, parts = group_of(doc, group), parts_of(doc, group)
    assert (g["status"], g["total_offset_lag"], g["max_time_lag_s"]) == ("OK", 0, 0.0)
    assert [
        (p["offset_lag"], p["time_lag_s"], p["time_lag_source"], p["status"])
        for p in parts.values()
    ] == [(0, 0.0, "caught_up", "OK")] * 3
    # The empty partition was never committed on, but nothing waits there.
    assert parts[(topic, 2)]["reason"] == "no_commit"
    assert parts[(topic, 2)]["oldest_unconsumed_age_s"] == 0.0


def test_group_reprocessing_from_the_beginning(
    services: Services,
    admin: KafkaAdmin,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    """Two-hour-old data: a group that rewound to the start is as far behind as the log spans
    (9 s), not two hours; where new data arrived since, it is two hours behind and says so."""
    topic = topic_factory(partitions=2)
    now = datetime.now(UTC).replace(microsecond=0)
    old = now - timedelta(hours=2)
    produce(services, topic, per_partition=10, partitions=2, base=old)
    p = Producer({"bootstrap.servers": services.kafka_bootstrap})
    p.produce(topic, value=b"fresh", partition=1, timestamp=int(now.timestamp() * 1000))
    assert p.flush(15) == 0
    group = unique_name("g")
    commit(services, group, {(topic, 0): 10, (topic, 1): 11})
    mon = LagMonitor(admin, [group])
    mon.sample()
    commit(services, group, {(topic, 0): 0, (topic, 1): 0})  # --reset-offsets --to-earliest
    mon.sample()
    rewound = mon.report().groups[0]
    assert [p.status for p in rewound.partitions] == [Status.REWIND, Status.REWIND]

    before = datetime.now(UTC)
    parts = parts_of(lag_json("--group", group), group)
    p0, p1 = parts[(topic, 0)], parts[(topic, 1)]
    assert (p0["committed"], p0["offset_lag"]) == (0, 10)
    assert p0["time_lag_s"] == pytest.approx(9.0, abs=0.01)
    assert p0["time_lag_over_30m"] is False
    two_h = (before - old).total_seconds()
    assert two_h - 1 <= p0["oldest_unconsumed_age_s"] <= two_h + TIME_TOLERANCE_S
    assert (p1["committed"], p1["offset_lag"]) == (0, 11)
    assert p1["time_lag_s"] == pytest.approx(7200.0, abs=0.01)
    assert p1["time_lag_over_30m"] is True


def test_offset_below_log_start_after_delete_records(
    services: Services,
    admin: KafkaAdmin,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    topic = topic_factory(partitions=1)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
    produce(services, topic, per_partition=10, partitions=1, base=base)
    group = unique_name("g")
    consume_and_commit(services, group, topic, {0: 2})
    assert admin.delete_records({(topic, 0): 6}) == {(topic, 0): 6}

    doc = lag_json("--group", group)
    (p,) = parts_of(doc, group).values()
    assert (p["committed"], p["log_start"], p["log_end"]) == (2, 6, 10)
    # Offsets 2..5 are gone: the group restarts at the log start (earliest) and says why.
    assert (p["reason"], p["position"], p["offset_lag"]) == ("offset_out_of_range", 6, 4)
    assert p["time_lag_s"] == pytest.approx(3.0, abs=0.01)  # newest 9 minus oldest left 6
    assert p["status"] == "STOP"
    assert group_of(doc, group)["total_offset_lag"] == 4


def test_one_shot_lag_reads_applied_offsets_without_sqlalchemy(
    services: Services,
    migrated_target: str,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    """The one-shot path imports only what it needs: Kafka, and psycopg2 for the applied
    offsets (SQLAlchemy's import alone costs about 0.2 s of the 0.5 s budget)."""
    topic = topic_factory(partitions=1)
    produce(services, topic, per_partition=3, partitions=1, base=datetime.now(UTC))
    group = unique_name("g")
    consume_and_commit(services, group, topic, {0: 1})
    code = (
        "import json, sys\n"
        "from cdc_reconciler.cli import main\n"
        f"sys.argv = ['cdcr', 'lag', '--json', '--group', {group!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = ('sqlalchemy', 'duckdb', 'pandas', 'pyarrow')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "[]", out.stderr
    doc = json.loads(out.stdout)
    assert doc["applied_offsets"] == {"available": True, "note": None}
    assert group_of(doc, group)["total_offset_lag"] == 2


def test_a_group_not_started_yet_is_listed_with_a_topic_pattern(
    services: Services, topic_factory: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """With --topic, a group that has never committed (not started yet) shows every matching
    partition as no_commit, lag counted from the log start, instead of 'unknown group'."""
    topic = topic_factory(partitions=2)
    p = Producer({"bootstrap.servers": services.kafka_bootstrap})
    for i in range(5):
        p.produce(topic, value=b"x", partition=i % 2)
    assert p.flush(15) == 0
    group = unique_name("g_new")

    doc = lag_json("--group", group, "--topic", f"^{topic}$")
    g, parts = group_of(doc, group), parts_of(doc, group)
    assert g["total_offset_lag"] == 5 and g["status"] != "OK"
    assert sorted(parts) == [(topic, 0), (topic, 1)]
    assert all(q["committed"] is None and q["reason"] == "no_commit" for q in parts.values())
