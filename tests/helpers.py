"""Helpers shared by the service tests: reading topics to the end, waiting for conditions, and
building settings that point at one test's own topics and group."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from cdc_reconciler.config import Settings
from cdc_reconciler.store import purge

# One test session's identity. Every name a session makes on the shared services carries
# SESSION_TAG: its databases (``cdcr_test_<id>_source`` / ``_target``), and its topics, consumer
# groups, connectors and replication slots (through ``unique_name`` and the fixtures). The
# session-end cleanup and the start-up sweep of dead sessions' leftovers (tests/conftest.py) find
# what to remove by these marks alone.
SESSION_ID = uuid.uuid4().hex[:6]
SESSION_TAG = f"cdcrt{SESSION_ID}"
TAG_RE = re.compile(r"cdcrt([0-9a-f]{6})")
DB_RE = re.compile(r"^cdcr_test_([0-9a-f]{6})_(source|target)$")


def session_db(sid: str, role: str) -> str:
    """The name of session ``sid``'s ``source`` or ``target`` database."""
    return f"cdcr_test_{sid}_{role}"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def read_topic(bootstrap: str, topic: str, timeout: float = 10) -> list[Any]:
    """Every record of ``topic`` from the beginning to the current end, in partition order."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{SESSION_TAG}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = c.list_topics(topic, timeout=timeout)
        parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        out: list[Any] = []
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if hi <= lo:
                continue
            c.assign([TopicPartition(topic, p, lo)])
            got = 0
            deadline = time.monotonic() + timeout
            while got < hi - lo and time.monotonic() < deadline:
                for m in c.consume(num_messages=1000, timeout=1):
                    if m.error() is None:
                        out.append(m)
                        got += 1
        return out
    finally:
        c.close()


def count_records(bootstrap: str, topic: str) -> int:
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"count-{SESSION_TAG}-{uuid.uuid4().hex[:8]}"}
    )
    try:
        meta = c.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return 0
        total = 0
        for p in meta.topics[topic].partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += hi - lo
        return total
    finally:
        c.close()


def value_json(msg: Any) -> Any:
    v = msg.value()
    return None if v is None else orjson.loads(v)


def settings_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """Settings from the stack's CDCR_* environment plus this test's overrides
    (keys like ``KAFKA__TOPIC_PATTERN``)."""
    for k, v in env.items():
        monkeypatch.setenv(f"CDCR_{k}", v)
    return Settings()


def rows(
    engine: sa.Engine, table: str, columns: str = "*", order: str = "1"
) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(sa.text(f"select {columns} from {table} order by {order}"))
        ]


def forget_table(target: sa.Engine, table: str, group: str | None = None) -> None:
    """Drop one test's table from the target and its rows from every service table that names
    it (found from the catalog, not a hand-kept list), and the group's applied offsets, so the
    next test in the session starts from a clean service state. The session's databases are
    dropped whole at session end; this only keeps tests within one session apart."""
    with target.begin() as conn:
        conn.execute(sa.text(f"drop table if exists {quoted(table)}"))
        purge.forget_table(conn, table)
        if group is not None:
            purge.forget_group(conn, group)


def quoted(qualified: str) -> str:
    """``schema.table`` as a quoted SQL identifier."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in qualified.split("."))


def committed(services: Any, group: str, topic: str, partition: int = 0) -> int:
    """The group's committed offset for one partition (negative when it has none)."""
    c = Consumer({"bootstrap.servers": services.kafka_bootstrap, "group.id": group})
    try:
        return int(c.committed([TopicPartition(topic, partition)], timeout=10)[0].offset)
    finally:
        c.close()
