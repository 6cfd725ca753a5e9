"""Planning a batch, without a database: what each record of a batch becomes before anything is
written (DESIGN, data flow: decode -> drop known change IDs -> collapse to the newest change per
key).

:func:`plan_batch` is pure given its three callables (decode a record, route it to a
:class:`Pending`, ask which change IDs were processed already): the apply engine passes the
Debezium decoder, its table resolver and Redis; tests pass plain functions. Every record ends in
exactly one place: a dead letter, a no-op, a duplicate, a stale change (an older change of a key
the batch changes again, or a keyless change that cannot be applied safely), a truncate, or the
one write per key (and per table, topic and partition) of the plan. Whether a write is stale
against the target's row is decided later, by the position guard in the target.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdc_reconciler.connectors.debezium import (
    ChangeEvent,
    DecodeError,
    Tombstone,
    TransactionMarker,
)
from cdc_reconciler.connectors.kafka import Record
from cdc_reconciler.stream.dead_letters import DeadLetter
from cdc_reconciler.stream.errors import ApplyError
from cdc_reconciler.stream.outcomes import BatchOutcome
from cdc_reconciler.stream.tables import Route
from cdc_reconciler.stream.timing import Timing

# A group of writes: one target table, one topic, one partition.
GroupKey = tuple[str, str, int]


@dataclass(slots=True)
class Pending:
    record: Record
    event: ChangeEvent
    route: Route
    key: tuple[Any, ...]
    values: dict[str, Any] | None  # None: delete
    # Tables without a key: "i" append, "u"/"d" by full-row match of ``before``; "" otherwise.
    keyless: str = ""
    before: dict[str, Any] | None = None


@dataclass(slots=True)
class Plan:
    outcome: BatchOutcome
    dead: list[DeadLetter] = field(default_factory=list)
    writes: dict[GroupKey, tuple[Route, list[Pending]]] = field(default_factory=dict)
    truncates: list[Pending] = field(default_factory=list)
    fresh_ids: list[tuple[bytes, int]] = field(default_factory=list)

    def dead_letter(self, r: Record, kind: str, message: str) -> None:
        self.dead.append(DeadLetter(r, kind, message))
        self.outcome.counts(r.topic, r.partition).dead_lettered += 1
        self.outcome.table_add(r.topic, "dead_lettered")

    def count(self, p: Pending, outcome: str) -> None:
        self.outcome.counts(p.record.topic, p.record.partition).add(outcome)
        self.outcome.table_add(p.route.table.qualified, outcome)


Decode = Callable[[bytes | None, bytes | None], ChangeEvent | Tombstone | TransactionMarker]
Seen = Callable[[list[tuple[bytes, int]]], list[bool]]


def plan_batch(
    records: Sequence[Record],
    *,
    decode: Decode,
    pending: Callable[[Record, ChangeEvent], Pending],
    seen: Seen | None,
    keyless_skipped: Callable[[Pending], None] = lambda _p: None,
    timing: Timing | None = None,
) -> Plan:
    """Plan one batch.

    - ``decode(key, value)`` raises DecodeError: the record is dead-lettered as
      ``decode:<kind>``; tombstones, transaction markers and logical messages (op ``m``) are
      no-ops;
    - ``pending(record, event)`` raises ApplyError: dead-lettered as its kind;
    - ``seen(ids)``: which (change_id, ts_us) were processed already (duplicates, skipped);
      None when there are no processed-change IDs (replay): then changes to keyless tables that
      are not ``mode: append`` cannot be told from ones applied already and are skipped as stale
      (``keyless_skipped`` is told, e.g. to log it);
    - per (table, key) the change with the highest source position wins (a tie goes to the later
      record: Kafka order); the others are stale; an upsert that leaves out unchanged TOASTed
      columns takes them from the upsert it replaces;
    - truncates are kept in order, never collapsed;
    - writes are grouped per (table, topic, partition), each group with the table's newest route
      in the batch (a column added mid-batch widens the table).
    """
    plan = Plan(BatchOutcome())
    candidates = _candidates(plan, records, decode, pending, seen is None, keyless_skipped, timing)
    t0 = time.perf_counter()
    flags = (
        seen([(p.event.change_id, p.event.ts_us) for p in candidates])
        if (seen is not None and candidates)
        else [False] * len(candidates)
    )
    if timing is not None:
        timing.redis_seen += time.perf_counter() - t0
    _collapse(plan, candidates, flags)
    return plan


def _candidates(
    plan: Plan,
    records: Sequence[Record],
    decode: Decode,
    pending: Callable[[Record, ChangeEvent], Pending],
    without_ids: bool,
    keyless_skipped: Callable[[Pending], None],
    timing: Timing | None,
) -> list[Pending]:
    """Decode and route every record; count each consumed, dead letters and no-ops."""
    outcome = plan.outcome
    out: list[Pending] = []
    clock = time.perf_counter
    decoding = 0.0
    for r in records:
        counts = outcome.counts(r.topic, r.partition)
        counts.consumed += 1
        if r.offset + 1 > counts.next_offset:
            counts.next_offset = r.offset + 1
        t0 = clock()
        try:
            decoded = decode(r.key, r.value)
        except DecodeError as exc:
            decoding += clock() - t0
            plan.dead_letter(r, f"decode:{exc.kind}", exc.message)
            continue
        decoding += clock() - t0
        if isinstance(decoded, Tombstone | TransactionMarker) or decoded.op == "m":
            counts.skipped_noop += 1
            continue
        try:
            p = pending(r, decoded)
        except ApplyError as exc:
            plan.dead_letter(r, exc.kind, exc.message)
            continue
        if counts.last_event_us is None or decoded.ts_us > counts.last_event_us:
            counts.last_event_us = decoded.ts_us
        if p.keyless and without_ids and p.route.mapping.mode != "append":
            keyless_skipped(p)
            plan.count(p, "skipped_stale")
            continue
        out.append(p)
    if timing is not None:
        timing.decode += decoding
    return out


def _collapse(plan: Plan, candidates: list[Pending], seen: list[bool]) -> None:
    """Drop duplicates, keep truncates, collapse to the newest change per key, group the writes."""
    newest: dict[tuple[str, tuple[Any, ...]], Pending] = {}
    for p, was_seen in zip(candidates, seen, strict=True):
        if was_seen:
            plan.count(p, "skipped_duplicate")
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
        newest[k] = merge_unchanged(newer, older)
        plan.count(older, "skipped_stale")
    # A column added mid-batch widens the table: write every group with the newest route.
    latest = {p.route.table.qualified: p.route for p in candidates}
    for p in newest.values():
        gk = (p.route.table.qualified, p.record.topic, p.record.partition)
        entry = plan.writes.get(gk)
        if entry is None:
            plan.writes[gk] = (latest[gk[0]], [p])
        else:
            entry[1].append(p)


def merge_unchanged(newer: Pending, older: Pending) -> Pending:
    """Collapsing two upserts of a key: columns the newer one left out (unchanged TOASTed values)
    take the older one's values, which are the current ones."""
    if newer.values is None or older.values is None or not newer.event.unavailable:
        return newer
    missing = {c: older.values[c] for c in newer.event.unavailable if c in older.values}
    if not missing:
        return newer
    return Pending(newer.record, newer.event, newer.route, newer.key, {**newer.values, **missing})


