"""The apply engine: one batch of Kafka records in, the target updated, every record accounted for.

Per batch (DESIGN, data flow):
decode -> drop change IDs Redis already holds -> collapse to the newest change per key ->
ONE transaction: versioned upserts/deletes/truncates + dead letters + applied offsets -> COMMIT ->
record the IDs in Redis. The caller (the consumer loop, replay, the Faust agent) commits Kafka
offsets after :meth:`ApplyEngine.process` returns, and only then.

Failure policy, in one place:
- a record that cannot be decoded or mapped, or whose row the database rejects (SQLSTATE classes
  22 data exception, 23 integrity, 42 syntax/undefined): dead letter with the reason; the batch
  goes on;
- the target unreachable (connection errors, SQLSTATE 08, 57, 40): retry the whole transaction with
  backoff, never returning (so offsets are never committed past unapplied records) until it
  succeeds or ``stop`` is set, in which case :class:`Interrupted` is raised and nothing is
  committed;
- Redis down: go on without the fast path (ProcessedIds logs and counts it).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from cdc_reconciler.connectors.debezium import (
    ChangeEvent,
    DebeziumDecoder,
    DecodeError,
    Tombstone,
    TransactionMarker,
)
from cdc_reconciler.connectors.kafka import Record
from cdc_reconciler.connectors.redis_ids import ProcessedIds
from cdc_reconciler.connectors.target import RowWrite, truncate_table, write_batch
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.checkpoint import record_applied
from cdc_reconciler.stream.dead_letters import DeadLetter, DeadLetterSink
from cdc_reconciler.stream.metrics import Metrics
from cdc_reconciler.stream.outcomes import BatchOutcome
from cdc_reconciler.stream.tables import ApplyError, Route, TableResolver, key_of

log = logging.getLogger(__name__)

# Backoff while the target is unreachable: start short, cap so recovery is noticed quickly.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 15.0
# SQLSTATE classes that mean "this row/statement is bad", not "the database is unavailable".
BAD_DATA_CLASSES = ("22", "23", "42", "2B", "44")


class Interrupted(CdcrError):
    """The engine was asked to stop while the target was unavailable; nothing was committed."""


@dataclass(slots=True)
class Pending:
    record: Record
    event: ChangeEvent
    route: Route
    key: tuple[Any, ...]
    values: dict[str, Any] | None  # None: delete


@dataclass(slots=True)
class _Plan:
    outcome: BatchOutcome
    dead: list[DeadLetter] = field(default_factory=list)
    writes: dict[tuple[str, str, int], tuple[Route, list[Pending]]] = field(default_factory=dict)
    truncates: list[Pending] = field(default_factory=list)
    fresh_ids: list[tuple[bytes, int]] = field(default_factory=list)


@dataclass(slots=True)
class Prepared:
    """A batch decoded and planned, not yet written."""

    plan: _Plan
    started: float


def _is_bad_data(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "pgcode", None)
    return bool(code) and str(code)[:2] in BAD_DATA_CLASSES


class ApplyEngine:
    def __init__(
        self,
        *,
        target: sa.Engine,
        resolver: TableResolver,
        dead_letters: DeadLetterSink,
        ids: ProcessedIds | None = None,
        group: str | None = None,
        metrics: Metrics | None = None,
        decoder: DebeziumDecoder | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
        dry_run: bool = False,
    ) -> None:
        self._target = target
        self._resolver = resolver
        self._dead = dead_letters
        self._ids = ids
        self._group = group
        self._metrics = metrics
        self._decoder = decoder or DebeziumDecoder()
        self._stop = stop or threading.Event()
        self._sleep = sleep
        self.db_retries = 0
        # Dry run: every transaction is rolled back, nothing goes to Redis or the DLQ topic; the
        # outcome still says exactly what would have applied.
        self.dry_run = dry_run

    # ------------------------------------------------------------------ planning
    def _plan(self, records: Sequence[Record]) -> _Plan:
        plan = _Plan(BatchOutcome())
        outcome = plan.outcome
        candidates: list[Pending] = []
        for r in records:
            counts = outcome.counts(r.topic, r.partition)
            counts.consumed += 1
            if r.offset + 1 > counts.next_offset:
                counts.next_offset = r.offset + 1
            try:
                decoded = self._decoder.decode(r.key, r.value)
            except DecodeError as exc:
                self._dead_letter(plan, r, f"decode:{exc.kind}", exc.message)
                continue
            if isinstance(decoded, Tombstone | TransactionMarker) or decoded.op == "m":
                counts.skipped_noop += 1
                continue
            try:
                candidates.append(self._pending(r, decoded))
            except ApplyError as exc:
                self._dead_letter(plan, r, exc.kind, exc.message)
                continue
            if counts.last_event_us is None or decoded.ts_us > counts.last_event_us:
                counts.last_event_us = decoded.ts_us

        seen = (
            self._ids.seen([(p.event.change_id, p.event.ts_us) for p in candidates])
            if (self._ids and candidates)
            else [False] * len(candidates)
        )
        newest: dict[tuple[str, tuple[Any, ...]], Pending] = {}
        for p, was_seen in zip(candidates, seen, strict=True):
            if was_seen:
                self._count(plan, p, "skipped_duplicate")
                continue
            plan.fresh_ids.append((p.event.change_id, p.event.ts_us))
            if p.event.op == "t":
                plan.truncates.append(p)
                continue
            k = (p.route.table.qualified, p.key)
            cur = newest.get(k)
            if cur is None:
                newest[k] = p
                continue
            # Later in the batch wins a tie (Kafka order within a partition, e.g. snapshot rows).
            newer, older = (p, cur) if p.event.position >= cur.event.position else (cur, p)
            newest[k] = _merge_unchanged(newer, older)
            self._count(plan, older, "skipped_stale")
        # A column added mid-batch widens the table: write every group with the newest route.
        latest = {p.route.table.qualified: p.route for p in candidates}
        for p in newest.values():
            gk = (p.route.table.qualified, p.record.topic, p.record.partition)
            entry = plan.writes.get(gk)
            if entry is None:
                plan.writes[gk] = (latest[gk[0]], [p])
            else:
                entry[1].append(p)
        return plan

    def _pending(self, r: Record, event: ChangeEvent) -> Pending:
        route = self._resolver.route(r.topic, event)
        if event.op == "t":
            return Pending(r, event, route, (), None)
        key = key_of(route, event)
        if event.op == "d":
            return Pending(r, event, route, key, None)
        if event.after is None:
            raise ApplyError("missing_key", f"op {event.op!r} without an after image")
        route, values = self._resolver.row_values(route, event.after)
        return Pending(r, event, route, key, values)

    def _dead_letter(self, plan: _Plan, r: Record, kind: str, message: str) -> None:
        plan.dead.append(DeadLetter(r, kind, message))
        plan.outcome.counts(r.topic, r.partition).dead_lettered += 1
        plan.outcome.table_add(r.topic, "dead_lettered")

    @staticmethod
    def _count(plan: _Plan, p: Pending, outcome: str) -> None:
        plan.outcome.counts(p.record.topic, p.record.partition).add(outcome)
        plan.outcome.table_add(p.route.table.qualified, outcome)

    # ------------------------------------------------------------------ applying
    def process(self, records: Sequence[Record]) -> BatchOutcome:
        """Apply one batch: :meth:`prepare` then :meth:`apply`. Returns the per-partition outcome
        once the target has committed it.

        Raises Interrupted if stopped while the target is unavailable (nothing committed), and
        KafkaCallError if the dead-letter topic does not take the batch's dead letters.
        """
        return self.apply(self.prepare(records))

    def prepare(self, records: Sequence[Record]) -> Prepared:
        """Decode, drop known duplicates, collapse per key, publish dead letters. Touches the
        target only to resolve tables, so it may run while the previous batch is being applied
        (its duplicates then meet the position guard instead of Redis)."""
        started = time.perf_counter()
        plan = self._plan(records)
        if not self.dry_run:
            self._dead.publish(plan.dead)
        return Prepared(plan, started)

    def apply(self, prepared: Prepared) -> BatchOutcome:
        """Write a prepared batch in one transaction (retrying while the target is unavailable),
        then record its change IDs in Redis. Returns the outcome after the commit."""
        plan = prepared.plan
        planned = plan.outcome
        delay = RETRY_INITIAL_S
        while True:
            # Each attempt accounts on a fresh copy, so a retried transaction never counts twice.
            plan.outcome = copy.deepcopy(planned)
            try:
                self._transaction(plan)
                break
            except DBAPIError as exc:
                if _is_bad_data(exc):
                    plan.outcome = copy.deepcopy(planned)
                    self._isolate_bad_rows(plan)
                    break
                self._retry_wait(exc, delay)
                delay = min(delay * 2, RETRY_MAX_S)
        if self._ids is not None and not self.dry_run:
            self._ids.record(plan.fresh_ids)
        if self._metrics is not None:
            self._metrics.observe_batch(
                plan.outcome,
                time.perf_counter() - prepared.started,
                redis_up=self._ids.available if self._ids else None,
            )
        return plan.outcome

    def _retry_wait(self, exc: Exception, delay: float) -> None:
        self.db_retries += 1
        if self._metrics is not None:
            self._metrics.db_retries.inc()
        log.error(
            "target database unavailable (%s); retrying in %.1fs", exc.__class__.__name__, delay
        )
        if self._stop.is_set():
            raise Interrupted("stopped while the target database was unavailable; nothing applied")
        self._sleep(delay)
        if self._stop.is_set():
            raise Interrupted("stopped while the target database was unavailable; nothing applied")

    def _transaction(self, plan: _Plan) -> None:
        applied: dict[tuple[str, str, int], int] = {}
        with self._tx() as conn:
            for gk, (route, group) in plan.writes.items():
                res = write_batch(conn, route.table, [_row_write(p) for p in group])
                applied[gk] = res.applied
            for p in plan.truncates:
                truncate_table(conn, p.route.table, p.event.position, p.event.ts_us)
            self._finish(conn, plan, applied)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        if not self.dry_run:
            with self._target.begin() as conn:
                yield conn
            return
        with self._target.connect() as conn:
            trans = conn.begin()
            try:
                yield conn
            finally:
                trans.rollback()

    def _account(self, plan: _Plan, applied: dict[tuple[str, str, int], int]) -> None:
        for (table, topic, part), (_route, group) in plan.writes.items():
            n = applied.get((table, topic, part), 0)
            counts = plan.outcome.counts(topic, part)
            counts.applied += n
            counts.skipped_stale += len(group) - n
            plan.outcome.table_add(table, "applied", n)
            plan.outcome.table_add(table, "skipped_stale", len(group) - n)
        for p in plan.truncates:
            self._count(plan, p, "applied")

    def _finish(
        self, conn: sa.Connection, plan: _Plan, applied: dict[tuple[str, str, int], int]
    ) -> None:
        """Account the outcome and write dead letters and applied offsets, in the transaction."""
        self._account(plan, applied)
        DeadLetterSink.record(conn, plan.dead)
        if self._group is not None:
            record_applied(conn, self._group, plan.outcome)

    def _isolate_bad_rows(self, plan: _Plan) -> None:
        """A row the database rejects: apply each write in its own savepoint; the rejected ones
        become dead letters with the database's message; the rest commit with the batch."""
        log.warning("the target rejected part of a batch; isolating the bad rows")
        applied: dict[tuple[str, str, int], int] = {}
        rejected: list[Pending] = []
        with self._tx() as conn:
            for gk, (route, group) in plan.writes.items():
                kept: list[Pending] = []
                for p in group:
                    try:
                        with conn.begin_nested():
                            res = write_batch(conn, route.table, [_row_write(p)])
                    except DBAPIError as exc:
                        if not _is_bad_data(exc):
                            raise
                        rejected.append(p)
                        plan.dead.append(
                            DeadLetter(p.record, "apply_rejected", str(exc.orig).strip())
                        )
                        continue
                    kept.append(p)
                    applied[gk] = applied.get(gk, 0) + res.applied
                plan.writes[gk] = (route, kept)
            for p in plan.truncates:
                truncate_table(conn, p.route.table, p.event.position, p.event.ts_us)
            for p in rejected:
                plan.outcome.counts(p.record.topic, p.record.partition).dead_lettered += 1
                plan.outcome.table_add(p.route.table.qualified, "dead_lettered")
            if not self.dry_run:
                self._dead.publish([d for d in plan.dead if d.kind == "apply_rejected"])
            self._finish(conn, plan, applied)


def _row_write(p: Pending) -> RowWrite:
    return RowWrite(p.key, p.values, p.event.position, p.event.ts_us)


def _merge_unchanged(newer: Pending, older: Pending) -> Pending:
    """Collapsing two upserts of a key: columns the newer one left out (unchanged TOASTed values)
    take the older one's values, which are the current ones."""
    if newer.values is None or older.values is None or not newer.event.unavailable:
        return newer
    missing = {c: older.values[c] for c in newer.event.unavailable if c in older.values}
    if not missing:
        return newer
    return Pending(newer.record, newer.event, newer.route, newer.key, {**newer.values, **missing})
