"""Re-apply a time range of change events from Kafka through the same apply engine.

Contract:
- Its own consumer, assigned (not subscribed) to the partitions of the matching topics, with a
  throwaway group id and no offset commits: the live consumer group is never disturbed.
- Each partition starts at the first offset whose Kafka record time is >= ``start``
  (``offsets_for_times``) and is read until a record's time is >= ``end``, or up to the log end
  seen when the replay started. Kafka record time is when Kafka Connect produced the event, within
  moments of the change's commit.
- Records go through :class:`ApplyEngine` in batches: versioned writes, so replaying a past
  window after newer changes were applied leaves the newer data intact. No applied offsets are written (they belong to the
  live group). Redis is not consulted: a replay exists to re-apply changes the target may have
  lost after they were processed, so only the position guard decides. With ``dry_run`` every
  transaction is rolled back and the outcome says what would have applied.
- Raises CdcrError (KafkaCallError with the Kafka code) when Kafka cannot answer.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from cdc_reconciler.config import Settings
from cdc_reconciler.connectors.kafka import COMMIT_TIMEOUT_S, Record, make_consumer, raise_for
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.command import build_engine
from cdc_reconciler.stream.outcomes import OUTCOMES, PartitionCounts

# A partition that returns nothing for this long while below its end is reported, not waited on
# forever (e.g. records deleted by retention between planning and reading).
STALL_TIMEOUT_S = 30.0


@dataclass(slots=True)
class PartitionPlan:
    topic: str
    partition: int
    start: int
    end: int  # exclusive: the log end when the replay started

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


@dataclass(slots=True)
class ReplayResult:
    partitions: list[PartitionPlan]
    totals: PartitionCounts = field(default_factory=PartitionCounts)
    by_table: dict[str, dict[str, int]] = field(default_factory=dict)
    read_past_end: int = 0  # records at or after `end`, seen and not applied
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
    """Start offsets by timestamp and end offsets (log end now) for every partition."""
    meta = consumer.list_topics(timeout=COMMIT_TIMEOUT_S)
    start_ms = int(start.timestamp() * 1000)
    tps = [
        TopicPartition(t, p, start_ms) for t in topics for p in sorted(meta.topics[t].partitions)
    ]
    if not tps:
        return []
    try:
        found = consumer.offsets_for_times(tps, timeout=COMMIT_TIMEOUT_S)
        plans = []
        for tp in found:
            if tp.error is not None:
                raise CdcrError(f"offsets_for_times {tp.topic}[{tp.partition}]: {tp.error}")
            _lo, hi = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=COMMIT_TIMEOUT_S
            )
            first = hi if tp.offset in (OFFSET_END, -1) else tp.offset
            plans.append(PartitionPlan(tp.topic, tp.partition, first, hi))
    except KafkaException as exc:
        raise_for("planning the replay", exc)
    del end
    return plans


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
    consumer = make_consumer(
        settings.kafka,
        group_id=f"cdcr-replay-{uuid.uuid4().hex[:12]}",
        extra={"enable.partition.eof": True},
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
            topic, partition = m.topic(), m.partition()
            if topic is None or partition is None:
                continue  # a client-wide event, not of a partition being replayed
            key = (topic, partition)
            plan = open_parts.get(key)
            if plan is None:
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    _close(consumer, open_parts, key)
                continue
            offset = m.offset()
            if offset is None:  # librdkafka gives every message without an error an offset
                raise CdcrError(f"replay: a message of {topic}[{partition}] has no offset")
            ts_type, ts = m.timestamp()
            if offset >= plan.end or (ts_type != 0 and ts >= end_ms):
                result.read_past_end += 1
                _close(consumer, open_parts, key)
                continue
            batch.append(Record(topic, partition, offset, m.key(), m.value()))
            if offset + 1 >= plan.end:
                _close(consumer, open_parts, key)
        if batch:
            outcome = engine.process(batch)
            for c in outcome.partitions.values():
                result.totals.merge(c)
            for table, counts in outcome.by_table.items():
                mine = result.by_table.setdefault(table, {})
                for k, v in counts.items():
                    mine[k] = mine.get(k, 0) + v
            done += len(batch)
            last_progress = time.monotonic()
            if progress:
                progress(done, total)
        elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
            result.incomplete = [f"{t}[{p}]" for t, p in open_parts]
            break


def _close(
    consumer: Consumer, open_parts: dict[tuple[str, int], PartitionPlan], key: tuple[str, int]
) -> None:
    if open_parts.pop(key, None) is not None:
        consumer.incremental_unassign([TopicPartition(key[0], key[1])])
