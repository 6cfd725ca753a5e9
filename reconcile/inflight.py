"""Confirm a diff's candidates while the source keeps changing (DESIGN invariant 10).

A diff compares two databases that are read at slightly different moments while changes flow
from one to the other, so a key can differ only because its newest change is *in flight*:
committed in the source, not yet applied to the target (or, for a delete, the source row gone
and the delete not yet applied). Such a key is never reported, repaired or counted as a
discrepancy. Every candidate of a diff goes through :func:`confirm`:

1. **Read 1.** The candidate keys are read on the source in a REPEATABLE READ, READ ONLY
   transaction whose *first* statement records ``pg_current_wal_lsn()`` and
   ``clock_timestamp()``: the snapshot is taken at the start of that statement, so every
   transaction it sees committed before both values were read. Then the same keys are read on
   the target. Keys whose two rows already agree are dropped (their change landed meanwhile).
2. **Catch-up.** Wait (at most ``reconcile.confirm_wait_s``) until the consumer group has applied
   past that snapshot on every partition feeding the table: the partition applied an event whose
   source commit time (``last_event_time``, Debezium's ``source.ts_us``) is at or after the
   snapshot's ``clock_timestamp()``, or it is idle at its Kafka log end. The first is exact:
   PostgreSQL takes a transaction's commit timestamp before it writes the commit record, so an
   event committed at or after the snapshot clock was committed after every transaction the
   snapshot sees, and Debezium streams (and the engine applies, per partition) in commit order.
   The second is the closure rule of invariant 7 (it trusts that Debezium has produced what the
   source committed; to give the connector its poll interval it is accepted only
   ``IDLE_SETTLE_S`` after read 1).
3. **Read 2.** The remaining keys are read again on both sides. A key is **confirmed** only when
   source and target still differ *and neither side changed since read 1*: the source row is the
   one the snapshot saw, every change visible to that snapshot has been applied, and the target
   row did not move. A key whose source or target row changed between the reads is being
   written right now (a hot key), and a key that could not be confirmed because the group did not
   catch up in time is in flight too.

Dropped candidates are counted ``deferred`` with a reason (``applied``: equal at read 1 or 2;
``applying``: between the reads the source row changed and the target row was rewritten;
``changing``: only one side changed between the reads; ``not_caught_up``: the group did not pass
the snapshot in time). Keys that still differ are remembered in ``cdcr.deferred_keys`` and
re-checked on the table's next pass; a key deferred for ``reconcile.deferred_bound_s`` or longer
is confirmed as a real discrepancy (so a key is still caught when the group never catches up, or
when one side keeps changing and the other does not follow). ``applying`` restarts that clock:
the stream is visibly rewriting the row as the source changes (Debezium carries whole rows), which
is progress, not a stuck key; such a key is judged once it stops changing.

Positions: ``pg_current_wal_lsn()`` is recorded with each confirmation (``source_wal_lsn`` in
the run's counts) for the audit. It is not compared with ``_cdc_pos`` directly: a position is
``(lastCommitLsn << 64) | lsn`` — the commit LSN of the *previous* transaction and the change's
own LSN — and neither half is the change's own commit LSN, so an event of a transaction that
committed after the snapshot can carry two halves below the snapshot's WAL position.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.table import key_text
from cdc_reconciler.reconcile import checksum as ck
from cdc_reconciler.reconcile.checksum import Normalized, TablePair
from cdc_reconciler.reconcile.diff import Difference, Kind
from cdc_reconciler.reconcile.segments import Key
from cdc_reconciler.reconcile.windows import LogEnds, PartitionProgress

# An idle partition (at its log end) counts as caught up only this long after read 1: Debezium
# polls the replication stream every 500 ms by default, so a change committed just before the
# snapshot may not be in Kafka yet.
IDLE_SETTLE_S = 1.5
POLL_S = 0.25  # how often the applied offsets are re-read while waiting for catch-up


@dataclass(frozen=True, slots=True)
class Snapshot:
    wal_lsn: str
    at: datetime  # the source's clock_timestamp() inside the snapshot


@dataclass(frozen=True, slots=True)
class Read:
    source: Normalized | None
    target: Normalized | None

    @property
    def same(self) -> bool:
        return self.source == self.target


@dataclass(slots=True)
class Confirmation:
    confirmed: list[Difference] = field(default_factory=list)
    deferred: dict[Key, str] = field(default_factory=dict)  # key -> reason
    still_different: dict[Key, Difference] = field(default_factory=dict)  # deferred, not equal
    promoted: list[Key] = field(default_factory=list)  # deferred beyond the bound: confirmed
    snapshot: Snapshot | None = None
    caught_up: bool | None = None
    waited_s: float = 0.0

    def counts(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for r in self.deferred.values():
            reasons[r] = reasons.get(r, 0) + 1
        return {
            "in_flight": len(self.deferred),
            "in_flight_reasons": reasons,
            "promoted": len(self.promoted),
            "confirm_wal_lsn": None if self.snapshot is None else self.snapshot.wal_lsn,
            "confirm_waited_s": round(self.waited_s, 3),
        }


def read_keys(
    source: sa.Engine, target: sa.Engine, pair: TablePair, keys: Sequence[Key]
) -> tuple[Snapshot, dict[Key, Read]]:
    """Read ``keys`` on the source in one snapshot (recording its WAL position and clock), then
    on the target. Normalized as the diff normalizes rows."""
    with source.connect() as s:
        s = s.execution_options(isolation_level="REPEATABLE READ")
        with s.begin():
            # First statement: it takes the snapshot, then reads the position and the clock.
            lsn, at = s.execute(
                sa.text("SELECT pg_current_wal_lsn()::text, clock_timestamp()")
            ).one()
            s.execute(sa.text("SET TRANSACTION READ ONLY"))
            src = ck.fetch_normalized_by_keys(s, pair.source, keys)
    with target.connect() as t, t.begin():
        ck.stable_output(t)
        tgt = ck.fetch_normalized_by_keys(t, pair.target, keys)
    return Snapshot(str(lsn), at), {k: Read(src.get(k), tgt.get(k)) for k in keys}


def caught_up(
    parts: Sequence[PartitionProgress],
    since: datetime,
    log_ends: LogEnds,
    *,
    allow_idle: bool,
) -> bool:
    """Whether every partition applied past the snapshot taken at ``since`` (module doc, step
    2). False when there is no partition at all (nothing proves anything)."""
    if not parts:
        return False
    lagging = [p for p in parts if p.last_event_time is None or p.last_event_time < since]
    if not lagging:
        return True
    if not allow_idle:
        return False
    ends = log_ends([(p.topic, p.partition) for p in lagging])
    return all(
        p.next_offset >= ends.get((p.topic, p.partition), p.next_offset + 1) for p in lagging
    )


def difference_of(pair: TablePair, key: Key, r: Read) -> Difference:
    def named(row: Normalized | None) -> dict[str, str | None] | None:
        return None if row is None else dict(zip(pair.columns, row, strict=True))

    if r.target is None:
        return Difference(Kind.MISSING, key, source_row=named(r.source))
    if r.source is None:
        return Difference(Kind.EXTRA, key, target_row=named(r.target))
    cols = tuple(c for c, a, b in zip(pair.columns, r.source, r.target, strict=True) if a != b)
    return Difference(Kind.MISMATCHED, key, cols, named(r.source), named(r.target))


Progress = Callable[[], Sequence[PartitionProgress]]


def confirm(
    source: sa.Engine,
    target: sa.Engine,
    pair: TablePair,
    keys: Iterable[Key],
    *,
    progress: Progress,
    log_ends: LogEnds,
    wait_s: float,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Confirmation:
    """Split candidate ``keys`` into confirmed differences and deferred (in-flight) keys, as the
    module docstring says. ``progress`` re-reads the table's partitions. Reads only."""
    out = Confirmation()
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return out
    snap, first = read_keys(source, target, pair, wanted)
    out.snapshot = snap
    rest = []
    for k in wanted:
        if first[k].same:
            out.deferred[k] = "applied"
        else:
            rest.append(k)
    if not rest:
        return out
    started = monotonic()
    while True:
        elapsed = monotonic() - started
        idle_ok = elapsed >= min(IDLE_SETTLE_S, wait_s)
        ok = caught_up(progress(), snap.at, log_ends, allow_idle=idle_ok)
        if ok or elapsed >= wait_s:
            break
        sleep(POLL_S)
    out.waited_s = monotonic() - started
    out.caught_up = ok
    if not ok:
        for k in rest:
            out.deferred[k] = "not_caught_up"
            out.still_different[k] = difference_of(pair, k, first[k])
        return out
    _, second = read_keys(source, target, pair, rest)
    for k in rest:
        r1, r2 = first[k], second[k]
        if r2.same:
            out.deferred[k] = "applied"
        elif r2.target != r1.target and r2.source != r1.source:
            # The source changed and the target followed between the reads: the stream is
            # applying this key.
            out.deferred[k] = "applying"
            out.still_different[k] = difference_of(pair, k, r2)
        elif r2 != r1:
            out.deferred[k] = "changing"
            out.still_different[k] = difference_of(pair, k, r2)
        else:
            out.confirmed.append(difference_of(pair, k, r2))
    return out


