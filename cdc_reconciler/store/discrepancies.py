"""``cdcr.discrepancies`` (the review queue: what a reconcile, or the apply engine, found different
and what was done about it) and ``cdcr.extra_rows_archive`` (target rows kept before a delete).

Keys are canonical key texts (connectors.target.key_text); rows are JSON texts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa


class ReviewState(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class NewDiscrepancy:
    key: str
    kind: str  # missing | extra | mismatched | orphan
    action: str  # what was done: reported, replayed, upserted, deleted, ...
    columns: list[str] | None = None
    source_row: str | None = None  # JSON
    target_row: str | None = None  # JSON


@dataclass(frozen=True, slots=True)
class ArchivedRow:
    run_id: uuid.UUID | None
    table: str
    key: str
    row: str  # JSON of the whole target row


@dataclass(frozen=True, slots=True)
class ReviewItem:
    id: int
    run_id: uuid.UUID
    table_name: str
    key: str
    kind: str
    columns: list[str] | None
    action: str
    review_state: ReviewState
    created_at: datetime
    resolution: str | None
    resolved_by: str | None
    resolved_at: datetime | None
    note: str | None


@dataclass(frozen=True, slots=True)
class ReviewDetail:
    """An item with the rows recorded when it was found and its run's window."""

    item: ReviewItem
    source_row: Any
    target_row: Any
    window_start: datetime | None
    window_end: datetime | None


@dataclass(frozen=True, slots=True)
class OpenKind:
    """Open items of one table and kind; ``oldest_age_s`` by the database's clock."""

    table: str
    kind: str
    n: int
    oldest: datetime
    oldest_age_s: float


@dataclass(frozen=True, slots=True)
class OpenItem:
    id: int
    run_id: uuid.UUID
    table_name: str
    key: str
    kind: str
    columns: list[str] | None
    action: str
    created_at: datetime


_ITEM = (
    "d.id, d.run_id, d.table_name, d.key, d.kind, d.columns, d.action, d.review_state, "
    "d.created_at, d.resolution, d.resolved_by, d.resolved_at, d.note"
)
_INSERT = sa.text(
    "INSERT INTO cdcr.discrepancies (run_id, table_name, key, kind, columns, source_row, "
    "target_row, action, review_state) VALUES (:run, :t, :k, :kind, :cols, "
    "CAST(:s AS jsonb), CAST(:tr AS jsonb), :action, 'open')"
)


def _item(r: Sequence[Any]) -> ReviewItem:
    return ReviewItem(
        id=r[0],
        run_id=r[1],
        table_name=r[2],
        key=r[3],
        kind=r[4],
        columns=r[5],
        action=r[6],
        review_state=ReviewState(r[7]),
        created_at=r[8],
        resolution=r[9],
        resolved_by=r[10],
        resolved_at=r[11],
        note=r[12],
    )


def _params(run_id: uuid.UUID, table: str, found: Sequence[NewDiscrepancy]) -> list[dict[str, Any]]:
    return [
        {
            "run": run_id,
            "t": table,
            "k": d.key,
            "kind": d.kind,
            "cols": d.columns,
            "s": d.source_row,
            "tr": d.target_row,
            "action": d.action,
        }
        for d in found
    ]


def insert(
    conn: sa.Connection, run_id: uuid.UUID, table: str, found: Sequence[NewDiscrepancy]
) -> None:
    """Open items for ``run_id`` (one statement)."""
    if not found:
        return
    conn.execute(
        _INSERT,
        _params(run_id, table, found),
    )


def insert_once(
    conn: sa.Connection, run_id: uuid.UUID, table: str, found: Sequence[NewDiscrepancy]
) -> None:
    """Like ``insert``, but a key that already has an open item of the same kind is skipped."""
    if not found:
        return
    conn.execute(
        sa.text(
            "INSERT INTO cdcr.discrepancies (run_id, table_name, key, kind, columns, source_row, "
            "target_row, action, review_state) SELECT :run, :t, :k, :kind, :cols, "
            "CAST(:s AS jsonb), CAST(:tr AS jsonb), :action, 'open' WHERE NOT EXISTS (SELECT 1 "
            "FROM cdcr.discrepancies WHERE table_name = :t AND key = :k AND kind = :kind "
            "AND review_state = 'open')"
        ),
        _params(run_id, table, found),
    )


