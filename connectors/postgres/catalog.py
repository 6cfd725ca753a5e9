"""Reading a table's definition from ``pg_catalog``: its columns (name, declared type, kind),
primary key, and partitioning. The one place the service asks PostgreSQL what a table looks
like; read from the catalog rather than SQLAlchemy reflection, which does not know extension
types. Every function takes an Engine (it opens a connection) or a Connection (it reads in the
caller's transaction).

Types are ``format_type`` texts, so user and extension types keep their names; they are
schema-qualified as far as the session's ``search_path`` makes them (:func:`qualified_columns`
reads them with an empty one, so all are).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

T = TypeVar("T")

# A relation named by (schema, name), resolved the way every query here resolves it.
_REL = "to_regclass(quote_ident(:schema) || '.' || quote_ident(:name))"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table, in attribute order."""

    name: str
    type: str  # format_type(atttypid, atttypmod)
    # "<typtype><typcategory>:<typname>" of the type, a domain resolved to its base type,
    # e.g. "bN:numeric", "bU:hstore", "cC:pair", "bA:_int4" (TargetTable.column_kinds).
    kind: str
    oid: int  # atttypid: the declared type (a domain stays the domain)


def _read(bind: sa.Engine | sa.Connection, read: Callable[[sa.Connection], T]) -> T:
    if isinstance(bind, sa.Connection):
        return read(bind)
    with bind.connect() as conn:
        return read(conn)


# Tables, partitioned tables, views, materialized views and foreign tables (what SQLAlchemy's
# ``has_table`` counts as a table).
_EXISTS = sa.text(
    "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relname = :name "
    "AND c.relkind IN ('r', 'p', 'v', 'm', 'f'))"
)


def exists(bind: sa.Engine | sa.Connection, schema: str, name: str) -> bool:
    """Whether ``schema.name`` is a table, view or foreign table."""
    params = {"schema": schema, "name": name}
    return _read(bind, lambda conn: bool(conn.execute(_EXISTS, params).scalar()))