# --- cdcr.deferred_keys ----------------------------------------------------------------------


def pending(conn: sa.Connection, table: str) -> list[Key]:
    """Keys of ``table`` deferred by earlier passes (to be re-checked)."""
    rows = conn.execute(
        sa.text("SELECT key FROM cdcr.deferred_keys WHERE table_name = :t ORDER BY key"),
        {"t": table},
    ).all()
    return [tuple(orjson.loads(r[0])) for r in rows]


def apply_bound(
    conn: sa.Connection,
    table: str,
    result: Confirmation,
    *,
    now: datetime,
    bound: timedelta,
    write: bool = True,
) -> None:
    """Promote keys deferred for longer than ``bound`` to confirmed differences (in ``result``),
    then (with ``write``; not under --dry-run) record the keys still deferred and forget the
    others. Runs in the caller's transaction."""
    texts = {key_text(k): k for k in result.still_different}
    if texts:
        rows = conn.execute(
            sa.text(
                "SELECT key, first_deferred FROM cdcr.deferred_keys WHERE table_name = :t "
                "AND key = ANY(:k)"
            ),
            {"t": table, "k": list(texts)},
        ).all()
        for text, first in rows:
            k = texts[text]
            if result.deferred.get(k) != "applying" and now - first >= bound:
                result.confirmed.append(result.still_different.pop(k))
                result.deferred.pop(k, None)
                result.promoted.append(k)
    if not write:
        return
    settled = [key_text(k) for k in result.deferred if k not in result.still_different]
    settled += [key_text(d.key) for d in result.confirmed]
    if settled:
        conn.execute(
            sa.text("DELETE FROM cdcr.deferred_keys WHERE table_name = :t AND key = ANY(:k)"),
            {"t": table, "k": settled},
        )
    if result.still_different:
        conn.execute(
            sa.text(
                "INSERT INTO cdcr.deferred_keys AS d (table_name, key, kind, reason, "
                "first_deferred, last_deferred) VALUES (:t, :k, :kind, :r, :now, :now) "
                "ON CONFLICT (table_name, key) DO UPDATE SET kind = EXCLUDED.kind, "
                "reason = EXCLUDED.reason, last_deferred = EXCLUDED.last_deferred, "
                "times = d.times + 1, first_deferred = CASE WHEN EXCLUDED.reason = 'applying' "
                "THEN EXCLUDED.first_deferred ELSE d.first_deferred END"
            ),
            [
                {
                    "t": table,
                    "k": key_text(k),
                    "kind": d.kind.value,
                    "r": result.deferred.get(k, "changing"),
                    "now": now,
                }
                for k, d in result.still_different.items()
            ],
        )
