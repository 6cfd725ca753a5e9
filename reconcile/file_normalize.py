"""The one value normalisation of ``cdcr reconcile-file``: a file value and a typed table value
compare equal exactly when their *canonical texts* are equal.

Each compared column is canonicalised by the **table column's type**, on both sides: inside
PostgreSQL for the table (SQL below) and inside DuckDB for the file, whose columns are all read as
text first (Parquet and JSON values are cast to text, CSV is read as text). The rules:

=====================  =====================================================================
table type             canonical text (file value first trimmed of spaces; empty = NULL)
=====================  =====================================================================
smallint, integer,     the exact decimal, no ``+``, no leading zeros, no trailing fractional
bigint, numeric        zeros: ``1.50`` = ``1.5`` = ``+1.500`` = ``15e-1``; ``-0`` = ``0``.
                       File values carry at most 18 fractional digits (more are rounded).
real, double           15 (``double``) or 6 (``real``) significant digits, C ``%g`` form, as
                       PostgreSQL prints with ``extra_float_digits = 0``; ``inf``/``nan`` spelt
                       ``Infinity``/``NaN``.
boolean                ``t`` or ``f``; the file may say ``t/true/1/yes/y/on`` and
                       ``f/false/0/no/n/off`` in any case.
date                   ``YYYY-MM-DD``.
timestamp,             the instant in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffff``. A file value with
timestamptz            a zone or offset is converted to UTC; one without is taken as UTC; a
                       ``timestamp without time zone`` column is read as UTC too.
uuid                   lower case with dashes.
text, varchar, char    the value itself, not trimmed (``char(n)`` without its padding); the
                       empty string is NULL.
anything else          PostgreSQL's text output against the file's text, the empty string NULL
                       (``json``, arrays, ``interval``, ``bytea`` … compare as text).
=====================  =====================================================================

A file value that does not parse as the column's type (``abc`` in an integer column) becomes
``!`` + the value, which equals no table value: it is reported as a difference, never dropped.
A row's canonical text joins its columns with commas (text-like columns quoted, ``~`` for
NULL), so no two different rows join to the same text; its hash is the first 60 bits of the MD5 of that
text, computed identically by both engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cdc_reconciler.connectors.postgres.sql import quote_ident


class Kind(StrEnum):
    NUMBER = "number"
    DOUBLE = "double"
    REAL = "real"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    UUID = "uuid"
    TEXT = "text"
    CHAR = "char"
    OTHER = "other"


# Session settings of the table-side transaction: every type's text output fixed, floats at
# 15 significant digits (``extra_float_digits = 0``) to match DuckDB's ``printf('%.15g')``.
# JIT off: compiling these wide expressions cost more than it saved (1M rows: 5.3 s -> 3.2 s).
PG_SESSION = (
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; "
    "SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 0; "
    "SET LOCAL bytea_output = 'hex'; SET LOCAL jit = off"
)

# Fractional digits a file number keeps (DuckDB's widest exact decimal is 38 digits).
FILE_SCALE = 18

_TRUE = ("t", "true", "1", "yes", "y", "on")
_FALSE = ("f", "false", "0", "no", "n", "off")


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A table column's type as ``format_type()`` spells it, and its normalisation kind."""

    name: str
    pg_type: str

    @property
    def kind(self) -> Kind:
        return kind_of(self.pg_type)


# A type's kind: its exact name (lower case) first, then the first prefix its name starts with
# (names with a modifier: numeric(10,2), timestamp(3), character(4), character varying(8)).
_KIND_BY_NAME: dict[str, Kind] = {
    "smallint": Kind.NUMBER,
    "integer": Kind.NUMBER,
    "bigint": Kind.NUMBER,
    "double precision": Kind.DOUBLE,
    "real": Kind.REAL,
    "boolean": Kind.BOOLEAN,
    "date": Kind.DATE,
    "uuid": Kind.UUID,
    "character": Kind.CHAR,
    "bpchar": Kind.CHAR,
    "text": Kind.TEXT,
    "citext": Kind.TEXT,
    "name": Kind.TEXT,
}
_KIND_BY_PREFIX: tuple[tuple[str, Kind], ...] = (
    ("numeric", Kind.NUMBER),
    ("timestamp", Kind.TIMESTAMP),  # after _is_timestamptz
    ("character(", Kind.CHAR),
    ("character varying", Kind.TEXT),
)


def _is_timestamptz(t: str) -> bool:
    return t.startswith("timestamp") and "with time zone" in t and "without" not in t


def kind_of(pg_type: str) -> Kind:
    t = pg_type.lower()
    kind = _KIND_BY_NAME.get(t)
    if kind is not None:
        return kind
    if _is_timestamptz(t):
        return Kind.TIMESTAMPTZ
    for prefix, by_prefix in _KIND_BY_PREFIX:
        if t.startswith(prefix):
            return by_prefix
    return Kind.OTHER


def _numeric_scale(pg_type: str) -> int:
    """Fractional digits DuckDB keeps for a file number: the column's declared scale when it is
    wider than :data:`FILE_SCALE`, leaving room for the declared integer digits (max 38)."""
    t = pg_type.lower()
    if t.startswith("numeric(") and "," in t:
        p, s = (int(x) for x in t[len("numeric(") : -1].split(","))
        return max(0, min(max(s, FILE_SCALE), 38 - (p - s)))
    return FILE_SCALE


# --- PostgreSQL (the table) -----------------------------------------------------------------


