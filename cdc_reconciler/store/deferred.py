"""``cdcr.deferred_keys``: keys a reconcile found different but could not confirm because a
change to them was still in flight (reconcile/inflight.py); re-checked on every pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa


@dataclass(frozen=True, slots=True)
class Deferral:
    key: str  # canonical key text
    kind: str  # missing | extra | mismatched when last seen
    reason: str  # changing | applying | ...


def keys(conn: sa.Connection, table: str) -> list[str]:
    """The table's deferred key texts, sorted."""
    rows = conn.execute(
        sa.text("SELECT key FROM cdcr.deferred_keys WHERE table_name = :t ORDER BY key"),
        {"t": table},
    ).all()
    return [r[0] for r in rows]


def first_deferred(conn: sa.Connection, table: str, wanted: Sequence[str]) -> dict[str, datetime]:
    """When each of ``wanted`` that is deferred was first deferred."""
    rows = conn.execute(
        sa.text(
            "SELECT key, first_deferred FROM cdcr.deferred_keys WHERE table_name = :t "
            "AND key = ANY(:k)"
        ),
        {"t": table, "k": list(wanted)},
    ).all()
    return {r[0]: r[1] for r in rows}


def forget(conn: sa.Connection, table: str, settled: Sequence[str]) -> None:
    if settled:
        conn.execute(
            sa.text("DELETE FROM cdcr.deferred_keys WHERE table_name = :t AND key = ANY(:k)"),
            {"t": table, "k": list(settled)},
        )


def defer(conn: sa.Connection, table: str, found: Sequence[Deferral], now: datetime) -> None:
    """Record (or count again) deferred keys. ``first_deferred`` restarts when a key is deferred
    because its change is being applied right now."""
    if not found:
        return
    conn.execute(
        sa.text(
            "INSERT INTO cdcr.deferred_keys AS d (table_name, key, kind, reason, "
            "first_deferred, last_deferred) VALUES (:t, :k, :kind, :r, :now, :now) "
            "ON CONFLICT (table_name, key) DO UPDATE SET kind = EXCLUDED.kind, "
            "reason = EXCLUDED.reason, last_deferred = EXCLUDED.last_deferred, "
            "times = d.times + 1, first_deferred = CASE WHEN EXCLUDED.reason = 'applying' "
            "THEN EXCLUDED.first_deferred ELSE d.first_deferred END"
        ),
        [{"t": table, "k": f.key, "kind": f.kind, "r": f.reason, "now": now} for f in found],
    )
