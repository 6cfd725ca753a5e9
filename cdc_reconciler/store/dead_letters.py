"""``cdcr.dead_letters``: every dead-lettered record, once per (topic, partition, offset)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    kind: str
    error: str


@dataclass(frozen=True, slots=True)
class DeadLetterSummary:
    """Per topic and kind over the last day: how many, the latest time and error."""

    topic: str
    kind: str
    n: int
    last_seen: datetime
    last_error: str


_INSERT = sa.text(
    'INSERT INTO cdcr.dead_letters (topic, partition, "offset", key, value, error_kind, error) '
    "VALUES (:topic, :partition, :offset, :key, :value, :kind, :error) "
    'ON CONFLICT (topic, partition, "offset") DO NOTHING'
)


def insert(conn: sa.Connection, rows: Sequence[DeadLetterRow]) -> None:
    """All of a batch's dead letters through one executemany (psycopg2 sends a statement per
    row: dead letters are few); a record already dead-lettered is left as it is."""
    if not rows:
        return
    conn.execute(
        _INSERT,
        [
            {
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "key": r.key,
                "value": r.value,
                "kind": r.kind,
                "error": r.error,
            }
            for r in rows
        ],
    )


def last_day(conn: sa.Connection) -> list[DeadLetterSummary]:
    """Dead letters of the last 24 hours per topic and kind, most recent first."""
    rows = conn.execute(
        sa.text(
            "SELECT topic, error_kind AS kind, count(*) AS n, max(first_seen) AS "
            "last_seen, (array_agg(error ORDER BY id DESC))[1] AS last_error "
            "FROM cdcr.dead_letters WHERE first_seen > now() - interval '1 day' "
            "GROUP BY 1, 2 ORDER BY 4 DESC"
        )
    ).all()
    return [DeadLetterSummary(*r) for r in rows]