def pg_canonical(col: ColumnType) -> str:
    """SQL (PostgreSQL) of ``col``'s canonical text; run under :data:`PG_SESSION`."""
    q = quote_ident(col.name)
    k = col.kind
    if k is Kind.NUMBER:
        return f"trim_scale({q}::numeric)::text"
    if k in (Kind.DOUBLE, Kind.REAL):
        return f"{q}::text"
    if k is Kind.BOOLEAN:
        return f"CASE WHEN {q} THEN 't' WHEN NOT {q} THEN 'f' END"
    if k is Kind.DATE:
        return f"to_char({q}, 'YYYY-MM-DD')"
    if k is Kind.TIMESTAMP:
        return f"to_char({q}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
    if k is Kind.TIMESTAMPTZ:
        return f"to_char({q} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
    if k is Kind.UUID:
        return f"{q}::text"
    return f"nullif({q}::text, '')"


# --- DuckDB (the file) ----------------------------------------------------------------------


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def duck_canonical(col: ColumnType, file_column: str) -> str:
    """SQL (DuckDB) of the canonical text of the file column ``file_column`` (read as VARCHAR)
    compared with table column ``col``. Session time zone must be UTC."""
    v = quote_ident(file_column)
    k = col.kind
    if k is Kind.TEXT or k is Kind.OTHER:
        return f"nullif({v}, '')"
    if k is Kind.CHAR:
        return f"nullif(rtrim({v}, ' '), '')"
    b = f"nullif(trim({v}), '')"
    # Shown as the file spelt it, but with commas and quotes replaced, so a marker never breaks
    # the joined row text (see joined()).
    bad = f"'!' || translate({b}, ',\"', ';''')"
    if k is Kind.NUMBER:
        dec = f"TRY_CAST({b} AS DECIMAL(38, {_numeric_scale(col.pg_type)}))::VARCHAR"
        # DuckDB prints every scale digit: drop trailing zeros, then a bare point.
        fmt = f"regexp_replace(regexp_replace({dec}, '0+$', ''), '\\.$', '')"
        if _numeric_scale(col.pg_type) == 0:
            fmt = dec
        return f"coalesce({fmt}, {bad})"
    if k in (Kind.DOUBLE, Kind.REAL):
        digits, typ = (15, "DOUBLE") if k is Kind.DOUBLE else (6, "FLOAT")
        x = f"TRY_CAST({b} AS {typ})::DOUBLE"
        return (
            f"CASE WHEN {b} IS NULL THEN NULL WHEN {x} IS NULL THEN {bad} "
            f"WHEN isnan({x}) THEN 'NaN' WHEN {x} = 'inf'::DOUBLE THEN 'Infinity' "
            f"WHEN {x} = '-inf'::DOUBLE THEN '-Infinity' ELSE printf('%.{digits}g', {x}) END"
        )
    if k is Kind.BOOLEAN:
        t = ", ".join(_sql_str(x) for x in _TRUE)
        f = ", ".join(_sql_str(x) for x in _FALSE)
        return (
            f"CASE WHEN {b} IS NULL THEN NULL WHEN lower({b}) IN ({t}) THEN 't' "
            f"WHEN lower({b}) IN ({f}) THEN 'f' ELSE {bad} END"
        )
    if k is Kind.DATE:
        return f"coalesce(strftime(TRY_CAST({b} AS DATE), '%Y-%m-%d'), {bad})"
    if k in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        ts = f"(TRY_CAST({b} AS TIMESTAMPTZ) AT TIME ZONE 'UTC')"
        return f"coalesce(strftime({ts}, '%Y-%m-%dT%H:%M:%S.%f'), {bad})"
    if k is Kind.UUID:
        return f"coalesce(TRY_CAST({b} AS UUID)::VARCHAR, {bad})"
    raise AssertionError(k)


def duck_key_valid(col: ColumnType, canonical_sql: str) -> str:
    """DuckDB condition: the canonical key value is usable (not NULL, and for typed columns
    not a value that failed to parse)."""
    if col.kind in (Kind.TEXT, Kind.CHAR, Kind.OTHER):
        return f"({canonical_sql}) IS NOT NULL"
    return f"coalesce(NOT starts_with({canonical_sql}, '!'), false)"


# --- joining and hashing (both dialects) ----------------------------------------------------


def joined(parts: list[tuple[str, ColumnType]], *, duck: bool) -> str:
    """The canonical row (or key) text from (canonical expression, column) pairs; the same SQL
    in both dialects.

    Each expression appears once (PostgreSQL does not share common subexpressions). Typed
    columns' canonical texts hold no comma or quote (file markers are sanitised), so they are
    joined as they are; text-like columns are quoted with their quotes doubled; NULL is ``~``,
    never quoted. So no two different rows join to the same text."""
    del duck
    items = []
    for expr, col in parts:
        if col.kind in (Kind.TEXT, Kind.CHAR, Kind.OTHER):
            items.append(f"coalesce('\"' || replace({expr}, '\"', '\"\"') || '\"', '~')")
        else:
            items.append(f"coalesce({expr}, '~')")
    return " || ',' || ".join(items) if items else "''"


def hash60(text_sql: str, *, duck: bool) -> str:
    """The first 60 bits of md5(text) as a non-negative bigint; equal in both engines."""
    if duck:
        return f"CAST('0x' || substr(md5({text_sql}), 1, 15) AS BIGINT)"
    return f"('x' || substr(md5({text_sql}), 1, 15))::bit(60)::bigint"
