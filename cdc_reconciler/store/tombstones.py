"""``cdcr.tombstones``: the position of the last delete per (target table, key). Written by the
apply engine's batch writes (connectors/target.py, in the rows' own statements); read here."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

_LOOKUP = sa.text(
    "SELECT key, position FROM cdcr.tombstones WHERE table_name = :tn AND key = ANY(:keys)"
)


def max_position(conn: sa.Connection, table: str) -> int | None:
    """The newest tombstone position of ``table``; None when it has none."""
    top = conn.execute(
        sa.text("SELECT max(position) FROM cdcr.tombstones WHERE table_name = :tn"), {"tn": table}
    ).scalar()
    return None if top is None else int(top)


def positions(conn: sa.Connection, table: str, keys: Sequence[str]) -> dict[str, int]:
    """The tombstone position of each of ``keys`` (canonical key texts) that has one; one
    round trip."""
    rows = conn.execute(_LOOKUP, {"tn": table, "keys": list(keys)})
    return {r.key: int(r.position) for r in rows}
