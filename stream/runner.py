"""The always-on consumer loop: consume a batch, hand it to the engine, then commit Kafka offsets.

Offsets are committed synchronously and only after the engine returned, i.e. after the target
committed the batch (DESIGN invariant 3). On assignment, each partition resumes from the applied
offset recorded in the target when that is ahead of Kafka's committed offset. Revocation happens
inside ``consume()``, between batches, so no batch is ever in flight when partitions move.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from cdc_reconciler.connectors.kafka import COMMIT_TIMEOUT_S, KafkaCallError, Record, raise_for
from cdc_reconciler.stream.checkpoint import applied_offsets
from cdc_reconciler.stream.engine import ApplyEngine, Interrupted
from cdc_reconciler.stream.metrics import Metrics
from cdc_reconciler.stream.outcomes import BatchOutcome, PartitionCounts

log = logging.getLogger(__name__)

# How often the loop logs its per-interval counts.
LOG_INTERVAL_S = 10.0
# With --stop-when-idle and no partition assigned, how much longer to wait for an assignment
# (a killed member holds its partitions until its session times out).
IDLE_UNASSIGNED_S = 60.0
# How often new topics matching the pattern are looked for (a new table's first events wait at
# most this long).
TOPIC_REFRESH_S = 10.0


@dataclass(slots=True)
class RunSummary:
    batches: int = 0
    totals: PartitionCounts = field(default_factory=PartitionCounts)
    stopped_by: str = ""
    # Wall-clock seconds (time.time) of the first record consumed and the last batch committed:
    # the apply rate is totals.consumed / (last_commit_at - first_record_at).
    first_record_at: float | None = None
    last_commit_at: float | None = None

    def rate(self) -> float | None:
        if self.first_record_at is None or self.last_commit_at is None:
            return None
        span = self.last_commit_at - self.first_record_at
        return self.totals.consumed / span if span > 0 else None


class Runner:
    def __init__(
        self,
        *,
        consumer: Consumer,
        engine: ApplyEngine,
        target: sa.Engine,
        group: str,
        topic_pattern: str,
        exclude_topics: frozenset[str] = frozenset(),
        batch_size: int,
        batch_timeout_s: float,
        metrics: Metrics | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._engine = engine
        self._target = target
        self._group = group
        # Topics are matched here with Python's re (not librdkafka's regex) so that the
        # dead-letter topic, which shares the prefix, is never consumed as a change topic.
        self._pattern = re.compile(topic_pattern)
        self._exclude = exclude_topics
        self._topics: list[str] = []
        self._batch_size = batch_size
        self._timeout = batch_timeout_s
        self._metrics = metrics
        self.stop = stop or threading.Event()
        self._clock = clock
        self.last_loop = clock()
        self.assigned: set[tuple[str, int]] = set()
        self.assigned_at = clock()
        # One writer thread: batches are applied one at a time, in consumption order.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdcr-writer")
        self._inflight: Future[BatchOutcome] | None = None
        self._summary = RunSummary()
        self._interval = PartitionCounts()

    # ------------------------------------------------------------------ rebalance callbacks
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._metrics:
            self._metrics.rebalances.labels("assign").inc()
        wanted = [(p.topic, p.partition) for p in partitions]
        with self._target.connect() as conn:
            db = applied_offsets(conn, self._group, wanted)
        committed = {
            (p.topic, p.partition): p.offset
            for p in consumer.committed(partitions, timeout=COMMIT_TIMEOUT_S)
        }
        for p in partitions:
            k = (p.topic, p.partition)
            ours = db.get(k)
            if ours is not None and ours > committed.get(k, -1):
                log.info(
                    "resuming %s[%d] at applied offset %d (Kafka committed %d)",
                    p.topic,
                    p.partition,
                    ours,
                    committed.get(k, -1),
                )
                p.offset = ours
        consumer.incremental_assign(partitions)
        self.assigned.update(wanted)
        self.assigned_at = self._clock()
        log.info("assigned %d partitions", len(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._metrics:
            self._metrics.rebalances.labels("revoke").inc()
        # The batch in flight may hold records of these partitions: let it commit (and commit
        # its offsets) before the partitions move, so the next owner resumes after it.
        self._finish_inflight()
        self.assigned.difference_update((p.topic, p.partition) for p in partitions)
        log.info("revoked %d partitions", len(partitions))

    # ------------------------------------------------------------------ loop
    def run(self, *, stop_when_idle_s: float | None = None) -> RunSummary:
        """Consume until ``stop`` is set (SIGTERM), or until no record arrived for
        ``stop_when_idle_s`` seconds. Raises KafkaCallError on a fatal Kafka error.

        Pipelined: while batch N is written to the target (in the writer thread), batch N+1 is
        consumed and prepared (decoded, deduplicated, collapsed) here. Batches are written one
        at a time, in order, and each batch's offsets are committed to Kafka only after its
        transaction committed. A revocation waits for the batch in flight first."""
        summary = self._summary = RunSummary()
        self._interval = PartitionCounts()
        last_log = last_record = self._clock()
        last_refresh = -TOPIC_REFRESH_S
        try:
            while not self.stop.is_set():
                self.last_loop = now = self._clock()
                if now - last_refresh >= TOPIC_REFRESH_S:
                    self._refresh_subscription()
                    last_refresh = now
                if not self._topics:
                    self.stop.wait(min(1.0, self._timeout))
                    if stop_when_idle_s is not None and self._idle(
                        now, last_record, stop_when_idle_s
                    ):
                        summary.stopped_by = "idle"
                        break
                    continue
                msgs = self._consumer.consume(num_messages=self._batch_size, timeout=self._timeout)
                records = self._records(msgs)
                if records:
                    last_record = now
                    if summary.first_record_at is None:
                        summary.first_record_at = time.time()
                    prepared = self._engine.prepare(records)
                    if not self._finish_inflight():
                        break
                    self._inflight = self._writer.submit(self._engine.apply, prepared)
                else:
                    if not self._finish_inflight():
                        break
                    if stop_when_idle_s is not None and self._idle(
                        now, last_record, stop_when_idle_s
                    ):
                        summary.stopped_by = "idle"
                        break
                if now - last_log >= LOG_INTERVAL_S:
                    _log_interval(self._interval)
                    self._interval = PartitionCounts()
                    last_log = now
            else:
                summary.stopped_by = "signal"
            self._finish_inflight()  # a stop lets the batch in flight commit (or be interrupted)
        finally:
            _log_interval(self._interval)
            self._writer.shutdown(wait=True)
            self._consumer.close()
        return summary

    def _finish_inflight(self) -> bool:
        """Wait for the batch being written, then commit its offsets. False when the writer was
        interrupted by a stop while the target was unavailable (nothing of it committed)."""
        fut, self._inflight = self._inflight, None
        if fut is None:
            return True
        try:
            outcome = fut.result()
        except Interrupted:
            self._summary.stopped_by = "signal"
            return False
        self._commit(outcome.partitions)
        self._summary.last_commit_at = time.time()
        self._summary.batches += 1
        total = outcome.total()
        self._summary.totals.merge(total)
        self._interval.merge(total)
        return True

    def _idle(self, now: float, last_record: float, idle_s: float) -> bool:
        """Caught up: nothing arrived for idle_s since the last record and the last assignment.
        Without any assignment (e.g. a dead member's session has not expired yet) wait longer,
        up to IDLE_UNASSIGNED_S, before calling it idle."""
        quiet = now - max(last_record, self.assigned_at)
        if self.assigned:
            return quiet >= idle_s
        return quiet >= idle_s + IDLE_UNASSIGNED_S

    def matching_topics(self) -> list[str]:
        try:
            meta = self._consumer.list_topics(timeout=COMMIT_TIMEOUT_S)
        except KafkaException as exc:
            raise_for("listing topics", exc)
        return sorted(
            t
            for t in meta.topics
            if self._pattern.search(t) and t not in self._exclude and not t.startswith("_")
        )

    def _refresh_subscription(self) -> None:
        topics = self.matching_topics()
        if topics != self._topics:
            if topics:
                self._consumer.subscribe(
                    topics,
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_revoke,
                )
                log.info("subscribed to %d topics: %s", len(topics), ", ".join(topics[:10]))
            self._topics = topics

    def _records(self, msgs: list) -> list[Record]:  # type: ignore[type-arg]
        out: list[Record] = []
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(Record.from_message(m))
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise KafkaCallError("fatal consumer error", err)
            else:
                log.warning("consumer error (retriable, librdkafka retries): %s", err.str())
        return out

    def _commit(self, partitions: dict[tuple[str, int], PartitionCounts]) -> None:
        offsets = [
            TopicPartition(t, p, c.next_offset)
            for (t, p), c in partitions.items()
            if c.next_offset >= 0
        ]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Safe: the applied offsets are in the target, and on reassignment we resume from
            # them; at worst records are redelivered, which the position guard makes harmless.
            log.warning("offset commit failed (%s); the target's applied offsets stand", exc)


def _log_interval(c: PartitionCounts) -> None:
    if c.consumed:
        log.info(
            "consumed=%d applied=%d duplicate=%d stale=%d dead_lettered=%d noop=%d",
            c.consumed,
            c.applied,
            c.skipped_duplicate,
            c.skipped_stale,
            c.dead_lettered,
            c.skipped_noop,
        )
