"""``cdcr.applied_offsets``: written in the same transaction as the rows (DESIGN invariant 3), read
back on partition assignment to resume where the target really is, by the reconciler to prove a
window closed, and by ``cdcr status``/``cdcr lag``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from cdc_reconciler.stream.outcomes import BatchOutcome


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """How far one partition has been applied: the next offset and the newest event time."""

    topic: str
    partition: int
    next_offset: int
    last_event_time: datetime | None


@dataclass(frozen=True, slots=True)
class AppliedOffset:
    """One row of ``cdcr.applied_offsets``: position and the per-outcome counters."""

    consumer_group: str
    topic: str
    partition: int
    next_offset: int
    last_event_time: datetime | None
    consumed: int
    applied: int
    skipped_duplicate: int
    skipped_stale: int
    dead_lettered: int
    skipped_noop: int
    updated_at: datetime


_UPSERT = sa.text(
    """
    INSERT INTO cdcr.applied_offsets AS a (consumer_group, topic, partition, next_offset,
        last_event_time, consumed, applied, skipped_duplicate, skipped_stale, dead_lettered,
        skipped_noop, updated_at)
    VALUES (:g, :t, :p, :o, :ev, :consumed, :applied, :dup, :stale, :dlq, :noop, now())
    ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET
        next_offset = GREATEST(a.next_offset, EXCLUDED.next_offset),
        last_event_time = GREATEST(a.last_event_time, EXCLUDED.last_event_time),
        consumed = a.consumed + EXCLUDED.consumed,
        applied = a.applied + EXCLUDED.applied,
        skipped_duplicate = a.skipped_duplicate + EXCLUDED.skipped_duplicate,
        skipped_stale = a.skipped_stale + EXCLUDED.skipped_stale,
        dead_lettered = a.dead_lettered + EXCLUDED.dead_lettered,
        skipped_noop = a.skipped_noop + EXCLUDED.skipped_noop,
        updated_at = now()
    """
)


def _ts(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def record_applied(conn: sa.Connection, group: str, outcome: BatchOutcome) -> None:
    rows = [
        {
            "g": group,
            "t": t,
            "p": p,
            "o": c.next_offset,
            "ev": _ts(c.last_event_us),
            "consumed": c.consumed,
            "applied": c.applied,
            "dup": c.skipped_duplicate,
            "stale": c.skipped_stale,
            "dlq": c.dead_lettered,
            "noop": c.skipped_noop,
        }
        for (t, p), c in sorted(outcome.partitions.items())
        if c.next_offset >= 0
    ]
    if rows:
        conn.execute(_UPSERT, rows)


def applied_offsets(
    conn: sa.Connection, group: str, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The next offset to consume per partition, as recorded in the target."""
    wanted = list(partitions)
    if not wanted:
        return {}
    rows = conn.execute(
        sa.text(
            "SELECT topic, partition, next_offset FROM cdcr.applied_offsets "
            "WHERE consumer_group = :g AND topic = ANY(:topics)"
        ),
        {"g": group, "topics": sorted({t for t, _ in wanted})},
    )
    want = set(wanted)
    return {
        (r.topic, r.partition): int(r.next_offset) for r in rows if (r.topic, r.partition) in want
    }


def partition_progress(conn: sa.Connection, group: str, topic: str) -> list[PartitionProgress]:
    """The group's progress on every partition of ``topic`` it has applied, by partition."""
    rows = conn.execute(
        sa.text(
            "SELECT topic, partition, next_offset, last_event_time FROM cdcr.applied_offsets "
            "WHERE consumer_group = :g AND topic = :t ORDER BY partition"
        ),
        {"g": group, "t": topic},
    ).all()
    return [PartitionProgress(*r) for r in rows]


def applied_topics(conn: sa.Connection, group: str) -> list[str]:
    """Every topic the group has applied something from, sorted."""
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT topic FROM cdcr.applied_offsets WHERE consumer_group = :g "
            "ORDER BY topic"
        ),
        {"g": group},
    )
    return [r[0] for r in rows]


_ROWS = (
    "SELECT consumer_group, topic, partition, next_offset, last_event_time, consumed, applied, "
    "skipped_duplicate, skipped_stale, dead_lettered, skipped_noop, updated_at "
    "FROM cdcr.applied_offsets"
)


def all_offsets(conn: sa.Connection) -> list[AppliedOffset]:
    """Every row, by group, topic and partition."""
    rows = conn.execute(sa.text(f"{_ROWS} ORDER BY consumer_group, topic, partition")).all()
    return [AppliedOffset(*r) for r in rows]


def exists(conn: sa.Connection) -> bool:
    """Whether the table exists (the target was migrated)."""
    return conn.execute(sa.text("SELECT to_regclass('cdcr.applied_offsets')")).scalar() is not None


def for_groups(conn: sa.Connection, groups: Iterable[str]) -> list[AppliedOffset]:
    """The rows of ``groups``, by group, topic and partition (``cdcr lag``)."""
    rows = conn.execute(
        sa.text(
            f"{_ROWS} WHERE consumer_group = ANY(:g) ORDER BY consumer_group, topic, partition"
        ),
        {"g": list(groups)},
    ).all()
    return [AppliedOffset(*r) for r in rows]
