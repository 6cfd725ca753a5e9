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
from cdc_reconciler.connectors.target import RowWrite, key_text, truncate_table, write_batch
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
        isolate = False
        while True:
            # Each attempt accounts on a fresh copy, so a retried transaction never counts twice.
            plan.outcome = copy.deepcopy(planned)
            try:
                self._transaction(plan, isolate=isolate)
                break
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

    def _transaction(self, plan: _Plan, *, isolate: bool = False) -> None:
        """One attempt at the batch's transaction. With ``isolate`` every group is written in a
        savepoint and bisected when the target rejects it: the rejected rows become dead letters
        (in this transaction, and on the dead-letter topic before the commit), the rest apply."""
        applied: dict[tuple[str, str, int], int] = {}
        kept: dict[tuple[str, str, int], int] = {}
        rejected: list[tuple[Pending, DeadLetter]] = []
        with self._tx() as conn:
            for gk, (route, group) in plan.writes.items():
                if not isolate:
                    res = write_batch(conn, route.table, [_row_write(p) for p in group])
                    applied[gk] = res.applied
                    continue
                n, bad = self._write_isolating(conn, route, group)
                applied[gk] = n
                kept[gk] = len(group) - len(bad)
                rejected.extend(bad)
            for p in plan.truncates:
                truncate_table(conn, p.route.table, p.event.position, p.event.ts_us)
            letters = [d for _p, d in rejected]
            if letters and not self.dry_run:
                self._dead.publish(letters)
            self._account(plan, applied, kept if isolate else None)
            for p, _d in rejected:
                self._count(plan, p, "dead_lettered")
            DeadLetterSink.record(conn, [*plan.dead, *letters])
            if self._group is not None:
                record_applied(conn, self._group, plan.outcome)

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
                    applied += write_batch(conn, route.table, [_row_write(p) for p in part]).applied
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
        plan: _Plan,
        applied: dict[tuple[str, str, int], int],
        kept: dict[tuple[str, str, int], int] | None = None,
    ) -> None:
        """Applied and stale per group; ``kept``: how many of a group's rows the target took
        (the others were dead-lettered and are counted as such by the caller)."""
        for gk, (_route, group) in plan.writes.items():
            table, topic, part = gk
            n = applied.get(gk, 0)
            total = len(group) if kept is None else kept.get(gk, len(group))
            counts = plan.outcome.counts(topic, part)
            counts.applied += n
            counts.skipped_stale += total - n
            plan.outcome.table_add(table, "applied", n)
            plan.outcome.table_add(table, "skipped_stale", total - n)
        for p in plan.truncates:
            self._count(plan, p, "applied")


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
    detail = getattr(diag, "message_detail", None)
    parts = [
        f"table {p.route.table.qualified}",
        f"key {key_text(p.key)}",
        *([f"column {column}"] if column else []),
        f"SQLSTATE {sqlstate(exc)}: {primary}",
        *([f"DETAIL: {detail}"] if detail else []),
    ]
    return "; ".join(parts)


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
