"""The apply engine: one batch of Kafka records in, the target updated, every record accounted for.

Per batch (DESIGN, data flow):
decode -> drop change IDs Redis already holds -> collapse to the newest change per key ->
ONE transaction: versioned upserts/deletes/truncates + dead letters + applied offsets -> COMMIT ->
record the IDs in Redis. The caller (the consumer loop, replay, the Faust agent) commits Kafka
offsets after :meth:`ApplyEngine.process` returns, and only then.

Failure policy, in one place (docs/apply.md):
- a record that cannot be decoded or mapped: dead letter with the reason; the batch goes on;
- a row the target rejects (SQLSTATE class 22 data exception, 23 integrity, 44, and 54000/54001/
  42804/42P18, see :data:`REJECTED_CLASSES`): the batch is redone with each group written in a
  savepoint and bisected until the rejected rows stand alone; they are dead-lettered as
  ``apply_rejected:<sqlstate>`` with table, key, column and the database's message, and the rest
  commits with the applied offsets as usual;
- anything else from the target (connection errors, SQLSTATE 08, 57P0x, 40001/40P01, 53, or an
  error of the target's schema such as an undefined column): retry the whole transaction with
  backoff, never returning (so offsets are never committed past unapplied records) until it
  succeeds or ``stop`` is set, in which case :class:`Interrupted` is raised and nothing is
  committed;
- Redis down: go on without the fast path (ProcessedIds logs and counts it).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from cdc_reconciler.connectors.debezium import (
    ChangeEvent,
    DebeziumDecoder,
)
from cdc_reconciler.connectors.kafka import Record
from cdc_reconciler.connectors.postgres.sides import stable_output
from cdc_reconciler.connectors.postgres.sql import qualified_ident, quote_ident
from cdc_reconciler.connectors.postgres.table import TRUNCATE_KEY, TargetTable, key_text
from cdc_reconciler.connectors.postgres.write import (
    KeylessWrite,
    RowWrite,
    keyless_position_index,
    truncate_table,
    write_batch,
    write_keyless,
)
from cdc_reconciler.connectors.redis_ids import ProcessedIds
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.store import discrepancies, runs, tombstones
from cdc_reconciler.store.discrepancies import NewDiscrepancy
from cdc_reconciler.store.offsets import record_applied
from cdc_reconciler.stream.dead_letters import DeadLetter, DeadLetterSink
from cdc_reconciler.stream.errors import ApplyError
from cdc_reconciler.stream.metrics import Metrics
from cdc_reconciler.stream.outcomes import BatchOutcome
from cdc_reconciler.stream.plan import (
    Pending,
    Plan,
    merge_outcomes,
    plan_batch,
    split_by_partition,
)
from cdc_reconciler.stream.tables import Route, TableResolver, key_of
from cdc_reconciler.stream.timing import Timing

log = logging.getLogger(__name__)

# Backoff while the target is unreachable: start short, cap so recovery is noticed quickly.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 15.0
# With more than one writer, a batch's partitions are committed in parallel on up to this many
# target connections (the target engine's pool must allow that many, plus one for resolving
# tables). Default one: measured on the 2-core bench machine at load 2.4-3.6, three writers
# applied 8,300-9,600 events/s against one writer's 20,400 (each transaction ~5x slower when
# three run at once, and the writer threads' COPY encoding competes for the GIL with decoding).
WRITERS = 1


class Interrupted(CdcrError):
    """The engine was asked to stop while the target was unavailable; nothing was committed."""


@dataclass(slots=True)
class Prepared:
    """A batch decoded and planned, not yet written."""

    plan: Plan
    started: float
    # Wall time per stage of this batch (stream/timing.py); the runner adds its own stages.
    timing: Timing = field(default_factory=Timing)


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
        source: sa.Engine | None = None,
        writers: int = WRITERS,
    ) -> None:
        self._target = target
        # Partitions of a batch are committed on up to this many connections at once (see apply).
        self._pool = (
            ThreadPoolExecutor(max_workers=writers, thread_name_prefix="cdcr-tx")
            if writers > 1
            else None
        )
        # The source database, read only to re-fetch TOASTed values an event left out when the
        # target has no row to keep them from (see _complete_unavailable).
        self._source = source
        self.toast_refetched = 0
        self.toast_missing = 0
        self._identities: dict[tuple[str, str], str | None] = {}
        self._indexed: set[str] = set()
        self._resolver = resolver
        self._dead = dead_letters
        self._ids = ids
        self._group = group
        self._metrics = metrics
        self._decoder = decoder or DebeziumDecoder()
        self._stop = stop or threading.Event()
        self._sleep = sleep
        self.db_retries = 0
        self._keyless_skipped: set[str] = set()
        # Dry run: every transaction is rolled back, nothing goes to Redis or the DLQ topic; the
        # outcome still says exactly what would have applied.
        self.dry_run = dry_run

    # ------------------------------------------------------------------ planning
    def _plan(self, records: Sequence[Record], timing: Timing) -> Plan:
        return plan_batch(
            records,
            decode=self._decoder.decode,
            pending=self._pending,
            seen=self._ids.seen if self._ids is not None else None,
            keyless_skipped=self._skip_keyless,
            timing=timing,
        )

    def _skip_keyless(self, p: Pending) -> None:
        """Without processed-change IDs (replay), a change to a keyless REPLICA IDENTITY FULL
        table cannot be told from one already applied (an insert whose row was updated since
        would come back as a second row), so it is skipped as stale, with its reason logged
        once per table; `cdcr reconcile` verifies such tables."""
        table = p.route.table.qualified
        if table not in self._keyless_skipped:
            self._keyless_skipped.add(table)
            log.warning(
                "%s has no key: without processed-change IDs (replay) its changes cannot be told "
                "from ones already applied, so they are skipped as stale; verify it with "
                "cdcr reconcile (docs/apply.md)",
                table,
            )

    def _pending(self, r: Record, event: ChangeEvent) -> Pending:
        route = self._resolver.route(r.topic, event)
        if event.op == "t":
            return Pending(r, event, route, (), None)
        if not route.table.key_columns:
            return self._keyless_pending(r, event, route)
        key = key_of(route, event)
        if event.op == "d":
            return Pending(r, event, route, key, None)
        if event.after is None:
            raise ApplyError("missing_key", f"op {event.op!r} without an after image")
        route, values = self._resolver.row_values(route, event.after)
        return Pending(r, event, route, key, values)

    def _keyless_pending(self, r: Record, event: ChangeEvent, route: Route) -> Pending:
        """A change to a table without a key (docs/apply.md): inserts are appended when the table
        is ``mode: append`` or the source table has REPLICA IDENTITY FULL; updates and deletes
        apply by full-row match when ``before`` carries the whole row (REPLICA IDENTITY FULL) and
        the table is not ``mode: append``. Anything else: ApplyError ``no_key``."""
        table = route.table.qualified
        # A key of its own, so collapsing never merges two changes of a keyless table.
        key = ("\x00keyless", r.topic, r.partition, r.offset)
        append_only = route.mapping.mode == "append"
        if event.op in ("c", "r"):
            if not append_only and self._replica_identity(r.topic, event) != "f":
                raise ApplyError(
                    "no_key",
                    f"target {table} has no primary key; set REPLICA IDENTITY FULL on the source "
                    "table (updates and deletes then match whole rows) or `mode: append` for it "
                    "in the table mapping (insert-only), or give it a key (`key_columns`)",
                )
            if event.after is None:
                raise ApplyError("no_key", f"op {event.op!r} without an after image")
            route, values = self._resolver.row_values(route, event.after)
            self._keyless_index(route)
            return Pending(r, event, route, key, values, "i")
        if append_only:
            raise ApplyError(
                "no_key",
                f"op {event.op!r} on {table}, a table without a key mapped `mode: append` "
                "(insert-only): updates and deletes cannot be applied",
            )
        before = None if event.before is None else self._resolver.row_values(route, event.before)[1]
        lacking = sorted(route.columns - before.keys()) if before is not None else None
        if before is None or lacking:
            raise ApplyError(
                "no_key",
                f"op {event.op!r} on {table}, a table without a key, and the event's before image "
                + ("is missing" if before is None else f"lacks {lacking}")
                + ": set REPLICA IDENTITY FULL on the source table",
            )
        self._keyless_index(route)
        if event.op == "d":
            return Pending(r, event, route, key, None, "d", before)
        if event.after is None:
            raise ApplyError("no_key", f"op {event.op!r} without an after image")
        route, values = self._resolver.row_values(route, event.after)
        # Columns left out of ``after`` (unchanged TOASTed values) are those of ``before``.
        values = {**{c: v for c, v in before.items() if c in event.unavailable}, **values}
        return Pending(r, event, route, key, values, "u", before)

    def _replica_identity(self, topic: str, event: ChangeEvent) -> str | None:
        """The source table's pg_class.relreplident (``f`` = FULL), read once per table; None
        without a source connection."""
        name = self._resolver.source_name(topic, event)
        if name in self._identities:
            return self._identities[name]
        found: str | None = None
        if self._source is not None:
            with self._source.connect() as conn:
                found = conn.execute(
                    sa.text(
                        "SELECT c.relreplident FROM pg_class c JOIN pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relname = :t"
                    ),
                    {"s": name[0], "t": name[1]},
                ).scalar()
        self._identities[name] = found
        return found

    def _keyless_index(self, route: Route) -> None:
        """Once per table: the index on ``_cdc_pos`` the guarded appends use. Its own short
        transaction; a failure (e.g. no privilege) is logged, never fatal: it only costs speed."""
        table = route.table
        if table.qualified in self._indexed or self.dry_run:
            return
        self._indexed.add(table.qualified)
        try:
            with self._target.begin() as conn:
                conn.execute(sa.text(keyless_position_index(table)))
        except DBAPIError as exc:
            log.warning("cannot index %s._cdc_pos: %s", table.qualified, str(exc.orig).strip())

    # ------------------------------------------------------------------ applying
    def process(self, records: Sequence[Record]) -> BatchOutcome:
        """Apply one batch: :meth:`prepare` then :meth:`apply`. Returns the per-partition outcome
        once the target has committed it.

        Raises Interrupted if stopped while the target is unavailable (nothing committed), and
        KafkaEdgeError if the dead-letter topic does not take the batch's dead letters.
        """
        return self.apply(self.prepare(records))

    def prepare(self, records: Sequence[Record]) -> Prepared:
        """Decode, drop known duplicates, collapse per key, publish dead letters. Touches the
        target only to resolve tables, so it may run while the previous batch is being applied
        (its duplicates then meet the position guard instead of Redis). A target outage while
        resolving tables is retried with backoff until the stop signal (then Interrupted)."""
        started = time.perf_counter()
        timing = Timing()
        delay = RETRY_INITIAL_S
        while True:
            try:
                plan = self._plan(records, timing)
                break
            except DBAPIError as exc:
                # Resolving a table reads the target's catalog: a target outage here is waited
                # out like one during the write, never a crash of the consumer. Planning only
                # reads, so it is redone whole.
                self._retry_wait(exc, delay)
                delay = min(delay * 2, RETRY_MAX_S)
        planned = time.perf_counter()
        timing.plan += planned - started - timing.decode - timing.redis_seen
        if not self.dry_run:
            self._dead.publish(plan.dead)
        timing.dlq += time.perf_counter() - planned
        return Prepared(plan, started, timing)

    def apply(self, prepared: Prepared) -> BatchOutcome:
        """Write a prepared batch (retrying while the target is unavailable), then record its
        change IDs in Redis. Returns the outcome after the commit.

        With one writer (the default), one transaction. With ``writers`` > 1, one transaction per
        Kafka partition of the batch (its rows, dead letters and applied offset together: DESIGN
        invariant 3 holds per partition), written in parallel on up to ``writers`` connections (a
        batch's partitions touch disjoint keys: collapsing keeps one write per key). If one of
        them is interrupted, the others may have committed: their applied offsets are in the
        target and the next owner resumes from them."""
        plan = prepared.plan
        parts = split_by_partition(plan) if self._pool is not None else [plan]
        if len(parts) <= 1:
            self._commit_plan(plan, prepared.timing)
        else:
            plan.outcome = self._commit_parallel(plan, parts, prepared.timing)
        self._after_commit(prepared)
        return plan.outcome

    def close(self) -> None:
        """Stop the writer threads (the batch in flight, if any, finishes first)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _commit_parallel(self, plan: Plan, parts: list[Plan], timing: Timing) -> BatchOutcome:
        """Commit every part in its own transaction, at the same time; wait for all of them, then
        raise the first failure (Interrupted when stopped during an outage)."""
        assert self._pool is not None
        timings = [Timing() for _ in parts]
        futures = [
            self._pool.submit(self._commit_plan, part, t)
            for part, t in zip(parts, timings, strict=True)
        ]
        errors = [f.exception() for f in futures]
        for t in timings:
            timing.merge(t)
        for err in errors:
            if err is not None:
                raise err
        return merge_outcomes(plan.outcome, [p.outcome for p in parts])

    def _commit_plan(self, plan: Plan, timing: Timing) -> None:
        """One plan's transaction, retried while the target is unavailable; on a rejected row,
        redone isolating the rejected rows."""
        planned = plan.outcome
        delay = RETRY_INITIAL_S
        isolate = False
        while True:
            # Each attempt accounts on a fresh copy, so a retried transaction never counts twice.
            plan.outcome = copy.deepcopy(planned)
            try:
                self._transaction(plan, timing, isolate=isolate)
                return
            except DBAPIError as exc:
                if not isolate and is_rejected(exc):
                    # A row the target rejects: redo the batch isolating the bad rows at once.
                    log.warning(
                        "the target rejected part of a batch (SQLSTATE %s); isolating the bad rows",
                        sqlstate(exc),
                    )
                    isolate = True
                    continue
                self._retry_wait(exc, delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _after_commit(self, prepared: Prepared) -> None:
        """Record the change IDs in Redis, count TOAST re-reads, observe the batch."""
        plan = prepared.plan
        if self._ids is not None and not self.dry_run:
            with prepared.timing.measure("redis_record"):
                self._ids.record(plan.fresh_ids)
        for table, by in plan.outcome.by_table.items():
            for result, what in (
                ("refetched", "toast_refetched"),
                ("source_missing", "toast_source_missing"),
            ):
                n = by.get(what, 0)
                if not n:
                    continue
                if what == "toast_refetched":
                    self.toast_refetched += n
                else:
                    self.toast_missing += n
                if self._metrics is not None:
                    self._metrics.toast_refetched.labels(table, result).inc(n)
        if self._metrics is not None:
            self._metrics.observe_batch(
                plan.outcome,
                time.perf_counter() - prepared.started,
                redis_up=self._ids.available if self._ids else None,
            )

    def wait_out_target(self, exc: Exception, delay: float) -> None:
        """The engine's retry policy for a target outage met outside a batch (the consumer
        loop's rebalance callbacks): log, count, wait ``delay``; Interrupted when stopped."""
        self._retry_wait(exc, delay)

    def _retry_wait(self, exc: Exception, delay: float) -> None:
        self.db_retries += 1
        if self._metrics is not None:
            self._metrics.db_retries.inc()
        log.error(
            "target database unavailable (%s%s); retrying in %.1fs",
            exc.__class__.__name__,
            f" SQLSTATE {sqlstate(exc)}" if sqlstate(exc) else "",
            delay,
        )
        if self._stop.is_set():
            raise Interrupted("stopped while the target database was unavailable; nothing applied")
        self._sleep(delay)
        if self._stop.is_set():
            raise Interrupted("stopped while the target database was unavailable; nothing applied")

    def _transaction(self, plan: Plan, timing: Timing, *, isolate: bool = False) -> None:
        """One attempt at the batch's transaction. With ``isolate`` every group is written in a
        savepoint and bisected when the target rejects it: the rejected rows become dead letters
        (in this transaction, and on the dead-letter topic before the commit), the rest apply."""
        applied: dict[tuple[str, str, int], int] = {}
        kept: dict[tuple[str, str, int], int] = {}
        rejected: list[tuple[Pending, DeadLetter]] = []
        clock = time.perf_counter
        t0 = clock()
        with self._tx() as conn:
            t1 = clock()
            writes, vanished = self._complete_unavailable(conn, plan)
            t2 = clock()
            for gk, (route, group) in writes.items():
                if not isolate:
                    applied[gk] = _write(conn, route, group)
                    continue
                n, bad = self._write_isolating(conn, route, group)
                applied[gk] = n
                kept[gk] = len(group) - len(bad)
                rejected.extend(bad)
            for p in plan.truncates:
                truncate_table(conn, p.route.table, p.event.position, p.event.ts_us)
            t3 = clock()
            letters = [d for _p, d in rejected]
            if letters and not self.dry_run:
                self._dead.publish(letters)
            self._account(
                plan,
                applied,
                kept if isolate else None,
                {gk: len(g) for gk, (_r, g) in writes.items()},
            )
            for p in vanished:
                plan.count(p, "skipped_stale")
            for p, _d in rejected:
                plan.count(p, "dead_lettered")
            DeadLetterSink.record(conn, [*plan.dead, *letters])
            if self._group is not None:
                record_applied(conn, self._group, plan.outcome)
            t4 = clock()
        t5 = clock()
        timing.db_connect += t1 - t0
        timing.db_write += t3 - t2
        timing.db_other += (t2 - t1) + (t4 - t3)
        timing.db_commit += t5 - t4

    # ------------------------------------------------------------------ TOAST without a row
    def _complete_unavailable(
        self, conn: sa.Connection, plan: Plan
    ) -> tuple[dict[tuple[str, str, int], tuple[Route, list[Pending]]], list[Pending]]:
        """Upserts that leave out unchanged TOASTed columns keep the target row's values. When the
        target has no row for the key (a primary-key change, a row lost from the target, a key
        seen first mid-stream) there is nothing to keep: re-read those columns from the source by
        key and write them under the event's position (any later real change has a higher one,
        and the source row read now is at least as new as the event; see docs/apply.md). When
        the source no longer has the row, a later change deleted it or changed its key: the
        write is skipped as stale (never a NULL the source does not have) and the key recorded
        as an open discrepancy for the reconciler. Returns the groups to write and the skipped
        pendings."""
        needs = _unavailable_needs(plan)
        if not needs:
            return plan.writes, []
        replaced: dict[int, Pending] = {}
        vanished: list[Pending] = []
        for items in needs.values():
            got, gone = self._refetch(conn, items)
            replaced.update(got)
            vanished.extend(gone)
        gone_ids = {id(p) for p in vanished}
        out = {
            gk: (route, [replaced.get(id(p), p) for p in group if id(p) not in gone_ids])
            for gk, (route, group) in plan.writes.items()
        }
        _count_completed(plan, replaced, vanished)
        if vanished:
            self._record_vanished(conn, needs, vanished)
        return out, vanished

    def _refetch(
        self, conn: sa.Connection, items: list[tuple[Pending, tuple[str, ...]]]
    ) -> tuple[dict[int, Pending], list[Pending]]:
        """For one table: the pendings re-read from the source (by id of the original), and those
        whose source row is gone."""
        table = items[0][0].route.table
        keys = table.key_columns
        todo = _without_target_row(conn, table, items)
        if not todo:
            return {}, []
        if self._source is None:
            log.error(
                "%d events of %s leave out TOASTed columns and the target has no row to keep "
                "them from; set CDCR_SOURCE__URL so they can be re-read from the source",
                len(todo),
                table.qualified,
            )
            return {}, [p for p, _c in todo]
        schema, name = self._resolver.source_name(todo[0][0].record.topic, todo[0][0].event)
        cols = sorted({col for _p, cs in todo for col in cs})
        found = _fetch_source(self._source, (schema, name), keys, cols, [p.key for p, _c in todo])
        return _merge_refetched(todo, found)

    def _record_vanished(
        self,
        conn: sa.Connection,
        needs: dict[str, list[tuple[Pending, tuple[str, ...]]]],
        vanished: list[Pending],
    ) -> None:
        """Open discrepancies (one audit run per batch) for keys whose TOASTed values could not
        be re-read: the reconciler verifies them."""
        cols = {id(p): c for items in needs.values() for p, c in items}
        run_id = uuid.uuid4()
        now = datetime.now(UTC)
        by_table: dict[str, list[Pending]] = {}
        for p in vanished:
            src = self._resolver.source_name(p.record.topic, p.event)
            by_table.setdefault(f"{src[0]}.{src[1]}", []).append(p)
            log.warning(
                "%s key %s: an event left out TOASTed columns %s, the target has no row and the "
                "source no longer has it; skipped as stale, recorded as an open discrepancy",
                p.route.table.qualified,
                key_text(p.key),
                list(cols[id(p)]),
            )
        for table_name, ps in by_table.items():
            counts = {"by": "apply_engine", "toast_source_missing": len(ps)}
            runs.record(
                conn,
                run_id,
                table_name,
                runs.RunStatus.UNRESOLVED,
                window_start=None,
                window_end=now,
                started=now,
                finished=now,
                counts=counts,
            )
            found = [
                NewDiscrepancy(
                    key_text(p.key), "missing", "toast_source_missing", list(cols[id(p)])
                )
                for p in ps
            ]
            discrepancies.insert(conn, run_id, table_name, found)
            run_id = uuid.uuid4()

    def _write_isolating(
        self, conn: sa.Connection, route: Route, group: list[Pending]
    ) -> tuple[int, list[tuple[Pending, DeadLetter]]]:
        """Write ``group`` in savepoints, halving every part the target rejects until the bad
        rows stand alone: k bad rows in n cost about 2·k·log2(n) attempts, not n. Returns the
        rows applied and the rejected rows with their dead letters. Errors that are not a
        rejection (the target unavailable) propagate: the caller retries the transaction."""
        applied = 0
        rejected: list[tuple[Pending, DeadLetter]] = []
        parts = [group]
        while parts:
            part = parts.pop()
            try:
                with conn.begin_nested():
                    applied += _write(conn, route, part)
            except DBAPIError as exc:
                if not is_rejected(exc):
                    raise
                if len(part) > 1:
                    mid = len(part) // 2
                    parts.append(part[mid:])
                    parts.append(part[:mid])
                    continue
                p = part[0]
                rejected.append((p, DeadLetter(p.record, rejected_kind(exc), _describe(p, exc))))
        return applied, rejected

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

    def _account(
        self,
        plan: Plan,
        applied: dict[tuple[str, str, int], int],
        kept: dict[tuple[str, str, int], int] | None = None,
        writes_n: dict[tuple[str, str, int], int] | None = None,
    ) -> None:
        """Applied and stale per group; ``kept``: how many of a group's rows the target took
        (the others were dead-lettered and are counted as such by the caller); ``writes_n``: how
        many rows each group wrote (rows whose source row vanished are counted by the caller)."""
        writes_n = writes_n or {gk: len(g) for gk, (_r, g) in plan.writes.items()}
        for gk in plan.writes:
            table, topic, part = gk
            n = applied.get(gk, 0)
            total = writes_n.get(gk, 0) if kept is None else kept.get(gk, 0)
            counts = plan.outcome.counts(topic, part)
            counts.applied += n
            counts.skipped_stale += total - n
            plan.outcome.table_add(table, "applied", n)
            plan.outcome.table_add(table, "skipped_stale", total - n)
        for p in plan.truncates:
            plan.count(p, "applied")


# ---------------------------------------------------------------------- classifying target errors

# SQLSTATEs a single row's values can cause: the row is rejected (dead-lettered), the rest of the
# batch applies. Classes: 22 data exception (value too long, invalid text for the type, out of
# range, bad encoding, ...), 23 integrity constraint violation (NOT NULL, CHECK, UNIQUE, FOREIGN
# KEY, EXCLUDE), 44 WITH CHECK OPTION; codes: 54000 program_limit_exceeded (index row larger than
# the btree maximum, row too big), 54001 statement_too_complex (a deeply nested value), 42804
# datatype_mismatch, 42P18 indeterminate_datatype (a value the column type cannot take), 2202E
# array_subscript_error is in class 22. Classified by SQLSTATE only, never by message text.
REJECTED_CLASSES = frozenset({"22", "23", "44"})
REJECTED_CODES = frozenset({"54000", "54001", "42804", "42P18"})


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (SQLAlchemy's DBAPIError or the driver's own), if any."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    return str(code) if code else None


def is_rejected(exc: BaseException) -> bool:
    """The target refused this row's data (dead-letter it), as opposed to being unavailable or
    failing for everyone (retry: connection errors without SQLSTATE, class 08, 57P0x, 40001,
    40P01, 53xxx resources, and anything else)."""
    code = sqlstate(exc)
    return code is not None and (code[:2] in REJECTED_CLASSES or code in REJECTED_CODES)


def rejected_kind(exc: BaseException) -> str:
    return f"apply_rejected:{sqlstate(exc)}"


def _clip(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


_COPY_COLUMN = re.compile(r"\bcolumn (\S+?):")


def _describe(p: Pending, exc: DBAPIError) -> str:
    """table, key, column (when the database names it) and the database's own message."""
    orig: Any = exc.orig
    diag = getattr(orig, "diag", None)
    column = getattr(diag, "column_name", None)
    context = getattr(diag, "context", None) or ""
    if not column:
        # COPY names the column in its context line ("COPY cdcr_stg_..., line 1, column c: ...").
        m = _COPY_COLUMN.search(context)
        column = m.group(1) if m else None
    primary = getattr(diag, "message_primary", None) or str(orig).strip().splitlines()[0]
    primary = _clip(primary, 1000)
    detail = getattr(diag, "message_detail", None)
    parts = [
        f"table {p.route.table.qualified}",
        f"key {key_text(p.key)}",
        *([f"column {column}"] if column else []),
        f"SQLSTATE {sqlstate(exc)}: {primary}",
        # The detail may repeat the whole row ("Failing row contains ..."): keep it short.
        *([f"DETAIL: {_clip(detail)}"] if detail else []),
    ]
    return "; ".join(parts)


# ---------------------------------------------------------------------- TOAST re-fetch helpers

_CHUNK = 1000


def _norm_key(key: Sequence[Any]) -> str:
    """A key compared across drivers and decoders: aware datetimes in UTC, then key_text."""
    norm = [
        v.astimezone(UTC) if isinstance(v, datetime) and v.tzinfo is not None else v for v in key
    ]
    return str(key_text(norm))


_Needs = dict[str, list[tuple[Pending, tuple[str, ...]]]]


def _unavailable_needs(plan: Plan) -> _Needs:
    """By table: the keyed upserts whose event left out unchanged TOASTed columns, with the
    columns their values lack."""
    needs: _Needs = {}
    for route, group in plan.writes.values():
        for p in group:
            if p.values is None or not p.event.unavailable or p.keyless:
                continue
            cols = tuple(
                c for c in route.table.columns if c in p.event.unavailable and c not in p.values
            )
            if cols:
                needs.setdefault(route.table.qualified, []).append((p, cols))
    return needs


def _count_completed(plan: Plan, replaced: dict[int, Pending], vanished: list[Pending]) -> None:
    """Count the re-read and the skipped pendings in the batch outcome; log the re-reads."""
    for p in replaced.values():
        plan.outcome.table_add(p.route.table.qualified, "toast_refetched")
    for p in vanished:
        plan.outcome.table_add(p.route.table.qualified, "toast_source_missing")
    if replaced:
        log.warning(
            "re-read %d rows' unchanged TOASTed columns from the source (no target row to "
            "keep them from)",
            len(replaced),
        )


def _without_target_row(
    conn: sa.Connection, table: TargetTable, items: list[tuple[Pending, tuple[str, ...]]]
) -> list[tuple[Pending, tuple[str, ...]]]:
    """The items to re-read: keys whose target row exists keep its values; keys behind a newer
    tombstone (or truncate) are stale and left out too."""
    live = _existing_keys(conn, table, [p.key for p, _c in items])
    tombs = _tombstones(conn, table, [p.key for p, _c in items])
    return [
        (p, c)
        for p, c in items
        if _norm_key(p.key) not in live
        and max(tombs.get(key_text(p.key), -1), tombs.get(TRUNCATE_KEY, -1)) < p.event.position
    ]


def _merge_refetched(
    todo: list[tuple[Pending, tuple[str, ...]]], found: dict[str, dict[str, Any]]
) -> tuple[dict[int, Pending], list[Pending]]:
    """The pendings completed with the source's values (by id of the original), and those whose
    source row is gone."""
    got: dict[int, Pending] = {}
    gone: list[Pending] = []
    for p, missing in todo:
        row = found.get(_norm_key(p.key))
        if row is None:
            gone.append(p)
            continue
        assert p.values is not None
        values = {**p.values, **{c: row[c] for c in missing}}
        got[id(p)] = Pending(p.record, p.event, p.route, p.key, values)
    return got, gone


def _key_filter(
    columns: Sequence[str], keys: Sequence[Sequence[Any]]
) -> tuple[str, dict[str, Any]]:
    """``(k1, k2) IN ((:k0_0, :k0_1), ...)`` with bound values; names are reflected columns."""
    cols = ", ".join(quote_ident(c) for c in columns)
    params: dict[str, Any] = {}
    tuples = []
    for i, key in enumerate(keys):
        names = []
        for j, v in enumerate(key):
            params[f"k{i}_{j}"] = v
            names.append(f":k{i}_{j}")
        tuples.append(f"({', '.join(names)})")
    return f"({cols}) IN ({', '.join(tuples)})", params


def _existing_keys(
    conn: sa.Connection, table: TargetTable, keys: Sequence[Sequence[Any]]
) -> set[str]:
    out: set[str] = set()
    tgt = qualified_ident(table.schema, table.name)
    cols = ", ".join(quote_ident(c) for c in table.key_columns)
    for i in range(0, len(keys), _CHUNK):
        where, params = _key_filter(table.key_columns, keys[i : i + _CHUNK])
        for r in conn.execute(sa.text(f"SELECT {cols} FROM {tgt} WHERE {where}"), params):
            out.add(_norm_key(tuple(r)))
    return out


def _tombstones(
    conn: sa.Connection, table: TargetTable, keys: Sequence[Sequence[Any]]
) -> dict[str, int]:
    return tombstones.positions(conn, table.qualified, [key_text(k) for k in keys] + [TRUNCATE_KEY])


def _fetch_source(
    source: sa.Engine,
    table: tuple[str, str],
    keys: Sequence[str],
    columns: Sequence[str],
    values: Sequence[Sequence[Any]],
) -> dict[str, dict[str, Any]]:
    """The source rows of ``values`` (keys): the key columns as values, ``columns`` as their
    PostgreSQL text, which COPY turns back into the same value in the target's same type."""
    src = qualified_ident(*table)
    select = ", ".join(
        [*(quote_ident(k) for k in keys), *(f"{quote_ident(c)}::text" for c in columns)]
    )
    out: dict[str, dict[str, Any]] = {}
    with source.connect() as conn:
        # The text in fixed output styles (ISO dates, postgres intervals, hex bytea, UTC), which
        # COPY reads back exactly whatever the source's or the target's session settings.
        stable_output(conn)
        for i in range(0, len(values), _CHUNK):
            where, params = _key_filter(keys, values[i : i + _CHUNK])
            for r in conn.execute(sa.text(f"SELECT {select} FROM {src} WHERE {where}"), params):
                t = tuple(r)
                out[_norm_key(t[: len(keys)])] = dict(zip(columns, t[len(keys) :], strict=True))
    return out


def _write(conn: sa.Connection, route: Route, group: Sequence[Pending]) -> int:
    """Write one group (one table, one partition) through the table's write path; returns how
    many rows applied."""
    if route.table.key_columns:
        return int(write_batch(conn, route.table, [_row_write(p) for p in group]).applied)
    writes = [
        KeylessWrite(p.keyless, p.values, p.before, p.event.position, p.event.ts_us) for p in group
    ]
    return int(write_keyless(conn, route.table, writes).applied)


def _row_write(p: Pending) -> RowWrite:
    return RowWrite(p.key, p.values, p.event.position, p.event.ts_us)
