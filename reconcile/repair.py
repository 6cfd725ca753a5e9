"""Repair a window's differences and record every correction.

Order of repair for missing and mismatched rows:

1. The replay hook (``make_kafka_replay_hook``): replay the window's events from Kafka (offsets by
   timestamp) through the apply engine, then hand on the keys that still differ. With no window
   (whole-table runs) or no Kafka, nothing is replayed and every key is handed on.
2. Re-read the remaining keys from the source and upsert them through
   ``connectors.postgres.write.write_batch`` at the *repair position* (below), so that any later real
   change still wins and no older event replayed later can undo the repair.

Rows only in the target (``extra``) are recorded for review; with ``delete_extra`` they are
archived to ``cdcr.extra_rows_archive`` and then deleted (a guarded delete that leaves a tombstone)
— but only when the source still has no such row at read time.

The repair position
-------------------
Positions are ``(lastCommitLsn << 64) | lsn``: an event carries the commit LSN of the
transaction streamed *before* its own. Let ``A = max(_cdc_pos) >> 64`` over the target table and its
tombstones, read (committed) *before* the source snapshot is taken. ``A`` is the lastCommitLsn of
an applied event of a transaction ``V``; ``V`` committed before we read the target, hence before the
source snapshot, hence ``V`` is visible to our read. The repair position is
``P = (A << 64) | (2**64 - 1)``:

- every change *not* visible to our read commits after ``V``, so its lastCommitLsn is at least
  ``commit(V) > A``, and its position is at least ``(A + 1) << 64 > P``: later real changes win;
- every event already applied to the table has lastCommitLsn ``<= A``, so ``P`` beats it: the
  repair lands even over a corrupted row written by the newest applied batch;
- an event visible to our read but not yet applied (consumer lag) whose position is above ``P``
  will still be applied and overwrite the repair with an older value; the stream then delivers the
  newer visible events too (they are newer than ``P`` as well), so the row converges to what we
  read. Until it does, re-verification reports the key and the window stays unreconciled (no
  watermark move) — a retry, never a wrong row.

``pg_current_wal_lsn()`` read before the snapshot is recorded in the run's audit but is *not* used
as the position: a later transaction's lastCommitLsn can be below it (its previous commit happened
before that WAL position), so ``lsn << 64`` could beat a real later change. With an empty target
table and no tombstones ``P = 0``, which every real change beats.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from cdc_reconciler.config import Settings
from cdc_reconciler.connectors.postgres.sql import qualified_ident
from cdc_reconciler.connectors.postgres.table import TargetTable, key_text
from cdc_reconciler.connectors.postgres.write import RowWrite, write_batch
from cdc_reconciler.reconcile import checksum as ck
from cdc_reconciler.reconcile.checksum import TablePair
from cdc_reconciler.reconcile.diff import Difference, DiffResult, Kind
from cdc_reconciler.reconcile.segments import Key, Window
from cdc_reconciler.store import discrepancies, tombstones
from cdc_reconciler.store.discrepancies import ArchivedRow, NewDiscrepancy

LOW_64 = (1 << 64) - 1

ReplayHook = Callable[[TablePair, Window | None, Sequence[Key]], list[Key]]


def kafka_replay_hook(pair: TablePair, window: Window | None, keys: Sequence[Key]) -> list[Key]:
    """The no-op hook: replays nothing and hands every key on to the source re-read."""
    return list(keys)


# Kafka record time trails the change time by the commit-to-produce delay; widen the replayed
# range by this much on both sides (replaying more is harmless: writes are versioned).
REPLAY_SLACK_S = 60
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def make_kafka_replay_hook(
    settings: Settings,
    source: sa.Engine,
    target: sa.Engine,
    log: Callable[[str], None] | None = None,
) -> ReplayHook:
    """A hook that replays ``window`` (plus grace and slack) of the table's topic through the
    apply engine (:func:`cdc_reconciler.stream.replay.replay`), then returns the keys whose
    target row still differs from the source: Kafka no longer had their events (retention), or
    they were never produced. A Kafka failure is logged and every key handed on, so repair still
    falls back to the source."""
    from datetime import timedelta

    from cdc_reconciler.errors import CdcrError
    from cdc_reconciler.stream.replay import replay

    def hook(pair: TablePair, window: Window | None, keys: Sequence[Key]) -> list[Key]:
        if window is None or not keys:
            return list(keys)
        slack = timedelta(seconds=settings.reconcile.grace_s + REPLAY_SLACK_S)
        try:
            # An open-start window (the table's first) replays from the start of retention.
            start = window.start - slack if window.start is not None else EPOCH
            result = replay(settings, start, window.end + slack, tables=[pair.name])
        except CdcrError as exc:
            if log:
                log(f"replay from Kafka failed ({exc}); re-reading the source instead")
            return list(keys)
        if log:
            log(
                f"replayed {result.totals.consumed} events of {pair.name} "
                f"({result.totals.applied} applied)"
            )
        with source.connect() as s, target.connect() as t:
            src = ck.fetch_normalized_by_keys(s, pair.source, keys)
            tgt = ck.fetch_normalized_by_keys(t, pair.target, keys)
        return [k for k in keys if src.get(k) != tgt.get(k) or k not in src]

    return hook


@dataclass(slots=True)
class RepairOutcome:
    actions: dict[Key, str] = field(default_factory=dict)
    position: int = 0
    source_wal_lsn: str | None = None
    applied: int = 0
    stale: int = 0
    archived: int = 0

    def counts(self) -> dict[str, Any]:
        return {
            "repair_position": str(self.position),
            "source_wal_lsn": self.source_wal_lsn,
            "applied": self.applied,
            "stale": self.stale,
            "archived": self.archived,
            "repaired": sum(
                1 for a in self.actions.values() if a in ("replayed", "upserted", "deleted")
            ),
        }


def repair_position(conn: sa.Connection, table: TargetTable) -> int:
    """``P`` as described in the module docstring, from committed target data."""
    written = conn.execute(
        sa.text(f"SELECT max(_cdc_pos) FROM {qualified_ident(table.schema, table.name)}")
    ).scalar()
    deleted = tombstones.max_position(conn, table.qualified)
    found = [int(p) for p in (written, deleted) if p is not None]
    top = max(found) if found else None
    if top is None:
        return 0
    return ((int(top) >> 64) << 64) | LOW_64


def _ts_us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def repair(
    source: sa.Engine,
    target: sa.Engine,
    pair: TablePair,
    table: TargetTable,
    diff: DiffResult,
    *,
    window: Window | None,
    run_id: uuid.UUID,
    delete_extra: bool,
    now: datetime,
    replay_hook: ReplayHook = kafka_replay_hook,
) -> RepairOutcome:
    """Repair ``diff``'s differences and record each in ``cdcr.discrepancies`` (review state
    ``open``; the caller resolves them after re-verifying). Writes and audit rows commit together
    in one target transaction; on error nothing of the repair is committed and the error
    propagates."""
    out = RepairOutcome()
    to_fix = [d.key for d in diff.differences if d.kind is not Kind.EXTRA]
    extras = [d.key for d in diff.differences if d.kind is Kind.EXTRA]
    remaining = set(replay_hook(pair, window, to_fix)) if to_fix else set()
    for k in to_fix:
        if k not in remaining:
            out.actions[k] = "replayed"

    with target.connect() as tconn:
        out.position = repair_position(tconn, table)
        tconn.rollback()
    wanted = [k for k in to_fix if k in remaining] + (extras if delete_extra else [])
    with source.connect() as sconn:
        sconn = sconn.execution_options(isolation_level="REPEATABLE READ")
        with sconn.begin():
            out.source_wal_lsn = str(sconn.execute(sa.text("SELECT pg_current_wal_lsn()")).scalar())
            rows = ck.fetch_text_by_keys(sconn, pair.source, wanted) if wanted else {}

    ts = _ts_us(now)
    writes = _fix_writes(out, [k for k in to_fix if k in remaining], rows, ts)
    archive = _extra_deletes(out, extras, rows, delete_extra)
    writes += [RowWrite(k, None, out.position, ts) for k in archive]
    _commit_repair(target, pair, table, diff, run_id, out, writes, archive)
    return out


def _fix_writes(
    out: RepairOutcome, keys: Sequence[Key], rows: dict[Key, Any], ts: int
) -> list[RowWrite]:
    """Upserts of the keys replay left different (action ``upserted``, or ``vanished`` when the
    source no longer has the row)."""
    writes: list[RowWrite] = []
    for k in keys:
        if k in rows:
            writes.append(RowWrite(k, rows[k], out.position, ts))
            out.actions[k] = "upserted"
        else:
            out.actions[k] = "vanished"  # deleted in the source since the diff; a later run sees it
    return writes


def _extra_deletes(
    out: RepairOutcome, extras: Sequence[Key], rows: dict[Key, Any], delete_extra: bool
) -> list[Key]:
    """The extra keys to archive and delete (only with ``delete_extra``; the others are
    reported, or left when the source has the row again)."""
    archive: list[Key] = []
    for k in extras:
        if not delete_extra:
            out.actions[k] = "reported"
        elif k in rows:
            out.actions[k] = "source_has_row"  # appeared in the source since the diff
        else:
            archive.append(k)
            out.actions[k] = "deleted"
    return archive


def _commit_repair(
    target: sa.Engine,
    pair: TablePair,
    table: TargetTable,
    diff: DiffResult,
    run_id: uuid.UUID,
    out: RepairOutcome,
    writes: list[RowWrite],
    archive: list[Key],
) -> None:
    """Archive the deleted rows, write, and record the discrepancies in one transaction."""
    with target.begin() as tconn:
        if archive:
            whole = ck.fetch_json_by_keys(tconn, pair.target, archive)
            discrepancies.archive(
                tconn,
                [
                    ArchivedRow(run_id, pair.name, key_text(k), whole[k])
                    for k in archive
                    if k in whole
                ],
            )
            out.archived = len(whole)
        result = write_batch(tconn, table, writes)
        out.applied, out.stale = result.applied, result.stale
        record_discrepancies(tconn, run_id, pair.name, diff.differences, out.actions)


def record_discrepancies(
    conn: sa.Connection,
    run_id: uuid.UUID,
    table: str,
    differences: Sequence[Difference],
    actions: dict[Key, str],
) -> None:
    found = [
        NewDiscrepancy(
            key_text(d.key),
            d.kind.value,
            actions.get(d.key, "reported"),
            list(d.columns) or None,
            None if d.source_row is None else orjson.dumps(d.source_row).decode(),
            None if d.target_row is None else orjson.dumps(d.target_row).decode(),
        )
        for d in differences
    ]
    discrepancies.insert(conn, run_id, table, found)


def resolve_discrepancies(
    conn: sa.Connection, run_id: uuid.UUID, still_different: Sequence[Difference]
) -> None:
    """Mark this run's discrepancies resolved unless re-verification still finds the key."""
    discrepancies.resolve_run(conn, run_id, [key_text(d.key) for d in still_different])
