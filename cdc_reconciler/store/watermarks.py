"""Per-table ``reconciled_through`` watermarks in ``cdcr.watermarks``.

A watermark only moves forward and only by compare-and-swap (DESIGN invariant 6), the way Alembic
advances its version table: ``UPDATE … WHERE reconciled_through IS NOT DISTINCT FROM :expected``,
and anything but exactly one changed row raises. Two reconcilers working on the same table can
therefore both verify a window, but only one of them moves the watermark, from the value both
started from to that window's end: no window is skipped and the watermark never goes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from cdc_reconciler.errors import CdcrError


class WatermarkConflict(CdcrError):
    """Another reconciler moved the watermark first; re-read it and carry on from there."""


@dataclass(frozen=True, slots=True)
class Watermark:
    table: str
    reconciled_through: datetime | None
    state: str
    updated_at: datetime


def ensure(conn: sa.Connection, table: str) -> None:
    """Insert the table's watermark row (NULL: nothing reconciled) unless it exists."""
    conn.execute(
        sa.text(
            "INSERT INTO cdcr.watermarks (table_name) VALUES (:t) ON CONFLICT (table_name) DO NOTHING"
        ),
        {"t": table},
    )


def read(conn: sa.Connection, table: str) -> Watermark | None:
    row = conn.execute(
        sa.text(
            "SELECT table_name, reconciled_through, state, updated_at FROM cdcr.watermarks "
            "WHERE table_name = :t"
        ),
        {"t": table},
    ).first()
    return None if row is None else Watermark(*row)


def read_all(conn: sa.Connection) -> list[Watermark]:
    rows = conn.execute(
        sa.text(
            "SELECT table_name, reconciled_through, state, updated_at FROM cdcr.watermarks "
            "ORDER BY table_name"
        )
    ).all()
    return [Watermark(*r) for r in rows]


def advance(conn: sa.Connection, table: str, expected: datetime | None, new: datetime) -> None:
    """Move ``table``'s watermark from ``expected`` to ``new`` in the caller's transaction.

    Raises CdcrError when ``new`` is not after ``expected`` (watermarks never go back), and
    WatermarkConflict unless exactly one row changed (someone else moved it, or the row is
    missing: call ``ensure`` first)."""
    if new.tzinfo is None:
        raise CdcrError("watermarks are timezone-aware UTC instants")
    if expected is not None and new <= expected:
        raise CdcrError(f"watermark of {table} would not move forward: {expected} -> {new}")
    changed = conn.execute(
        sa.text(
            "UPDATE cdcr.watermarks SET reconciled_through = :new, state = 'idle', "
            "updated_at = now() WHERE table_name = :t "
            "AND reconciled_through IS NOT DISTINCT FROM :expected"
        ),
        {"t": table, "new": new, "expected": expected},
    ).rowcount
    if changed != 1:
        current = read(conn, table)
        raise WatermarkConflict(
            f"watermark of {table} is no longer {expected} (now "
            f"{current.reconciled_through if current else 'missing'}); another reconciler moved it"
        )


def set_state(conn: sa.Connection, table: str, state: str) -> None:
    """Record what the reconciler is doing with the table (not part of the CAS)."""
    conn.execute(
        sa.text("UPDATE cdcr.watermarks SET state = :s, updated_at = now() WHERE table_name = :t"),
        {"t": table, "s": state},
    )
