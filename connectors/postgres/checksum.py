"""Reconcile's PostgreSQL SQL: catalog reads, per-segment count and checksum, row reads.

The algorithm that drives these queries (bisection, classification) is in
``cdc_reconciler.reconcile``; this module only builds and runs SQL.

Rows are normalized so that equal values hash equally across source and target:

- the ``_cdc_*`` columns of the target are never compared;
- ``numeric`` loses trailing zeros of its scale (``trim_scale``), so ``1.50`` == ``1.5``;
- ``json`` is read as ``jsonb`` (key order and whitespace do not matter);
- ``timetz`` is compared as an instant (at UTC): Debezium cannot carry its offset;
- every query runs with ``TimeZone=UTC`` and fixed output styles, so ``timestamptz``, dates,
  intervals, floats and ``bytea`` have one text form;
- TOAST is invisible at this level (values are read whole inside the database).

The row hash is ``hash_record_extended(ROW(<columns>), 0)`` (64 bits, PostgreSQL 14+): each
column is hashed by its type's own hash function and the column hashes are combined in column
order (a NULL hashes to 0). Reading the hash of a value is about 3× cheaper than rendering it as
text (10 columns, 1M rows: 0.36 s against 1.1 s for ``hashtextextended(ROW(…)::text)``). A
column is hashed natively only when both sides' types are in the same *hash family* below, whose
hash equality is exactly the equality of the normalized text the leaves compare (integers of any
width, numeric by value, text and varchar byte-wise under ``COLLATE "C"``, boolean, date,
timestamps, time, timetz at UTC, uuid, bytea). Every other column (json/jsonb: their numbers
keep their scale in text; floats: ``-0``; interval: ``1 day`` = ``24:00:00``; enums: hashed by
OID; citext, arrays, domains, types without a hash) is hashed as its normalized text, so a
checksum never calls equal two rows whose leaves would differ.

A segment's checksum is the ``bit_xor`` of its row hashes, next to ``count(*)``. Rows are unique
by primary key, so xor cannot cancel equal rows; both aggregates are parallel-safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.sql import quote_ident
from cdc_reconciler.reconcile.segments import Key, Segment

# Session settings that fix every type's text output, set per transaction (SET LOCAL).
_STABLE_OUTPUT = (
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; "
    "SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1; "
    "SET LOCAL bytea_output = 'hex'"
)
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
_TEXT_LIKE = ("text", "character varying", "character", "citext", "name")


def hash_family(typ: str) -> str | None:
    """The family whose native hash decides equality for a ``format_type()`` string, or None
    when the column must be hashed as its normalized text (see the module docstring)."""
    if typ in ("smallint", "integer", "bigint"):
        return "int"
    if typ.startswith("numeric"):
        return "numeric"
    if typ == "text" or typ.startswith("character varying"):
        return "text"
    if typ.startswith("timestamp"):
        return "timestamptz" if typ.endswith("with time zone") else "timestamp"
    if typ.startswith("time"):
        return "timetz" if typ.endswith("with time zone") else "time"
    if typ in ("boolean", "date", "uuid", "bytea"):
        return typ
    return None


def native_hash_columns(
    columns: Iterable[str], source_types: Mapping[str, str], target_types: Mapping[str, str]
) -> frozenset[str]:
    """The columns both sides can hash natively: same hash family on both sides."""
    return frozenset(
        c
        for c in columns
        if (f := hash_family(source_types[c])) is not None and f == hash_family(target_types[c])
    )


@dataclass(frozen=True, slots=True)
class Side:
    """One database's view of a reconciled table: what is compared and how it is typed."""

    schema: str
    name: str
    key_columns: tuple[str, ...]
    columns: tuple[str, ...]  # compared columns, in compare order (keys included)
    types: Mapping[str, str] = field(hash=False)  # column -> format_type()
    change_time_column: str | None = None
    # Columns hashed by their type's hash function (the same set on both sides of a pair);
    # the others are hashed as normalized text.
    native_hash: frozenset[str] = frozenset()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def sql_name(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


@dataclass(frozen=True, slots=True)
class TablePair:
    """A source table and its target table. ``name`` is the source ``<schema>.<table>``."""

    name: str
    source: Side
    target: Side

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self.source.key_columns

    @property
    def columns(self) -> tuple[str, ...]:
        return self.source.columns

    @property
    def windowed(self) -> bool:
        return self.source.change_time_column is not None

    def integer_key(self) -> bool:
        return len(self.key_columns) == 1 and self.source.types[self.key_columns[0]] in (
            "smallint",
            "integer",
            "bigint",
        )

    def text_key(self) -> bool:
        return any(self.source.types[k].startswith(_TEXT_LIKE) for k in self.key_columns)


@dataclass(frozen=True, slots=True)
class SegmentStats:
    count: int
    checksum: int
    min_key: Key | None = None
    max_key: Key | None = None

    def same_content(self, other: SegmentStats) -> bool:
        return self.count == other.count and self.checksum == other.checksum


Normalized = tuple[str | None, ...]


# --- catalog ------------------------------------------------------------------------------


def database_collation(conn: sa.Connection) -> str | None:
    q = sa.text("SELECT datcollate FROM pg_database WHERE datname = current_database()")
    value = conn.execute(q).scalar()
    return None if value is None else str(value)


# --- SQL building -------------------------------------------------------------------------


def _norm(side: Side, col: str) -> str:
    typ = side.types[col]
    q = quote_ident(col)
    if typ.startswith("numeric"):
        return f"trim_scale({q})"
    if typ == "json":
        return f"{q}::jsonb"
    if (
        typ.startswith("time")
        and typ.endswith("with time zone")
        and not typ.startswith("timestamp")
    ):
        # Debezium carries timetz converted to UTC (the offset is lost in every mode), so both
        # sides compare the instant: 18:34:31+03:30 == 15:04:31+00.
        return f"({q} AT TIME ZONE 'UTC')"
    return q


def _hashed(side: Side, col: str) -> str:
    """``col`` as it enters the row hash: native (see hash_family) or as normalized text."""
    if col not in side.native_hash:
        return f"({_norm(side, col)})::text"
    q = quote_ident(col)
    family = hash_family(side.types[col])
    if family == "numeric":
        return q  # numeric's hash ignores trailing zeros already: no trim_scale needed
    if family == "text":
        return f'{q} COLLATE "C"'  # byte-wise, whatever the column's collation
    return _norm(side, col)


def row_hash_sql(side: Side) -> str:
    return "hash_record_extended(ROW(" + ", ".join(_hashed(side, c) for c in side.columns) + "), 0)"


def _key_expr(side: Side) -> str:
    cols = ", ".join(quote_ident(k) for k in side.key_columns)
    return cols if len(side.key_columns) == 1 else f"ROW({cols})"


def _key_literal(side: Side, prefix: str, key: Key, params: dict[str, Any]) -> str:
    parts = []
    for i, (k, v) in enumerate(zip(side.key_columns, key, strict=True)):
        name = f"{prefix}_{i}"
        params[name] = v
        parts.append(f"CAST(:{name} AS {side.types[k]})")
    return parts[0] if len(parts) == 1 else "ROW(" + ", ".join(parts) + ")"


def segment_where(side: Side, seg: Segment, params: dict[str, Any], prefix: str = "") -> str:
    """The WHERE condition selecting ``seg``'s rows on ``side``; fills ``params`` (names start
    with ``prefix``, so that several segments' conditions can share one statement)."""
    conds = ["TRUE"]
    key = _key_expr(side)
    if seg.lo is not None:
        conds.append(f"{key} >= {_key_literal(side, prefix + 'lo', seg.lo, params)}")
    if seg.hi is not None:
        conds.append(f"{key} < {_key_literal(side, prefix + 'hi', seg.hi, params)}")
    if seg.window is not None and side.change_time_column is not None:
        ct = quote_ident(side.change_time_column)
        if seg.window.start is not None:
            params["w_start"] = seg.window.start
            conds.append(f"{ct} >= :w_start")
        params["w_end"] = seg.window.end
        conds.append(f"{ct} < :w_end")
    return " AND ".join(conds)


def stable_output(conn: sa.Connection) -> None:
    """Fix every type's text output for the rest of the current transaction."""
    conn.exec_driver_sql(_STABLE_OUTPUT)


_stable = stable_output


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


def fetch_normalized(conn: sa.Connection, side: Side, seg: Segment) -> dict[Key, Normalized]:
    """The rows of ``seg``: key -> normalized text of every compared column."""
    _stable(conn)
    params: dict[str, Any] = {}
    keys = ", ".join(quote_ident(k) for k in side.key_columns)
    vals = ", ".join(f"({_norm(side, c)})::text" for c in side.columns)
    rows = conn.execute(
        sa.text(
            f"SELECT {keys}, {vals} FROM {side.sql_name} WHERE {segment_where(side, seg, params)}"
        ),
        params,
    ).all()
    n = len(side.key_columns)
    return {tuple(r[:n]): tuple(r[n:]) for r in rows}


def fetch_normalized_many(
    conn: sa.Connection, side: Side, segs: Sequence[Segment]
) -> dict[Key, Normalized]:
    """fetch_normalized over many disjoint segments: one statement per 256 segments."""
    _stable(conn)
    keys = ", ".join(quote_ident(k) for k in side.key_columns)
    vals = ", ".join(f"({_norm(side, c)})::text" for c in side.columns)
    n = len(side.key_columns)
    out: dict[Key, Normalized] = {}
    for i in range(0, len(segs), 256):
        params: dict[str, Any] = {}
        conds = [
            segment_where(side, seg, params, prefix=f"s{j}_")
            for j, seg in enumerate(segs[i : i + 256])
        ]
        rows = conn.execute(
            sa.text(
                f"SELECT {keys}, {vals} FROM {side.sql_name} WHERE (" + ") OR (".join(conds) + ")"
            ),
            params,
        )
        out.update((tuple(r[:n]), tuple(r[n:])) for r in rows)
    return out


def _keys_condition(side: Side, keys: Sequence[Key], params: dict[str, Any]) -> str:
    lits = ", ".join(_key_literal(side, f"k{i}", k, params) for i, k in enumerate(keys))
    return f"{_key_expr(side)} IN ({lits})"


def _rows_by_keys(
    conn: sa.Connection, side: Side, keys: Iterable[Key], select: str, alias: str = ""
) -> Iterator[sa.Row[Any]]:
    """``SELECT {select} FROM side [alias] WHERE key IN (…)``, 500 keys per statement."""
    for chunk in _chunks(list(keys), 500):
        params: dict[str, Any] = {}
        yield from conn.execute(
            sa.text(
                f"SELECT {select} FROM {side.sql_name} {alias} "
                f"WHERE {_keys_condition(side, chunk, params)}"
            ),
            params,
        )


def fetch_normalized_by_keys(
    conn: sa.Connection,
    side: Side,
    keys: Iterable[Key],
) -> dict[Key, Normalized]:
    """Like fetch_normalized, for the given keys regardless of any window."""
    _stable(conn)
    n = len(side.key_columns)
    cols = ", ".join(quote_ident(k) for k in side.key_columns)
    vals = ", ".join(f"({_norm(side, c)})::text" for c in side.columns)
    return {tuple(r[:n]): tuple(r[n:]) for r in _rows_by_keys(conn, side, keys, f"{cols}, {vals}")}


def fetch_raw_by_keys(
    conn: sa.Connection, side: Side, keys: Iterable[Key], columns: Sequence[str] | None = None
) -> dict[Key, dict[str, Any]]:
    """Rows by key as Python values (for repair writes): key -> {column: value}."""
    sel = ", ".join(quote_ident(c) for c in tuple(columns or side.columns))
    out: dict[Key, dict[str, Any]] = {}
    for r in _rows_by_keys(conn, side, keys, sel):
        row = dict(r._mapping)
        out[tuple(row[k] for k in side.key_columns)] = row
    return out


def fetch_text_by_keys(
    conn: sa.Connection, side: Side, keys: Iterable[Key]
) -> dict[Key, dict[str, Any]]:
    """Rows by key for repair writes: key -> {column: the value's text, or None}. Text, read with
    the fixed output styles (UTC, ISO dates, postgres intervals, shortest exact floats, hex bytea),
    is what COPY reads back into the same type exactly; Python values would not round-trip (an
    interval's months became 30 days, an hstore a dict COPY cannot read). The map's keys are the
    key columns' Python values, as the diff reports them."""
    stable_output(conn)
    n = len(side.key_columns)
    keys_sel = ", ".join(quote_ident(k) for k in side.key_columns)
    text_sel = ", ".join(f"({quote_ident(c)})::text" for c in side.columns)
    out: dict[Key, dict[str, Any]] = {}
    for r in _rows_by_keys(conn, side, keys, f"{keys_sel}, {text_sel}"):
        out[tuple(r[:n])] = dict(zip(side.columns, r[n:], strict=True))
    return out


def fetch_json_by_keys(
    conn: sa.Connection,
    side: Side,
    keys: Iterable[Key],
) -> dict[Key, str]:
    """Whole rows by key as JSON text (``to_jsonb``), ``_cdc_*`` included: for archives. Text,
    not parsed, because positions exceed 64 bits."""
    n = len(side.key_columns)
    cols = ", ".join(quote_ident(k) for k in side.key_columns)
    rows = _rows_by_keys(conn, side, keys, f"{cols}, to_jsonb(t)::text", alias="t")
    return {tuple(r[:n]): r[n] for r in rows}


def _chunks(items: list[Key], size: int) -> Iterable[list[Key]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
