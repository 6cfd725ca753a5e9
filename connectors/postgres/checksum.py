"""Reconcile's PostgreSQL checksums: per-segment count and checksum, bucketed checksums, key
bounds and quantiles. Sides, normalization and the row hash are in ``sides``; row reads in
``rows`` (both re-exported here).

The algorithm that drives these queries (bisection, classification) is in
``cdc_reconciler.reconcile``; this module only builds and runs SQL.

What is compared, how values are normalized and how a row is hashed is described in
``cdc_reconciler.connectors.postgres.sides``.

A segment's checksum is the ``bit_xor`` of its row hashes, next to ``count(*)``. Rows are unique
by primary key, so xor cannot cancel equal rows; both aggregates are parallel-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.ranges import Key, Segment
from cdc_reconciler.connectors.postgres.rows import _keys_condition as _keys_condition
from cdc_reconciler.connectors.postgres.rows import fetch_json_by_keys as fetch_json_by_keys
from cdc_reconciler.connectors.postgres.rows import fetch_normalized as fetch_normalized
from cdc_reconciler.connectors.postgres.rows import (
    fetch_normalized_by_keys as fetch_normalized_by_keys,
)
from cdc_reconciler.connectors.postgres.rows import (
    fetch_normalized_many as fetch_normalized_many,
)
from cdc_reconciler.connectors.postgres.rows import fetch_raw_by_keys as fetch_raw_by_keys
from cdc_reconciler.connectors.postgres.rows import fetch_text_by_keys as fetch_text_by_keys
from cdc_reconciler.connectors.postgres.sides import Normalized as Normalized
from cdc_reconciler.connectors.postgres.sides import Side as Side
from cdc_reconciler.connectors.postgres.sides import TablePair as TablePair
from cdc_reconciler.connectors.postgres.sides import _key_expr, _key_literal, _stable
from cdc_reconciler.connectors.postgres.sides import database_collation as database_collation
from cdc_reconciler.connectors.postgres.sides import hash_family as hash_family
from cdc_reconciler.connectors.postgres.sides import native_hash_columns as native_hash_columns
from cdc_reconciler.connectors.postgres.sides import row_hash_sql as row_hash_sql
from cdc_reconciler.connectors.postgres.sides import segment_where as segment_where
from cdc_reconciler.connectors.postgres.sides import stable_output as stable_output
from cdc_reconciler.connectors.postgres.sql import quote_ident

# A grouped checksum keeps one small state per bucket: tens of thousands fit in memory, so a
# hash aggregate, with partial aggregates in parallel workers (as far as the server allows
# them), is right. The planner cannot estimate the number of buckets (it assumes one per row), so
# it would sort the whole table's rows first (10M rows: 2x slower) and not use workers: for that
# one statement sorting is off and moving partial results between processes costs nothing.
_GROUPED_ON = (
    "SET LOCAL work_mem = '64MB'; SET LOCAL enable_sort = off; "
    "SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0"
)
_GROUPED_OFF = (
    "RESET work_mem; RESET enable_sort; RESET parallel_setup_cost; RESET parallel_tuple_cost"
)


@dataclass(frozen=True, slots=True)
class SegmentStats:
    count: int
    checksum: int
    min_key: Key | None = None
    max_key: Key | None = None

    def same_content(self, other: SegmentStats) -> bool:
        return self.count == other.count and self.checksum == other.checksum


# --- queries -----------------------------------------------------------------------------


def segment_stats(
    conn: sa.Connection,
    side: Side,
    seg: Segment,
    *,
    with_bounds: bool = False,
) -> SegmentStats:
    """Count and checksum of ``seg`` on ``side`` in one scan; with ``with_bounds`` (single-column
    keys only) also the smallest and largest key. Runs in the connection's transaction."""
    _stable(conn)
    params: dict[str, Any] = {}
    extra = ""
    if with_bounds:
        k = quote_ident(side.key_columns[0])
        extra = f", min({k}), max({k})"
    row = conn.execute(
        sa.text(
            f"SELECT count(*), coalesce(bit_xor({row_hash_sql(side)}), 0){extra} "
            f"FROM {side.sql_name} WHERE {segment_where(side, seg, params)}"
        ),
        params,
    ).one()
    if with_bounds:
        lo = None if row[2] is None else (row[2],)
        hi = None if row[3] is None else (row[3],)
        return SegmentStats(int(row[0]), int(row[1]), lo, hi)
    return SegmentStats(int(row[0]), int(row[1]))


