"""``cdcr.reconcile_runs``: one audit row per reconcile of a window, sample or file comparison."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
import sqlalchemy as sa


class RunStatus(StrEnum):
    """What a run ended as (``running`` until then). A StrEnum: it compares equal to, and is
    written and printed as, its value."""

    RUNNING = "running"
    CLEAN = "clean"  # source and target equal
    REPAIRED = "repaired"  # differences found and repaired, then re-verified equal
    OPEN_EXTRAS = "open_extras"  # equal but for target-only rows left for review
    UNRESOLVED = "unresolved"  # differences remain
    SUPERSEDED = "superseded"  # verified, but another reconciler moved the watermark first
    CHECK_FAILED = "check_failed"  # equal rows, a per-window check failed
    FAILED = "failed"  # the run itself failed (an error)
    DIFFERENCES = "differences"  # a dry run found differences (reported, never written)
    SAMPLED = "sampled"  # `cdcr sample`
    FILE_CLEAN = "file_clean"  # `cdcr reconcile-file`, no differences
    FILE_BACKFILLED = "file_backfilled"
    FILE_DIFFERENCES = "file_differences"


# Runs that verify their window (the watermark may advance past it), and runs that did not.
VERIFIED = (RunStatus.CLEAN, RunStatus.REPAIRED, RunStatus.OPEN_EXTRAS)
NOT_VERIFIED = (RunStatus.UNRESOLVED, RunStatus.CHECK_FAILED, RunStatus.FAILED)


@dataclass(frozen=True, slots=True)
class Run:
    run_id: uuid.UUID
    table_name: str
    window_start: datetime | None
    window_end: datetime
    started: datetime
    finished: datetime | None
    status: RunStatus
    counts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunChecks:
    """A table's latest finished run and its per-window checks."""

    table_name: str
    started: datetime
    status: RunStatus
    checks: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class VerifiedRun:
    window_start: datetime | None
    window_end: datetime
    finished: datetime


def _json(v: Any) -> str:
    return orjson.dumps(v, default=str).decode()


def exists(conn: sa.Connection) -> bool:
    """Whether the table exists (the target was migrated)."""
    return conn.execute(sa.text("SELECT to_regclass('cdcr.reconcile_runs')")).scalar() is not None


def start(
    conn: sa.Connection,
    run_id: uuid.UUID,
    table: str,
    window_start: datetime | None,
    window_end: datetime,
    started: datetime,
    counts: dict[str, Any] | None = None,
) -> None:
    """A ``running`` row; ``finish`` or ``fail`` ends it."""
    conn.execute(
        sa.text(
            "INSERT INTO cdcr.reconcile_runs (run_id, table_name, window_start, window_end, "
            "started, status, counts, dry_run) VALUES (:r, :t, :ws, :we, :st, 'running', "
            "CAST(:c AS jsonb), false)"
        ),
        {
            "r": run_id,
            "t": table,
            "ws": window_start,
            "we": window_end,
            "st": started,
            "c": _json(counts or {}),
        },
    )


def finish(
    conn: sa.Connection,
    run_id: uuid.UUID,
    status: RunStatus,
    finished: datetime | None,
    counts: dict[str, Any],
    checks: list[dict[str, Any]] | None = None,
) -> None:
    """Set the outcome (``checks`` left alone when None)."""
    conn.execute(
        sa.text(
            "UPDATE cdcr.reconcile_runs SET status = :s, finished = :f, counts = CAST(:c AS jsonb), "
            "checks = COALESCE(CAST(:k AS jsonb), checks) WHERE run_id = :r"
        ),
        {
            "s": status.value,
            "f": finished,
            "c": _json(counts),
            "k": None if checks is None else _json(checks),
            "r": run_id,
        },
    )


def fail(conn: sa.Connection, run_id: uuid.UUID, finished: datetime, error: str) -> None:
    """Mark the run ``failed``, adding the error to its counts."""
    conn.execute(
        sa.text(
            "UPDATE cdcr.reconcile_runs SET status = 'failed', finished = :f, "
            "counts = counts || CAST(:c AS jsonb) WHERE run_id = :r"
        ),
        {"r": run_id, "f": finished, "c": _json({"error": error[:500]})},
    )


