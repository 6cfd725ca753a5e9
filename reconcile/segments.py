"""Segments: the unit the reconciler compares, and how to cut them.

The types (Key, Window, Segment) live in ``cdc_reconciler.connectors.postgres.ranges``, so the
SQL modules do not depend on reconcile; they are re-exported here.

A segment is an immutable value (a table, a primary-key range ``[lo, hi)`` and optionally a
change-time window ``[start, end)``) that is split into children with ``dataclasses.replace``,
never mutated. Keys are tuples in key-column order and compare lexicographically, as PostgreSQL
row constructors do, so single and composite keys share one code path. ``None`` bounds are open.
"""

from __future__ import annotations

from cdc_reconciler.connectors.postgres.ranges import Key as Key
from cdc_reconciler.connectors.postgres.ranges import Segment as Segment
from cdc_reconciler.connectors.postgres.ranges import Window as Window


def integer_split_points(lo: int, hi: int, parts: int) -> list[Key]:
    """Up to ``parts - 1`` evenly spaced cut points inside the integer range ``[lo, hi)``
    (``hi`` exclusive), as 1-tuples. Fewer when the range holds fewer values."""
    if parts < 2 or hi - lo < 2:
        return []
    span = hi - lo
    points: list[Key] = []
    for i in range(1, parts):
        p = lo + (span * i) // parts
        if p > lo and (not points or p > points[-1][0]):
            points.append((p,))
    return points


def quantile_positions(count: int, parts: int) -> int:
    """The row step between cut points so that ``count`` rows fall into about ``parts`` parts."""
    if parts < 2 or count < 2:
        return max(count, 1)
    return max(1, -(-count // parts))