def resolve_run(conn: sa.Connection, run_id: uuid.UUID, keep: Sequence[str]) -> None:
    """Resolve the run's items except those of ``keep`` (keys still different)."""
    conn.execute(
        sa.text(
            "UPDATE cdcr.discrepancies SET review_state = 'resolved' WHERE run_id = :r "
            "AND NOT (key = ANY(:keep))"
        ),
        {"r": run_id, "keep": list(keep)},
    )


def archive(conn: sa.Connection, rows: Sequence[ArchivedRow]) -> None:
    """Keep target rows in ``cdcr.extra_rows_archive`` (one statement)."""
    if not rows:
        return
    conn.execute(
        sa.text(
            "INSERT INTO cdcr.extra_rows_archive (run_id, table_name, key, row) "
            "VALUES (:r, :t, :k, CAST(:row AS jsonb))"
        ),
        [{"r": a.run_id, "t": a.table, "k": a.key, "row": a.row} for a in rows],
    )


def items(
    conn: sa.Connection, *, table: str | None, kind: str | None, state: str, limit: int
) -> list[ReviewItem]:
    """Items oldest first; ``state`` open, resolved or all."""
    rows = conn.execute(
        sa.text(
            f"SELECT {_ITEM} FROM cdcr.discrepancies d WHERE "
            "(CAST(:t AS text) IS NULL OR d.table_name = :t) AND "
            "(CAST(:k AS text) IS NULL OR d.kind = :k) AND "
            "(CAST(:s AS text) = 'all' OR d.review_state = :s) "
            "ORDER BY d.created_at, d.id LIMIT :n"
        ),
        {"t": table, "k": kind, "s": state, "n": limit},
    ).all()
    return [_item(r) for r in rows]


def detail(conn: sa.Connection, item_id: int) -> ReviewDetail | None:
    r = conn.execute(
        sa.text(
            f"SELECT {_ITEM}, d.source_row, d.target_row, r.window_start, r.window_end "
            "FROM cdcr.discrepancies d LEFT JOIN cdcr.reconcile_runs r ON r.run_id = d.run_id "
            "WHERE d.id = :i"
        ),
        {"i": item_id},
    ).first()
    return None if r is None else ReviewDetail(_item(r), r[13], r[14], r[15], r[16])


def existing(conn: sa.Connection, ids: Sequence[int]) -> set[int]:
    rows = conn.execute(
        sa.text("SELECT id FROM cdcr.discrepancies WHERE id = ANY(:i)"), {"i": list(ids)}
    )
    return {int(r[0]) for r in rows}


def lock(conn: sa.Connection, item_id: int) -> ReviewItem:
    """The item, locked for the caller's transaction (raises NoResultFound when missing)."""
    r = conn.execute(
        sa.text(f"SELECT {_ITEM} FROM cdcr.discrepancies d WHERE d.id = :i FOR UPDATE"),
        {"i": item_id},
    ).one()
    return _item(r)


def resolve(
    conn: sa.Connection, item_id: int, decision: str, who: str, at: datetime, note: str | None
) -> None:
    conn.execute(
        sa.text(
            "UPDATE cdcr.discrepancies SET review_state = 'resolved', resolution = :d, "
            "resolved_by = :b, resolved_at = :at, note = :n WHERE id = :i"
        ),
        {"d": decision, "b": who, "at": at, "n": note, "i": item_id},
    )


def open_by_kind(conn: sa.Connection, tables: Sequence[str] | None = None) -> list[OpenKind]:
    """Open items per table and kind (of ``tables``, default all), by table and kind."""
    rows = conn.execute(
        sa.text(
            "SELECT table_name, kind, count(*), min(created_at), "
            "extract(epoch FROM now() - min(created_at)) FROM cdcr.discrepancies "
            "WHERE review_state = 'open' "
            "AND (CAST(:all AS boolean) OR table_name = ANY(:t)) GROUP BY 1, 2 ORDER BY 1, 2"
        ),
        {"all": tables is None, "t": list(tables or [])},
    ).all()
    return [OpenKind(r[0], r[1], int(r[2]), r[3], float(r[4] or 0)) for r in rows]


def open_latest(conn: sa.Connection, limit: int) -> list[OpenItem]:
    """The newest ``limit`` open items."""
    rows = conn.execute(
        sa.text(
            "SELECT id, run_id, table_name, key, kind, columns, action, created_at "
            "FROM cdcr.discrepancies WHERE review_state = 'open' ORDER BY id DESC LIMIT :n"
        ),
        {"n": limit},
    ).all()
    return [OpenItem(*r) for r in rows]
