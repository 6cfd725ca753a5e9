"""Key ranges: the plain data types reconcile's SQL works on (a key, a change-time window, a
segment). Here, under ``connectors/postgres``, so the SQL modules do not depend on
``cdc_reconciler.reconcile``; ``cdc_reconciler.reconcile.segments`` re-exports them.

A segment is an immutable value (a table, a primary-key range ``[lo, hi)`` and optionally a
change-time window ``[start, end)``) that is split into children with ``dataclasses.replace``,
never mutated. Keys are tuples in key-column order and compare lexicographically, as PostgreSQL
row constructors do, so single and composite keys share one code path. ``None`` bounds are open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

Key = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open change-time interval ``[start, end)`` of timezone-aware UTC datetimes.
    ``start`` None means "from the beginning"."""

    start: datetime | None
    end: datetime

    def __post_init__(self) -> None:
        for t in (self.start, self.end):
            if t is not None and t.tzinfo is None:
                raise ValueError("window bounds must be timezone-aware")
        if self.start is not None and self.start >= self.end:
            raise ValueError(f"empty window [{self.start}, {self.end})")


@dataclass(frozen=True, slots=True)
class Segment:
    """Rows of ``table`` with ``lo <= key < hi`` (and, with a window, change time in it)."""

    table: str
    lo: Key | None = None
    hi: Key | None = None
    window: Window | None = None

    def split_at(self, points: Sequence[Key]) -> list[Segment]:
        """Children covering exactly this segment, cut at the given keys.

        The points must lie inside ``(lo, hi)`` and increase in the *database's* key order (text
        keys order by collation, which Python's ``<`` does not know), so the order is not checked
        here; a point equal to ``lo`` or to its predecessor is dropped. With no usable point the
        result is ``[self]``.
        """
        inner: list[Key] = []
        for p in points:
            if p != self.lo and p != self.hi and (not inner or p != inner[-1]):
                inner.append(p)
        bounds: list[Key | None] = [self.lo, *inner, self.hi]
        return [replace(self, lo=a, hi=b) for a, b in zip(bounds, bounds[1:], strict=False)]

    def contains_key(self, key: Key) -> bool:
        """Membership by Python ordering: right for numeric keys, not for collated text."""
        return (self.lo is None or key >= self.lo) and (self.hi is None or key < self.hi)

    def describe(self) -> str:
        lo = "-inf" if self.lo is None else repr(self.lo)
        hi = "+inf" if self.hi is None else repr(self.hi)
        return f"{self.table}[{lo}, {hi})"