def key_bounds(conn: sa.Connection, side: Side, seg: Segment) -> tuple[int, int] | None:
    """The smallest and largest key of ``seg``'s key range on ``side`` (single integer key),
    window ignored: two index probes, no scan. None when the range is empty."""
    k = quote_ident(side.key_columns[0])
    params: dict[str, Any] = {}
    where = segment_where(side, Segment(seg.table, seg.lo, seg.hi), params)
    row = conn.execute(
        sa.text(f"SELECT min({k}), max({k}) FROM {side.sql_name} WHERE {where}"), params
    ).one()
    return None if row[0] is None else (int(row[0]), int(row[1]))


def integer_bucket_stats(
    conn: sa.Connection, side: Side, seg: Segment, lo: int, width: int
) -> dict[int, SegmentStats]:
    """Count and checksum of every non-empty bucket ``[lo + i·width, lo + (i+1)·width)`` of
    ``seg`` (single integer key, every key ``>= lo``) in one grouped scan: bucket i -> stats."""
    _stable(conn)
    params: dict[str, Any] = {"b_lo": lo, "b_width": width}
    k = quote_ident(side.key_columns[0])
    conn.exec_driver_sql(_GROUPED_ON)
    try:
        rows = conn.execute(
            sa.text(
                f"SELECT ({k} - CAST(:b_lo AS bigint)) / CAST(:b_width AS bigint), count(*), "
                f"bit_xor({row_hash_sql(side)}) FROM {side.sql_name} "
                f"WHERE {segment_where(side, seg, params)} GROUP BY 1"
            ),
            params,
        ).all()
    finally:
        conn.exec_driver_sql(_GROUPED_OFF)
    return {int(b): SegmentStats(int(n), int(h)) for b, n, h in rows}


def bucket_stats(
    conn: sa.Connection,
    side: Side,
    seg: Segment,
    points: Sequence[Key],
) -> list[SegmentStats]:
    """Count and checksum of each child of ``seg.split_at(points)`` in one scan of ``seg``
    (``width_bucket`` over the cut points, a binary search per row)."""
    children = seg.split_at(points)
    inner = [c.lo for c in children[1:]]
    if not inner:
        return [segment_stats(conn, side, seg)]
    _stable(conn)
    params: dict[str, Any] = {}
    arr = ", ".join(
        _key_literal(side, f"p{i}", p, params) for i, p in enumerate(inner) if p is not None
    )
    rows = conn.execute(
        sa.text(
            f"SELECT width_bucket({_key_expr(side)}, ARRAY[{arr}]), count(*), "
            f"coalesce(bit_xor({row_hash_sql(side)}), 0) FROM {side.sql_name} "
            f"WHERE {segment_where(side, seg, params)} GROUP BY 1"
        ),
        params,
    ).all()
    stats = [SegmentStats(0, 0)] * len(children)
    for b, n, h in rows:
        stats[int(b)] = SegmentStats(int(n), int(h))
    return stats


def quantile_keys(conn: sa.Connection, side: Side, seg: Segment, step: int) -> list[Key]:
    """Every ``step``-th key of ``seg`` on ``side`` in key order: cut points for keys that
    cannot be split arithmetically (text, composite)."""
    params: dict[str, Any] = {"step": step}
    cols = ", ".join(quote_ident(k) for k in side.key_columns)
    rows = conn.execute(
        sa.text(
            f"SELECT {cols} FROM (SELECT {cols}, row_number() OVER (ORDER BY {cols}) AS rn "
            f"FROM {side.sql_name} WHERE {segment_where(side, seg, params)}) q "
            f"WHERE rn % :step = 0 ORDER BY {cols}"
        ),
        params,
    ).all()
    return [tuple(r) for r in rows]