def record(
    conn: sa.Connection,
    run_id: uuid.UUID | str,
    table: str,
    status: RunStatus,
    *,
    window_start: datetime | None,
    window_end: datetime,
    started: datetime,
    finished: datetime,
    counts: dict[str, Any],
    checks: list[dict[str, Any]] | None = None,
) -> None:
    """A finished run in one statement (samples; the apply engine's unresolved TOAST rows)."""
    conn.execute(
        sa.text(
            "INSERT INTO cdcr.reconcile_runs (run_id, table_name, window_start, window_end, started, "
            "finished, status, counts, checks, dry_run) VALUES (:r, :t, :ws, :we, :st, :f, :s, "
            "CAST(:c AS jsonb), CAST(:k AS jsonb), false)"
        ),
        {
            "r": run_id,
            "t": table,
            "ws": window_start,
            "we": window_end,
            "st": started,
            "f": finished,
            "s": status.value,
            "c": _json(counts),
            "k": _json(checks or []),
        },
    )


def get(conn: sa.Connection, run_id: uuid.UUID) -> Run | None:
    row = conn.execute(
        sa.text(
            "SELECT run_id, table_name, window_start, window_end, started, finished, status, "
            "counts FROM cdcr.reconcile_runs WHERE run_id = :r"
        ),
        {"r": run_id},
    ).first()
    return None if row is None else _run(row)


def _run(r: Any) -> Run:
    return Run(r[0], r[1], r[2], r[3], r[4], r[5], RunStatus(r[6]), r[7])


def recent(conn: sa.Connection, limit: int) -> list[Run]:
    """The latest ``limit`` runs, newest first."""
    rows = conn.execute(
        sa.text(
            "SELECT run_id, table_name, window_start, window_end, started, finished, status, "
            "counts FROM cdcr.reconcile_runs ORDER BY started DESC LIMIT :n"
        ),
        {"n": limit},
    ).all()
    return [_run(r) for r in rows]


def latest_checks(conn: sa.Connection) -> list[RunChecks]:
    """Per table, its latest finished run's checks."""
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT ON (table_name) table_name, started, status, checks "
            "FROM cdcr.reconcile_runs WHERE status <> 'running' "
            "ORDER BY table_name, started DESC"
        )
    ).all()
    return [RunChecks(r[0], r[1], RunStatus(r[2]), r[3]) for r in rows]


def first_verified_end(conn: sa.Connection, table: str) -> datetime | None:
    """The end of the table's first verifying whole-table run (``window_start`` NULL)."""
    end = conn.execute(
        sa.text(
            "SELECT min(window_end) FROM cdcr.reconcile_runs WHERE table_name = :t "
            "AND window_start IS NULL AND status = ANY(:ok) AND NOT dry_run"
        ),
        {"t": table, "ok": [s.value for s in VERIFIED]},
    ).scalar()
    return end if isinstance(end, datetime) else None


def verified_between(
    conn: sa.Connection, table: str, lo: datetime, hi: datetime
) -> list[VerifiedRun]:
    """The table's finished verifying runs overlapping ``[lo, hi)``, oldest finish first."""
    rows = conn.execute(
        sa.text(
            "SELECT window_start, window_end, finished FROM cdcr.reconcile_runs "
            "WHERE table_name = :t AND status = ANY(:ok) AND NOT dry_run "
            "AND finished IS NOT NULL AND window_end > :lo "
            "AND (window_start IS NULL OR window_start < :hi) ORDER BY finished"
        ),
        {"t": table, "ok": [s.value for s in VERIFIED], "lo": lo, "hi": hi},
    ).all()
    return [VerifiedRun(*r) for r in rows]


def failed_uncovered(conn: sa.Connection) -> list[Run]:
    """Runs that did not verify their window and that no later verifying run covers, by table
    and window end."""
    rows = conn.execute(
        sa.text(
            "SELECT r.run_id, r.table_name, r.window_start, r.window_end, r.started, r.finished, "
            "r.status, r.counts FROM cdcr.reconcile_runs r "
            "WHERE r.status = ANY(:bad) AND NOT r.dry_run AND NOT EXISTS ("
            "SELECT 1 FROM cdcr.reconcile_runs v WHERE v.table_name = r.table_name "
            "AND v.status = ANY(:ok) AND NOT v.dry_run AND v.started > r.started "
            "AND (v.window_start IS NULL OR (r.window_start IS NOT NULL "
            "AND v.window_start <= r.window_start)) AND v.window_end >= r.window_end) "
            "ORDER BY r.table_name, r.window_end"
        ),
        {"bad": [s.value for s in NOT_VERIFIED], "ok": [s.value for s in VERIFIED]},
    ).all()
    return [_run(r) for r in rows]