def split_by_partition(plan: Plan) -> list[Plan]:
    """The plan cut into one plan per Kafka partition: its counts, dead letters, write groups and
    truncates. The planning's per-table counts and the change IDs stay with ``plan`` (see
    :func:`merge_outcomes`)."""
    parts: dict[tuple[str, int], Plan] = {}

    def part(topic: str, partition: int) -> Plan:
        found = parts.get((topic, partition))
        if found is None:
            found = parts[(topic, partition)] = Plan(BatchOutcome())
        return found

    for (topic, partition), counts in plan.outcome.partitions.items():
        part(topic, partition).outcome.partitions[(topic, partition)] = copy.copy(counts)
    for d in plan.dead:
        part(d.record.topic, d.record.partition).dead.append(d)
    for gk, entry in plan.writes.items():
        part(gk[1], gk[2]).writes[gk] = entry
    for p in plan.truncates:
        part(p.record.topic, p.record.partition).truncates.append(p)
    return list(parts.values())


def merge_outcomes(planned: BatchOutcome, parts: Sequence[BatchOutcome]) -> BatchOutcome:
    """The batch's outcome from the planned one (its per-table counts) and those of its
    partitions' transactions (:func:`split_by_partition`)."""
    out = BatchOutcome(by_table={t: dict(by) for t, by in planned.by_table.items()})
    for o in parts:
        out.partitions.update(o.partitions)
        for table, by in o.by_table.items():
            for what, n in by.items():
                out.table_add(table, what, n)
    return out
