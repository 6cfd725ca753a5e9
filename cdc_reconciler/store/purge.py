"""Removing rows from the service's tables: old tombstones and audit rows (``cdcr purge``), and
all the state of one table or consumer group (tests, and a table dropped for good).

What ``purge`` never removes: a run with open review items (its items would go with it: the
foreign key cascades), a run that failed to verify its window and that no later run covers
(``cdcr status`` lists it until it is resolved), runs still running, watermarks, applied offsets
and deferred keys (live state, not history).

A tombstone is what makes a late create or update of a deleted key stale instead of bringing the
row back (docs/apply.md, "Deletes"): purge only tombstones older than any replay you would run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from cdc_reconciler.errors import CdcrError
from cdc_reconciler.store.runs import NOT_VERIFIED, VERIFIED

# Runs that must stay: running, with open review items, or failed and not covered by a later
# verifying run (as runs.failed_uncovered).
_KEEP_RUN = (
    "r.status = 'running' "
    "OR EXISTS (SELECT 1 FROM cdcr.discrepancies o WHERE o.run_id = r.run_id "
    "AND o.review_state = 'open') "
    "OR (r.status = ANY(:bad) AND NOT EXISTS (SELECT 1 FROM cdcr.reconcile_runs v "
    "WHERE v.table_name = r.table_name AND v.status = ANY(:ok) AND NOT v.dry_run "
    "AND v.started > r.started AND (v.window_start IS NULL OR (r.window_start IS NOT NULL "
    "AND v.window_start <= r.window_start)) AND v.window_end >= r.window_end))"
)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """Rows removed (or, with ``dry_run``, that would be)."""

    tombstones: int
    runs: int
    discrepancies: int
    archived_rows: int
    dead_letters: int
    dry_run: bool
    tombstones_before: datetime | None
    audit_before: datetime | None

    @property
    def total(self) -> int:
        return (
            self.tombstones
            + self.runs
            + self.discrepancies
            + self.archived_rows
            + self.dead_letters
        )


def _count(conn: sa.Connection, sql: str, params: dict[str, object]) -> int:
    return int(conn.execute(sa.text(sql), params).rowcount)


def purge(
    engine: sa.Engine,
    *,
    now: datetime,
    tombstones_older_than: timedelta | None = None,
    audit_older_than: timedelta | None = None,
    dry_run: bool = False,
) -> PurgeResult:
    """Delete tombstones whose delete is older than ``tombstones_older_than``, and runs finished,
    resolved review items created, archived rows archived and dead letters first seen before
    ``now - audit_older_than``; None leaves that kind alone. One transaction, rolled back with
    ``dry_run`` (the counts are those of the real run at that moment)."""
    if now.tzinfo is None:
        raise CdcrError("purge needs a timezone-aware time")
    for what, age in (("tombstones", tombstones_older_than), ("audit", audit_older_than)):
        if age is not None and age < timedelta(0):
            raise CdcrError(f"--{what}-older-than must not be negative")
    t_cut = None if tombstones_older_than is None else now - tombstones_older_than
    a_cut = None if audit_older_than is None else now - audit_older_than
    counts = {"tomb": 0, "disc": 0, "runs": 0, "arch": 0, "dead": 0}
    with engine.connect() as conn, conn.begin() as tx:
        if t_cut is not None:
            counts["tomb"] = _count(
                conn, "DELETE FROM cdcr.tombstones WHERE deleted_at < :c", {"c": t_cut}
            )
        if a_cut is not None:
            p: dict[str, object] = {
                "c": a_cut,
                "bad": [s.value for s in NOT_VERIFIED],
                "ok": [s.value for s in VERIFIED],
            }
            counts["disc"] = _count(
                conn,
                "DELETE FROM cdcr.discrepancies WHERE review_state = 'resolved' "
                "AND created_at < :c",
                p,
            )
            counts["runs"] = _count(
                conn,
                "DELETE FROM cdcr.reconcile_runs r WHERE r.finished IS NOT NULL "
                f"AND r.finished < :c AND NOT ({_KEEP_RUN})",
                p,
            )
            counts["arch"] = _count(
                conn, "DELETE FROM cdcr.extra_rows_archive WHERE archived_at < :c", p
            )
            counts["dead"] = _count(conn, "DELETE FROM cdcr.dead_letters WHERE first_seen < :c", p)
        if dry_run:
            tx.rollback()
    return PurgeResult(
        counts["tomb"],
        counts["runs"],
        counts["disc"],
        counts["arch"],
        counts["dead"],
        dry_run,
        t_cut,
        a_cut,
    )


def forget_table(conn: sa.Connection, table: str) -> None:
    """Every row about ``table`` (source or target ``<schema>.<table>``) in every service table
    that has a ``table_name``; tables others reference by foreign key go last."""
    holders = (
        conn.execute(
            sa.text(
                "select c.table_name from information_schema.columns c "
                "where c.table_schema = 'cdcr' and c.column_name = 'table_name' "
                "order by (select count(*) from pg_constraint k where k.contype = 'f' "
                "and k.confrelid = format('cdcr.%I', c.table_name)::regclass), 1"
            )
        )
        .scalars()
        .all()
    )
    for holder in holders:
        conn.execute(sa.text(f'delete from cdcr."{holder}" where table_name = :t'), {"t": table})


def forget_group(conn: sa.Connection, group: str) -> None:
    """The consumer group's applied offsets."""
    conn.execute(
        sa.text("delete from cdcr.applied_offsets where consumer_group = :g"), {"g": group}
    )
