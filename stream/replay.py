"""Re-apply a time range of change events from Kafka through the same apply engine.

Contract:
- Its own consumer, assigned (not subscribed) to the partitions of the matching topics, with a
  throwaway group id and no offset commits: the live consumer group is never disturbed.
- Each partition starts at the first offset whose Kafka record time is >= ``start``
  (``offsets_for_times``) and ends before the first offset whose record time is >= ``end``, or at
  the log end seen when the replay started; reading also stops at the first record whose time is
  >= ``end`` (record times need not grow with offsets). Kafka record time is when Kafka Connect produced the event, within
  moments of the change's commit.
- Records go through :class:`ApplyEngine` in batches: versioned writes, so replaying a past
  window after newer changes were applied leaves the newer data intact. No applied offsets are written (they belong to the
  live group). Redis is not consulted: a replay exists to re-apply changes the target may have
  lost after they were processed, so only the position guard decides. With ``dry_run`` every
  transaction is rolled back and the outcome says what would have applied.
- Raises CdcrError (KafkaEdgeError with the Kafka code) when Kafka cannot answer.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from cdc_reconciler import wiring
from cdc_reconciler.config import Settings
from cdc_reconciler.connectors.kafka import (
    COMMIT_TIMEOUT_S,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Record,
    TopicPartition,
    raise_for,
)
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.command import build_engine
from cdc_reconciler.stream.outcomes import OUTCOMES, BatchOutcome, PartitionCounts

# A partition that returns nothing for this long while below its end is reported, not waited on
# forever (e.g. records deleted by retention between planning and reading).
STALL_TIMEOUT_S = 30.0


@dataclass(slots=True)
class PartitionPlan:
    topic: str
    partition: int
    start: int
    end: int  # exclusive: the first offset at or after `end` time, else the log end at start

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


@dataclass(slots=True)
class ReplayResult:
    partitions: list[PartitionPlan]
    totals: PartitionCounts = field(default_factory=PartitionCounts)
    by_table: dict[str, dict[str, int]] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        t = self.totals
        return {
            "partitions": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "start_offset": p.start,
                    "end_offset": p.end,
                }
                for p in self.partitions
            ],
            "consumed": t.consumed,
            **{o: getattr(t, o) for o in OUTCOMES},
            "by_table": {k: {o: v.get(o, 0) for o in OUTCOMES} for k, v in self.by_table.items()},
            "incomplete": self.incomplete,
        }


def topics_for(consumer: Consumer, settings: Settings, tables: list[str]) -> list[str]:
    try:
        meta = consumer.list_topics(timeout=COMMIT_TIMEOUT_S)
    except KafkaException as exc:
        raise_for("listing topics", exc)
    pattern = re.compile(settings.kafka.topic_pattern)
    dlq = settings.kafka.dlq_topic()
    wanted = {t.lower() for t in tables}
    out = []
    for t in sorted(meta.topics):
        if not pattern.search(t) or t == dlq or t.startswith("_"):
            continue
        if wanted and ".".join(t.split(".")[-2:]).lower() not in wanted:
            continue
        out.append(t)
    return out


def plan_partitions(
    consumer: Consumer, topics: list[str], start: datetime, end: datetime
) -> list[PartitionPlan]:
    """For every partition: the first offset with record time >= ``start`` and the first with
    record time >= ``end`` (exclusive end), each capped at the log end now."""
    meta = consumer.list_topics(timeout=COMMIT_TIMEOUT_S)
    parts = [(t, p) for t in topics for p in sorted(meta.topics[t].partitions)]
    if not parts:
        return []
    try:
        firsts = _offsets_at(consumer, parts, start)
        lasts = _offsets_at(consumer, parts, end)
        plans = []
        for t, p in parts:
            _lo, hi = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=COMMIT_TIMEOUT_S)
            first, last = firsts[(t, p)], lasts[(t, p)]
            plans.append(
                PartitionPlan(
                    t,
                    p,
                    hi if first is None else min(first, hi),
                    hi if last is None else min(last, hi),
                )
            )
    except KafkaException as exc:
        raise_for("planning the replay", exc)
    return plans


def _offsets_at(
    consumer: Consumer, parts: list[tuple[str, int]], at: datetime
) -> dict[tuple[str, int], int | None]:
    """The first offset whose record time is >= ``at`` per partition; None when there is none
    (every record is older)."""
    at_ms = int(at.timestamp() * 1000)
    found = consumer.offsets_for_times(
        [TopicPartition(t, p, at_ms) for t, p in parts], timeout=COMMIT_TIMEOUT_S
    )
    out: dict[tuple[str, int], int | None] = {}
    for tp in found:
        if tp.error is not None:
            raise CdcrError(f"offsets_for_times {tp.topic}[{tp.partition}]: {tp.error}")
        out[(tp.topic, tp.partition)] = None if tp.offset in (OFFSET_END, -1) else tp.offset
    return out


def replay(
    settings: Settings,
    start: datetime,
    end: datetime,
    *,
    tables: list[str] | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> ReplayResult:
    """Re-apply records with Kafka time in [start, end). ``progress(done, total)`` is called
    after every batch. See the module docstring for the contract."""
    if end <= start:
        raise CdcrError(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    stop = stop or threading.Event()
    consumer = wiring.kafka_consumer(
        settings.kafka,
        group_id=f"cdcr-replay-{uuid.uuid4().hex[:12]}",
        overrides={"enable.partition.eof": True},
    )
    parts = None
    try:
        topics = topics_for(consumer, settings, tables or [])
        if not topics:
            raise CdcrError(
                f"no topic matches {settings.kafka.topic_pattern!r}"
                + (f" and tables {tables}" if tables else "")
            )
        plans = plan_partitions(consumer, topics, start, end)
        result = ReplayResult(plans)
        todo = [p for p in plans if p.size > 0]
        total = sum(p.size for p in todo)
        if not todo:
            return result
        parts = build_engine(settings, create_missing=False, group=None, stop=stop, use_redis=False)
        parts.engine.dry_run = dry_run
        consumer.incremental_assign([TopicPartition(p.topic, p.partition, p.start) for p in todo])
        _read(
            consumer, todo, int(end.timestamp() * 1000), parts.engine, result, total, progress, stop
        )
        return result
    finally:
        consumer.close()
        if parts is not None:
            parts.ids.close()
            parts.target.dispose()


def _read(
    consumer: Consumer,
    todo: list[PartitionPlan],
    end_ms: int,
    engine: object,
    result: ReplayResult,
    total: int,
    progress: Callable[[int, int], None] | None,
    stop: threading.Event,
) -> None:
    import time

    from cdc_reconciler.stream.engine import ApplyEngine

    assert isinstance(engine, ApplyEngine)
    open_parts = {(p.topic, p.partition): p for p in todo}
    done = 0
    last_progress = time.monotonic()
    while open_parts and not stop.is_set():
        msgs = consumer.consume(num_messages=5000, timeout=1.0)
        batch: list[Record] = []
        for m in msgs:
            record = _take(consumer, open_parts, m, end_ms)
            if record is not None:
                batch.append(record)
        if batch:
            _merge(result, engine.process(batch))
            done += len(batch)
            last_progress = time.monotonic()
            if progress:
                progress(done, total)
        elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
            result.incomplete = [f"{t}[{p}]" for t, p in open_parts]
            break


def _take(
    consumer: Consumer,
    open_parts: dict[tuple[str, int], PartitionPlan],
    m: Message,
    end_ms: int,
) -> Record | None:
    """The record of ``m`` when it is to be replayed, else None; closes ``m``'s partition at
    its end (EOF, the planned end offset or the first record at or after ``end_ms``)."""
    topic, partition = m.topic(), m.partition()
    if topic is None or partition is None:
        return None  # a client-wide event, not of a partition being replayed
    key = (topic, partition)
    plan = open_parts.get(key)
    if plan is None:
        return None
    err = m.error()
    if err is not None:
        if err.code() == KafkaError._PARTITION_EOF:
            _close(consumer, open_parts, key)
        return None
    offset = m.offset()
    if offset is None:  # librdkafka gives every message without an error an offset
        raise CdcrError(f"replay: a message of {topic}[{partition}] has no offset")
    ts_type, ts = m.timestamp()
    if offset >= plan.end or (ts_type != 0 and ts >= end_ms):
        _close(consumer, open_parts, key)
        return None
    record = Record(topic, partition, offset, m.key(), m.value())
    if offset + 1 >= plan.end:
        _close(consumer, open_parts, key)
    return record


def _merge(result: ReplayResult, outcome: BatchOutcome) -> None:
    """Add a batch's outcome to the replay's totals and per-table counts."""
    for c in outcome.partitions.values():
        result.totals.merge(c)
    for table, counts in outcome.by_table.items():
        mine = result.by_table.setdefault(table, {})
        for k, v in counts.items():
            mine[k] = mine.get(k, 0) + v


def _close(
    consumer: Consumer, open_parts: dict[tuple[str, int], PartitionPlan], key: tuple[str, int]
) -> None:
    if open_parts.pop(key, None) is not None:
        consumer.incremental_unassign([TopicPartition(key[0], key[1])])