_COLUMNS = sa.text(
    "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, "
    "b.typtype::text || b.typcategory::text || ':' || b.typname AS kind, "
    "a.atttypid::bigint AS oid "
    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END "
    f"WHERE a.attrelid = {_REL} "
    "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)


def columns(bind: sa.Engine | sa.Connection, schema: str, name: str) -> list[Column]:
    """The table's columns in order (none when it does not exist)."""
    params = {"schema": schema, "name": name}
    return _read(bind, lambda conn: [Column(**r._mapping) for r in conn.execute(_COLUMNS, params)])


def qualified_columns(bind: sa.Engine, schema: str, name: str) -> list[Column]:
    """:func:`columns` with every type written by ``format_type`` under an empty search_path, so
    every user or extension type comes schema-qualified (``s.mood``, ``public.hstore[]``) and
    means the same in another database (the table mirror's source read)."""
    with bind.connect() as conn:
        conn.execute(sa.text("SELECT set_config('search_path', '', true)"))
        rows = columns(conn, schema, name)
        conn.rollback()
    return rows


def column_types(bind: sa.Engine | sa.Connection, schema: str, name: str) -> dict[str, str]:
    """Column name -> ``format_type`` of ``schema.name``, in column order (empty when it does
    not exist)."""
    return {c.name: c.type for c in columns(bind, schema, name)}


_PRIMARY_KEY = sa.text(
    "SELECT a.attname FROM pg_index i "
    "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
    f"WHERE i.indrelid = {_REL} AND i.indisprimary ORDER BY k.ord"
)


def primary_key(bind: sa.Engine | sa.Connection, schema: str, name: str) -> tuple[str, ...]:
    """The primary key's columns in key order; empty when the table has none."""
    params = {"schema": schema, "name": name}
    return _read(bind, lambda conn: tuple(str(r[0]) for r in conn.execute(_PRIMARY_KEY, params)))


# The parent table's comment records the interval cdcr cuts partitions by (the catalog keeps
# only each partition's bounds).
INTERVAL_COMMENT = "cdcr:partition_interval="

_NATIVE_PARTITIONING = sa.text(
    "SELECT a.attname AS col, p.partstrat AS strategy, "
    "obj_description(p.partrelid, 'pg_class') AS comment "
    "FROM pg_partitioned_table p JOIN pg_attribute a ON a.attrelid = p.partrelid "
    "AND a.attnum = p.partattrs[0] "
    f"WHERE p.partrelid = {_REL} "
    "AND p.partnatts = 1"
)
_HAS_TIMESCALEDB = sa.text("SELECT to_regclass('_timescaledb_catalog.dimension')")
_HYPERTABLE = sa.text(
    "SELECT d.column_name FROM _timescaledb_catalog.dimension d "
    "JOIN _timescaledb_catalog.hypertable h ON h.id = d.hypertable_id "
    "WHERE h.schema_name = :schema AND h.table_name = :name ORDER BY d.id LIMIT 1"
)


def partitioning(
    bind: sa.Engine | sa.Connection, schema: str, name: str
) -> tuple[str | None, str | None]:
    """``(column, interval)`` of a time-partitioned table: a RANGE-partitioned table on one
    column (interval from the comment cdcr wrote, else None), or a TimescaleDB hypertable (its
    first dimension; chunks are TimescaleDB's business, interval None). ``(None, None)`` for a
    plain table."""

    def read(conn: sa.Connection) -> tuple[str | None, str | None]:
        params = {"schema": schema, "name": name}
        row = conn.execute(_NATIVE_PARTITIONING, params).first()
        if row is not None and row.strategy == "r":
            return str(row.col), _interval_of(str(row.comment or ""))
        if conn.execute(_HAS_TIMESCALEDB).scalar():
            col = conn.execute(_HYPERTABLE, params).scalar()
            if col is not None:
                return str(col), None
        return None, None

    return _read(bind, read)


def _interval_of(comment: str) -> str | None:
    return comment[len(INTERVAL_COMMENT) :] if comment.startswith(INTERVAL_COMMENT) else None


@dataclass(frozen=True)
class DatabaseColumn:
    """A column of any user table of a database, with the traits of its type that decide how
    Debezium carries it (``cdcr doctor``'s input)."""

    table: str  # schema.table
    name: str
    type: str  # format_type of the declared type
    base: str  # typname of the type, a domain resolved to its base, an array to its element
    typtype: str  # of ``base``: b, c, d, e, m, r
    is_array: bool
    dims: int  # declared dimensions (attndims)
    typmod: int  # of the column (numeric precision/scale, time precision)
    builtin: bool  # ``base`` lives in pg_catalog


_DATABASE_COLUMNS = sa.text(
    "SELECT n.nspname || '.' || c.relname AS table, a.attname AS name, "
    "format_type(a.atttypid, a.atttypmod) AS type, b.typname AS base, b.typtype::text AS typtype, "
    "(t.typcategory = 'A') AS is_array, a.attndims AS dims, a.atttypmod AS typmod, "
    "(b.typnamespace = 'pg_catalog'::regnamespace) AS builtin "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
    "JOIN pg_type t ON t.oid = a.atttypid "
    "JOIN pg_type e ON e.oid = CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE t.oid END "
    "JOIN pg_type b ON b.oid = CASE WHEN e.typtype = 'd' THEN e.typbasetype ELSE e.oid END "
    "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, a.attnum"
)


def database_columns(bind: sa.Engine | sa.Connection) -> list[DatabaseColumn]:
    """Every column of every ordinary and partitioned table outside the system schemas, by
    table then attribute order."""
    return _read(
        bind, lambda conn: [DatabaseColumn(**r._mapping) for r in conn.execute(_DATABASE_COLUMNS)]
    )
