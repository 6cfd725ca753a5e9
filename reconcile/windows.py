"""Windows and their closure (DESIGN invariants 7 and 9).

Windows are half-open ``[start, end)`` intervals of change time on a fixed UTC grid of
``window_s`` seconds. A window is *closed* when every partition feeding its table (the rows of
``cdcr.applied_offsets`` for the consumer group and the topics it applies for the table, found by
reconcile/topics.py)
has applied events at or past ``end + grace``, or is idle at its log end (``next_offset`` equals
Kafka's log-end offset), and the clock has passed ``end + grace``. A table with no applied
offsets at all has nothing that proves closure, so none of its windows is closed.

Clocks are injected (``now_getter``) so tests control time; the log-end lookup is injected too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from cdc_reconciler.config import KafkaSettings
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.reconcile.segments import Window

Clock = Callable[[], datetime]
TP = tuple[str, int]
LogEnds = Callable[[list[TP]], dict[TP, int]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def checked_now(now_getter: Clock) -> datetime:
    now = now_getter()
    if now.tzinfo is None:
        raise CdcrError("the clock must return timezone-aware UTC datetimes")
    return now


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    topic: str
    partition: int
    next_offset: int
    last_event_time: datetime | None


def table_topic(topic_prefix: str, source_table: str) -> str:
    return f"{topic_prefix}.{source_table}"


def partition_progress(conn: sa.Connection, group: str, topic: str) -> list[PartitionProgress]:
    rows = conn.execute(
        sa.text(
            "SELECT topic, partition, next_offset, last_event_time FROM cdcr.applied_offsets "
            "WHERE consumer_group = :g AND topic = :t ORDER BY partition"
        ),
        {"g": group, "t": topic},
    ).all()
    return [PartitionProgress(*r) for r in rows]


def closed_through(
    partitions: Iterable[PartitionProgress], grace: timedelta, now: datetime, log_ends: LogEnds
) -> datetime | None:
    """The latest instant ``t`` such that every window ending at or before ``t`` is closed;
    None when nothing proves closure (no partitions). Asks ``log_ends`` only about partitions
    whose event time lags the clock."""
    parts = list(partitions)
    if not parts:
        return None
    bound = now - grace
    lagging = [p for p in parts if p.last_event_time is None or p.last_event_time < now]
    ends = log_ends([(p.topic, p.partition) for p in lagging]) if lagging else {}
    for p in lagging:
        if p.next_offset >= ends.get((p.topic, p.partition), p.next_offset + 1):
            continue  # idle at its log end: nothing more to apply
        if p.last_event_time is None:
            return None
        bound = min(bound, p.last_event_time - grace)
    return bound


def floor_to_grid(t: datetime, size: timedelta) -> datetime:
    steps = (t - EPOCH) // size
    return EPOCH + steps * size


def closed_windows(
    start: datetime | None,
    first_change: datetime | None,
    closed: datetime,
    size: timedelta,
    *,
    windowed: bool,
    until: datetime | None = None,
) -> Iterator[Window]:
    """Closed windows to reconcile, oldest first.

    ``start`` is the watermark (None: nothing reconciled yet; the first window then starts at
    the beginning of time and ends at the grid boundary after ``first_change``). Windowed tables
    get one grid window at a time; tables without a change-time column get one window from the
    watermark to the last closed grid boundary (the whole table is compared by key range).
    ``until`` caps the end (``--to``)."""
    limit = floor_to_grid(closed, size)
    if until is not None:
        limit = min(limit, until)
    if not windowed:
        if start is None or start < limit:
            yield Window(start, limit)
        return
    if start is None:
        end = floor_to_grid(first_change, size) + size if first_change is not None else limit
        end = min(end, limit)
        if end <= EPOCH:
            return
        yield Window(None, end)
        start = end
    while start + size <= limit:
        yield Window(start, start + size)
        start = start + size


def kafka_log_ends(kafka: KafkaSettings, *, timeout_s: float | None = None) -> LogEnds:
    """A LogEnds backed by the Kafka admin client (created on first use); ``timeout_s`` bounds
    each request (default: the admin client's)."""
    from cdc_reconciler import wiring
    from cdc_reconciler.connectors.kafka.admin import KafkaAdmin

    admin: list[KafkaAdmin] = []

    def lookup(tps: list[TP]) -> dict[TP, int]:
        if not admin:
            admin.append(wiring.kafka_admin(kafka, timeout_s=timeout_s))
        ends: dict[TP, int] = admin[0].log_end_offsets(tps)
        return ends

    return lookup


def gap_windows(
    reconciled_through: datetime | None,
    closed: datetime | None,
    size: timedelta,
    *,
    first_change: datetime | None = None,
    limit: int | None = None,
) -> list[Window]:
    """The windows behind their closure time, newest first (the reconcile priority for people:
    recent gaps hold the freshest data back): grid windows from ``floor_to_grid(closed)`` back to
    the watermark (the oldest one partial when the watermark is off the grid). With no watermark
    the gap starts at the grid boundary before ``first_change``, or is one open-start window
    when that is unknown. ``limit`` caps the list (``windows_behind`` counts them all)."""
    if closed is None:
        return []
    end = floor_to_grid(closed, size)
    start = reconciled_through
    if start is None and first_change is not None:
        start = floor_to_grid(first_change, size)
    if start is None:
        return [Window(None, end)] if end > EPOCH else []
    out: list[Window] = []
    while end > start and (limit is None or len(out) < limit):
        lo = max(end - size, start)
        out.append(Window(lo, end))
        end = lo
    return out


def windows_behind(
    reconciled_through: datetime | None,
    closed: datetime | None,
    size: timedelta,
    *,
    first_change: datetime | None = None,
) -> int | None:
    """How many windows are closed but not reconciled (see gap_windows); None when there is no
    watermark and no first change to count from."""
    if closed is None:
        return 0
    start = reconciled_through
    if start is None and first_change is not None:
        start = floor_to_grid(first_change, size)
    if start is None:
        return None
    end = floor_to_grid(closed, size)
    return 0 if end <= start else -(-(end - start) // size)
