"""The always-on consumer loop: consume a batch, hand it to the engine, then commit Kafka offsets.

Offsets are committed synchronously and only after the engine returned, i.e. after the target
committed the batch (DESIGN invariant 3). On assignment, each partition resumes from the applied
offset recorded in the target when that is ahead of Kafka's committed offset. Revocation happens
inside ``consume()``, between batches, so no batch is ever in flight when partitions move.

Failure policy of the loop (docs/operations.md):
- Kafka errors are transient unless :func:`is_fatal` says otherwise (authentication,
  authorisation, librdkafka fatal): a broker outage of any length marks Kafka down (logged once
  per change of state, ``cdcr_kafka_up``), the loop keeps its subscription and polls on, and it
  resumes by itself when the broker returns. A failed offset commit is harmless: the target's
  applied offsets stand and the next owner resumes from them.
- The progress watchdog: a batch in flight with nothing committed for ``stall_s`` while the target
  is not known to be down is a stall; ``on_stall`` drops the batch's stuck database connection,
  the engine's retry sends the batch again, and ``cdcr_stalls_total`` counts it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from cdc_reconciler.connectors.kafka import (
    COMMIT_TIMEOUT_S,
    METADATA_TIMEOUT_S,
    Consumer,
    KafkaEdgeError,
    KafkaError,
    KafkaException,
    Record,
    TopicPartition,
    error_of,
    is_fatal,
)
from cdc_reconciler.errors import CdcrError, db_error_line
from cdc_reconciler.store.offsets import applied_offsets
from cdc_reconciler.stream.dead_letters import Stopped
from cdc_reconciler.stream.engine import RETRY_INITIAL_S, ApplyEngine, Interrupted, Prepared
from cdc_reconciler.stream.metrics import Dependency, Metrics
from cdc_reconciler.stream.outcomes import BatchOutcome, PartitionCounts
from cdc_reconciler.stream.timing import Timing

log = logging.getLogger(__name__)

# How often the loop logs its per-interval counts.
LOG_INTERVAL_S = 10.0
# With --stop-when-idle and no partition assigned, how much longer to wait for an assignment
# (a killed member holds its partitions until its session times out).
IDLE_UNASSIGNED_S = 60.0
# How often new topics matching the pattern are looked for (a new table's first events wait at
# most this long).
TOPIC_REFRESH_S = 10.0
# While the broker is down, its metadata is asked for this often (noticing its return).
DOWN_REFRESH_S = 2.0
# How often the loop looks at the batch in flight while it waits for it (the watchdog's tick).
WAIT_TICK_S = 1.0
# Backoff of the assignment callback while the target cannot give the applied offsets.
ASSIGN_RETRY_MAX_S = 10.0
# A rebalance callback as confluent-kafka calls it.
_Rebalance = Callable[[Consumer, list[TopicPartition]], None]
# librdkafka errors that mean "no broker answers" (as opposed to one partition's trouble).
_DOWN_CODES = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError._WAIT_COORD,
    }
)


@dataclass(slots=True)
class _LoopClock:
    """When the run loop last logged, received a record, and refreshed its subscription."""

    last_log: float
    last_record: float
    last_refresh: float


@dataclass(slots=True)
class RunSummary:
    batches: int = 0
    totals: PartitionCounts = field(default_factory=PartitionCounts)
    stopped_by: str = ""
    # Wall-clock seconds (time.time) of the first record consumed and the last batch committed:
    # the apply rate is totals.consumed / (last_commit_at - first_record_at).
    first_record_at: float | None = None
    last_commit_at: float | None = None
    # Wall time per stage summed over the run's batches (stream/timing.py).
    timing: Timing = field(default_factory=Timing)

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
        kafka: Dependency | None = None,
        target_state: Dependency | None = None,
        stall_s: float = 90.0,
        on_stall: Callable[[], int] = lambda: 0,
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
        self._inflight_batch: Prepared | None = None
        # Wall time of the consume() calls since the last batch was handed to the writer.
        self._kafka_wait = 0.0
        self._inflight_since: float | None = None
        self._last_stall = 0.0
        self._summary = RunSummary()
        self._interval = PartitionCounts()
        self.kafka = kafka or Dependency("kafka", metrics.kafka_up if metrics else None)
        self.target_state = target_state or Dependency(
            "target", metrics.target_up if metrics else None
        )
        self._stall_s = stall_s
        self._on_stall = on_stall
        self.stalls = 0
        # A fatal error reported by librdkafka's error callback, raised by the loop.
        self._fatal: KafkaError | None = None
        # librdkafka reported trouble: ask the broker for metadata at once. Only that answer
        # changes the Kafka state (error callbacks arrive late and per connection, so they
        # would flap the state after the broker is back).
        self._suspect = False
        self._warned_no_topics = False

    # ------------------------------------------------------------------ health
    def inflight_for(self) -> float:
        """Seconds the batch being written has waited without progress (0 without one): since
        it was handed to the writer, or since the target last came back, whichever is later (a
        batch retried through an outage is not stalled the moment the target returns)."""
        since = self._inflight_since
        if since is None:
            return 0.0
        if self.target_state.up:
            since = max(since, self.target_state.since)
        return max(0.0, self._clock() - since)

    def partitions(self) -> int:
        return len(self.assigned)

    def kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (``error_cb``), served from the loop's consume()."""
        if is_fatal(err):
            self._fatal = err
        elif err.code() in _DOWN_CODES:
            self._suspect = True
            log.debug("Kafka client error (transient): %s", err.str())
        else:
            log.warning("Kafka client error (transient, retried by librdkafka): %s", err.str())

    # ------------------------------------------------------------------ rebalance callbacks
    def _guarded(self, kind: str, callback: _Rebalance) -> _Rebalance:
        """``callback`` as librdkafka calls it, from inside consume(), where an exception would
        end the loop. A target outage in it is handled by the engine's retry policy (logged,
        counted in ``cdcr_db_retries_total``, backed off, ``Interrupted`` on stop) and the callback
        is run again; a stop, a CdcrError and a Kafka error reach the loop as they are (its own
        handling); anything else ends the run as a CdcrError naming the callback (FAILED at the
        CLI, never a traceback). Re-running is safe: nothing is assigned or revoked until the
        callback's last step."""

        def run(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            if self._metrics:
                self._metrics.rebalances.labels(kind).inc()
            delay = RETRY_INITIAL_S
            while True:
                try:
                    callback(consumer, partitions)
                    return
                except DBAPIError as exc:
                    self.target_state.mark_down(f"{kind} callback: {exc.orig}")
                    self._engine.wait_out_target(exc, delay)
                    delay = min(delay * 2, ASSIGN_RETRY_MAX_S)
                except (CdcrError, KafkaException):
                    raise
                except Exception as exc:
                    raise CdcrError(f"rebalance ({kind}) failed: {db_error_line(exc)}") from exc

        return run

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        wanted = [(p.topic, p.partition) for p in partitions]
        db = self._applied_offsets(wanted)
        try:
            committed = {
                (p.topic, p.partition): p.offset
                for p in consumer.committed(partitions, timeout=COMMIT_TIMEOUT_S)
            }
        except KafkaException as exc:
            if is_fatal(error_of(exc)):
                raise
            # Resuming from the target's applied offsets is always safe (at worst a redelivery).
            log.warning("committed offsets unavailable (%s); resuming from the target's", exc)
            committed = {}
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

    def _applied_offsets(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The target's applied offsets (a target outage is waited out by :meth:`_guarded`)."""
        with self._target.connect() as conn:
            got: dict[tuple[str, int], int] = applied_offsets(conn, self._group, wanted)
        self.target_state.mark_up()
        return got

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The batch in flight may hold records of these partitions: let it commit (and commit
        # its offsets) before the partitions move, so the next owner resumes after it.
        self._finish_inflight()
        self.assigned.difference_update((p.topic, p.partition) for p in partitions)
        log.info("revoked %d partitions", len(partitions))

    # ------------------------------------------------------------------ loop
    def run(self, *, stop_when_idle_s: float | None = None) -> RunSummary:
        """Consume until ``stop`` is set (SIGTERM), or until no record arrived for
        ``stop_when_idle_s`` seconds. Raises KafkaEdgeError on a fatal Kafka error.

        Pipelined: while batch N is written to the target (in the writer thread), batch N+1 is
        consumed and prepared (decoded, deduplicated, collapsed) here. Batches are written one
        at a time, in order, and each batch's offsets are committed to Kafka only after its
        transaction committed. A revocation waits for the batch in flight first."""
        summary = self._summary = RunSummary()
        self._interval = PartitionCounts()
        start = self._clock()
        loop = _LoopClock(last_log=start, last_record=start, last_refresh=-TOPIC_REFRESH_S)
        try:
            while not self.stop.is_set():
                if not self._turn(loop, stop_when_idle_s):
                    break
            else:
                summary.stopped_by = "signal"
            self._finish_inflight()  # a stop lets the batch in flight commit (or be interrupted)
        finally:
            self._close(summary)
        return summary

    def _turn(self, loop: _LoopClock, stop_when_idle_s: float | None) -> bool:
        """One pass of the loop (one batch at most). False to stop; ``stopped_by`` says why."""
        self.last_loop = now = self._clock()
        if self._fatal is not None:
            raise KafkaEdgeError.wrap("fatal Kafka error", self._fatal)
        every = TOPIC_REFRESH_S if self.kafka.up and not self._suspect else DOWN_REFRESH_S
        if now - loop.last_refresh >= every:
            self._suspect = False
            self._refresh_subscription()
            loop.last_refresh = now
        if not self._topics:
            self.stop.wait(min(1.0, self._timeout))
            return not self._stop_if_idle(now, loop.last_record, stop_when_idle_s)
        records = self._consume()
        if records:
            loop.last_record = now
            if not self._hand_over(records):
                return False
        elif not self._finish_inflight() or self._stop_if_idle(
            now, loop.last_record, stop_when_idle_s
        ):
            return False
        if now - loop.last_log >= LOG_INTERVAL_S:
            _log_interval(self._interval)
            self._interval = PartitionCounts()
            loop.last_log = now
        return True

    def _hand_over(self, records: list[Record]) -> bool:
        """Prepare the batch consumed, wait for the one in flight, then hand this one to the
        writer. False when a stop came in between."""
        if self._summary.first_record_at is None:
            self._summary.first_record_at = time.time()
        try:
            prepared = self._engine.prepare(records)
        except (Stopped, Interrupted):  # Interrupted: stopped while waiting out a target outage
            # (prepare resolves tables in the target); the batch in flight is finished on the way out
            self._summary.stopped_by = "signal"
            return False
        if not self._finish_inflight():
            return False
        prepared.timing.kafka_wait += self._kafka_wait
        self._kafka_wait = 0.0
        self._inflight_since = self._clock()
        self._inflight_batch = prepared
        self._inflight = self._writer.submit(self._engine.apply, prepared)
        return True

    def _stop_if_idle(self, now: float, last_record: float, idle_s: float | None) -> bool:
        """Whether to stop for having had no record for ``idle_s`` seconds (then says so)."""
        if idle_s is not None and self._idle(now, last_record, idle_s):
            self._summary.stopped_by = "idle"
            return True
        return False

    def _close(self, summary: RunSummary) -> None:
        """Log the last interval and the timing, then close the writer, engine and consumer."""
        _log_interval(self._interval)
        if summary.batches:
            log.info(
                "timing over %d batches (seconds of wall time per stage): %s",
                summary.batches,
                json.dumps(summary.timing.as_json()),
            )
        self._writer.shutdown(wait=True)
        self._engine.close()
        self._consumer.close()

    def _finish_inflight(self) -> bool:
        """Wait for the batch being written, then commit its offsets. False when the writer was
        interrupted by a stop while the target was unavailable (nothing of it committed)."""
        fut, self._inflight = self._inflight, None
        batch, self._inflight_batch = self._inflight_batch, None
        if fut is None:
            return True
        timing = batch.timing if batch is not None else Timing()
        t0 = time.perf_counter()
        try:
            while True:
                try:
                    outcome = fut.result(timeout=WAIT_TICK_S)
                    break
                except TimeoutError:
                    self._watchdog()
        except (Interrupted, Stopped):
            self._summary.stopped_by = "signal"
            return False
        finally:
            self._inflight_since = None
            t1 = time.perf_counter()
            timing.writer_wait += t1 - t0
        self.target_state.mark_up()
        self._commit(outcome.partitions)
        timing.offset_commit += time.perf_counter() - t1
        self._summary.last_commit_at = time.time()
        self._summary.batches += 1
        total = outcome.total()
        self._summary.totals.merge(total)
        self._summary.timing.merge(timing)
        self._interval.merge(total)
        log.debug("batch %d: %d records; %s", self._summary.batches, total.consumed, timing.line())
        return True

    def _watchdog(self) -> None:
        """Called while the loop waits for the batch in flight: past ``stall_s`` with nothing
        committed, and the target not known to be down (then it is an outage the engine is
        already retrying), drop the batch's connection so the engine retries it."""
        now = self._clock()
        waited = self.inflight_for()
        if waited < self._stall_s or now - self._last_stall < self._stall_s:
            return
        if not self.target_state.up:
            return
        self._last_stall = now
        self.stalls += 1
        if self._metrics:
            self._metrics.stalls.inc()
        dropped = self._on_stall()
        log.error(
            "stalled: records waiting and no batch committed for %.0fs; dropped %d stuck "
            "database connection(s), the batch is retried",
            waited,
            dropped,
        )

    def _idle(self, now: float, last_record: float, idle_s: float) -> bool:
        """Caught up: nothing arrived for idle_s since the last record and the last assignment.
        Without any assignment (e.g. a dead member's session has not expired yet) wait longer,
        up to IDLE_UNASSIGNED_S, before calling it idle."""
        quiet = now - max(last_record, self.assigned_at)
        if self.assigned:
            return quiet >= idle_s
        return quiet >= idle_s + IDLE_UNASSIGNED_S

    def matching_topics(self) -> list[str] | None:
        """The topics the pattern matches; None while the broker does not answer (transient).
        Raises KafkaEdgeError on a fatal error."""
        try:
            meta = self._consumer.list_topics(timeout=METADATA_TIMEOUT_S)
        except KafkaException as exc:
            err = error_of(exc)
            if is_fatal(err):
                raise KafkaEdgeError.wrap("listing topics", err) from exc
            self.kafka.mark_down(f"listing topics: {err.str() if err else exc}")
            return None
        self.kafka.mark_up()
        return sorted(
            t
            for t in meta.topics
            if self._pattern.search(t) and t not in self._exclude and not t.startswith("_")
        )

    def _refresh_subscription(self) -> None:
        topics = self.matching_topics()
        if topics is None:  # the broker is down: keep the subscription we have
            return
        if not topics and not self._warned_no_topics:
            # Not fatal: a connector registered after `cdcr run` starts creates its topics later.
            log.warning(
                "no topic matches %r yet; waiting for one (is the connector registered?)",
                self._pattern.pattern,
            )
            self._warned_no_topics = True
        if topics != self._topics:
            if topics:
                self._consumer.subscribe(
                    topics,
                    on_assign=self._guarded("assign", self._on_assign),
                    on_revoke=self._guarded("revoke", self._on_revoke),
                    on_lost=self._guarded("revoke", self._on_revoke),
                )
                log.info("subscribed to %d topics: %s", len(topics), ", ".join(topics[:10]))
            self._topics = topics

    def _consume(self) -> list[Record]:
        t0 = time.perf_counter()
        try:
            msgs = self._consumer.consume(num_messages=self._batch_size, timeout=self._timeout)
        except Interrupted:  # the assignment callback, stopped during a target outage
            return []
        except KafkaException as exc:
            err = error_of(exc)
            if is_fatal(err):
                raise KafkaEdgeError.wrap("consuming", err) from exc
            self.kafka.mark_down(f"consuming: {err.str() if err else exc}")
            self.stop.wait(min(1.0, self._timeout))
            return []
        finally:
            self._kafka_wait += time.perf_counter() - t0
        return self._records(msgs)

    def _records(self, msgs: list) -> list[Record]:  # type: ignore[type-arg]
        out: list[Record] = []
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(Record.from_message(m))
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif is_fatal(err):
                raise KafkaEdgeError.wrap("fatal consumer error", err)
            elif err.code() in _DOWN_CODES:
                self._suspect = True
            else:
                log.warning("consumer error (retriable, librdkafka retries): %s", err.str())
        if out:
            self.kafka.mark_up()
        return out

    def _commit(self, partitions: dict[tuple[str, int], PartitionCounts]) -> None:
        """Commit the batch's offsets to Kafka (after the target committed them). Never blocks;
        a failure is harmless: the target's applied offsets are the truth, and on assignment
        the loop resumes from them when they are ahead (at worst a redelivery, which the
        position guard makes harmless)."""
        offsets = [
            TopicPartition(t, p, c.next_offset)
            for (t, p), c in partitions.items()
            if c.next_offset >= 0
        ]
        if not offsets:
            return
        try:
            # Asynchronous: a synchronous commit has no timeout and, with the broker gone
            # mid-commit, held the loop (and a SIGTERM) for good. The result arrives in
            # committed(), served by consume(); close() waits for commits still in flight.
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            err = error_of(exc)
            if is_fatal(err):
                raise KafkaEdgeError.wrap("committing offsets", err) from exc
            if err is not None and err.code() in _DOWN_CODES:
                self._suspect = True
            # Safe: the applied offsets are in the target, and on reassignment we resume from
            # them; at worst records are redelivered, which the position guard makes harmless.
            log.warning("offset commit failed (%s); the target's applied offsets stand", exc)

    def committed(self, err: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        """librdkafka's commit callback (``on_commit``), served from the loop's consume()."""
        if err is None:
            self.kafka.mark_up()
        elif is_fatal(err):
            self._fatal = err
        elif err.code() == KafkaError._NO_OFFSET:
            return
        else:
            if err.code() in _DOWN_CODES:
                self._suspect = True
            # Safe: see _commit.
            log.warning("offset commit failed (%s); the target's applied offsets stand", err.str())


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
