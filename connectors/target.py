"""The target database adapter: versioned, set-based writes.

Contract
--------
Every target table carries the source columns plus two engine columns:

- ``_cdc_pos numeric(40,0) not null``: the source position of the change that wrote the row
  (PostgreSQL: ``(lastCommitLsn << 64) | lsn``);
- ``_cdc_ts timestamptz not null``: that change's event time.

Deletes remove the row and leave a tombstone in ``cdcr.tombstones`` (table, canonical key text,
position), so an older insert replayed later cannot bring the row back.

:func:`write_batch` applies a batch of writes (at most one per key, newest already chosen) in the
caller's transaction: COPY into a temporary staging table, then one guarded statement per kind.
A write applies only when its position is newer than the row's and the key's tombstone's; the
others are counted as stale. Nothing is committed here: the caller commits the rows together with
the applied offsets (DESIGN invariant 3). Database errors propagate as SQLAlchemy's
``DBAPIError`` (also those of the raw COPY cursor), with the SQLSTATE in ``.orig.pgcode``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa

from cdc_reconciler.connectors.debezium import InfiniteDate, InfiniteTimestamp

POS = "_cdc_pos"
TS = "_cdc_ts"
ENGINE_COLUMNS = (POS, TS)
SERVICE_SCHEMA = "cdcr"


@dataclass(frozen=True, slots=True)
class TargetTable:
    """A target table as the engine sees it. ``columns`` are the data columns (no ``_cdc_*``)."""

    schema: str
    name: str
    key_columns: tuple[str, ...]
    columns: tuple[str, ...]
    column_types: tuple[str, ...] = ()  # PostgreSQL type names, parallel to ``columns``
    # Parallel to ``columns``: "<typtype><typcategory>:<typname>" of the column's type (a domain
    # resolved to its base type), e.g. "bN:numeric", "bU:hstore", "cC:pair", "bA:_int4".
    column_kinds: tuple[str, ...] = ()
    # A time-partitioned target (declarative RANGE partitioning or a TimescaleDB hypertable,
    # docs/partitioning.md): the partitioning column, which every unique key includes, so the
    # physical key is ``key_columns + (partition_column,)`` and a row can move between
    # partitions. ``partition_interval`` (e.g. "1 day") is set when cdcr makes the partitions
    # itself (native partitioning created by ``cdcr tables sync``); empty otherwise.
    partition_column: str = ""
    partition_interval: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def type_of(self, column: str) -> str:
        if not self.column_types:
            return ""
        return self.column_types[self.columns.index(column)]


@dataclass(frozen=True, slots=True)
class RowWrite:
    """One change to apply. ``values`` None means delete; otherwise the columns to write (a column
    left out, e.g. an unchanged TOASTed value, keeps its current value in the target)."""

    key: tuple[Any, ...]
    values: dict[str, Any] | None
    position: int
    ts_us: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    applied: int
    stale: int


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL. Identifiers never come from event text unchecked:
    callers only pass names of columns that exist in the reflected target table."""
    return '"' + name.replace('"', '""') + '"'


def qualified_ident(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def key_text(key: Sequence[Any]) -> str:
    """Canonical text of a key, as stored in ``cdcr.tombstones.key``."""
    return orjson.dumps(list(key), default=str).decode()


def reflect_table(
    bind: sa.Engine | sa.Connection,
    schema: str,
    name: str,
    key_columns: Sequence[str] | None = None,
    *,
    allow_keyless: bool = False,
) -> TargetTable | None:
    """Read a target table's columns and key from the catalog; None when it does not exist.
    A table without a key raises unless ``allow_keyless`` (the apply engine's keyless modes)."""
    insp = sa.inspect(bind)
    if not insp.has_table(name, schema=schema):
        return None
    cols = catalog_columns(bind, schema, name)
    names = [c["name"] for c in cols if c["name"] not in ENGINE_COLUMNS]
    missing_engine = [c for c in ENGINE_COLUMNS if c not in {x["name"] for x in cols}]
    if missing_engine:
        from cdc_reconciler.errors import CdcrError

        raise CdcrError(
            f"target table {schema}.{name} lacks the engine columns {missing_engine}; "
            "create it with `cdcr tables sync` or add them (see README, target tables)"
        )
    types = [c["type"] for c in cols if c["name"] not in ENGINE_COLUMNS]
    kinds = [c["kind"] for c in cols if c["name"] not in ENGINE_COLUMNS]
    part_col, part_interval = partitioning(bind, schema, name)
    if key_columns is None:
        pk = insp.get_pk_constraint(name, schema=schema)
        key_columns = pk.get("constrained_columns") or []
        if part_col and part_col in key_columns and len(key_columns) > 1:
            # The partition column is in the key only because PostgreSQL requires it; the
            # row's identity (the source key) is the rest.
            key_columns = [k for k in key_columns if k != part_col]
    if not key_columns and not allow_keyless:
        from cdc_reconciler.errors import CdcrError

        raise CdcrError(f"target table {schema}.{name} has no primary key and none is configured")
    return TargetTable(
        schema,
        name,
        tuple(key_columns),
        tuple(names),
        tuple(types),
        tuple(kinds),
        part_col or "",
        part_interval or "",
    )


# The parent table's comment records the interval cdcr cuts partitions by (the catalog keeps
# only each partition's bounds).
INTERVAL_COMMENT = "cdcr:partition_interval="

_NATIVE_PARTITIONING = sa.text(
    "SELECT a.attname AS col, p.partstrat AS strategy, "
    "obj_description(p.partrelid, 'pg_class') AS comment "
    "FROM pg_partitioned_table p JOIN pg_attribute a ON a.attrelid = p.partrelid "
    "AND a.attnum = p.partattrs[0] "
    "WHERE p.partrelid = to_regclass(quote_ident(:schema) || '.' || quote_ident(:name)) "
    "AND p.partnatts = 1"
)
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
            comment = str(row.comment or "")
            interval = (
                comment[len(INTERVAL_COMMENT) :] if comment.startswith(INTERVAL_COMMENT) else None
            )
            return str(row.col), interval
        if conn.execute(sa.text("SELECT to_regclass('_timescaledb_catalog.dimension')")).scalar():
            col = conn.execute(_HYPERTABLE, params).scalar()
            if col is not None:
                return str(col), None
        return None, None

    if isinstance(bind, sa.Connection):
        return read(bind)
    with bind.connect() as conn:
        return read(conn)


_CATALOG_COLUMNS = sa.text(
    "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, "
    "b.typtype::text || b.typcategory::text || ':' || b.typname AS kind "
    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END "
    "WHERE a.attrelid = to_regclass(quote_ident(:schema) || '.' || quote_ident(:name)) "
    "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)


def catalog_columns(
    bind: sa.Engine | sa.Connection, schema: str, name: str
) -> list[dict[str, str]]:
    """A table's columns in order from pg_catalog: name, type (``format_type``, so user and
    extension types keep their names) and kind (see :attr:`TargetTable.column_kinds`). Read
    from the catalog rather than SQLAlchemy reflection, which does not know extension types."""
    params = {"schema": schema, "name": name}
    if isinstance(bind, sa.Connection):
        return [dict(r._mapping) for r in bind.execute(_CATALOG_COLUMNS, params)]
    with bind.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(_CATALOG_COLUMNS, params)]


# --------------------------------------------------------------------------- COPY text encoding

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _array_item(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, list):
        return "{" + ",".join(_array_item(x) for x in v) + "}"
    s = _scalar_text(v)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bytes_text(v: Any) -> str:
    return "\\x" + bytes(v).hex()


def _bool_text(v: bool) -> str:
    return "t" if v else "f"


def _interval_text(v: timedelta) -> str:
    return f"{v.days} days {v.seconds} seconds {v.microseconds} microseconds"


def _list_text(v: list[Any]) -> str:
    return "{" + ",".join(_array_item(x) for x in v) + "}"


def _dict_text(v: dict[str, Any]) -> str:
    wkb = v.get("wkb")
    if isinstance(wkb, bytes | bytearray) and set(v) <= {"wkb", "srid", "x", "y"}:
        return "\\x" + bytes(wkb).hex()
    return orjson.dumps(v, default=str).decode()


def _infinite_text(v: InfiniteTimestamp | InfiniteDate) -> str:
    return str(v.pg_text)


# Exact-type dispatch: one dict lookup per value on the hot path.
_TEXT: dict[type, Any] = {
    int: int.__repr__,
    float: float.__repr__,
    Decimal: Decimal.__str__,
    bool: _bool_text,
    datetime: datetime.isoformat,
    date: date.isoformat,
    time: time.isoformat,
    timedelta: _interval_text,
    bytes: _bytes_text,
    bytearray: _bytes_text,
    memoryview: _bytes_text,
    list: _list_text,
    dict: _dict_text,
    # PostgreSQL's ±infinity, decoded as sentinels, go back as the words.
    InfiniteTimestamp: _infinite_text,
    InfiniteDate: _infinite_text,
}


def _scalar_text(v: Any) -> str:
    if type(v) is str:
        return v
    f = _TEXT.get(type(v))
    if f is not None:
        return str(f(v))
    for t, g in _TEXT.items():  # subclasses (e.g. an IntEnum)
        if isinstance(v, t):
            return str(g(v))
    return str(v)


def copy_field(v: Any) -> str:
    """One value in PostgreSQL COPY text format."""
    if v is None:
        return "\\N"
    if type(v) is str:
        s = v
    else:
        f = _TEXT.get(type(v))
        s = f(v) if f is not None else _scalar_text(v)
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s:
        return s.translate(_COPY_ESCAPES)
    return s


# --------------------------------------------------------------------------- writes


class _Statements:
    """The SQL for one (table, column set): built once, from reflected names only."""

    def __init__(self, table: TargetTable, columns: tuple[str, ...]) -> None:
        tgt = qualified_ident(table.schema, table.name)
        digest = hashlib.blake2b(
            f"{table.qualified}|{','.join(columns)}".encode(), digest_size=6
        ).hexdigest()
        self.staging = f"cdcr_stg_{digest}"
        stg = quote_ident(self.staging)
        data_cols = [quote_ident(c) for c in columns]
        keys = [quote_ident(k) for k in table.key_columns]
        part = table.partition_column
        non_key = [quote_ident(c) for c in columns if c not in table.key_columns and c != part]
        engine_cols = [quote_ident(POS), quote_ident(TS)]
        # Staging carries the event time as integer microseconds (cheap to format); SQL turns it
        # into timestamptz exactly.
        self.copy_columns = ", ".join(
            [*data_cols, quote_ident(POS), '"_cdc_ts_us"', '"_cdc_op"', '"_cdc_key"']
        )
        self.create = (
            f"CREATE TEMP TABLE IF NOT EXISTS {stg} ON COMMIT DROP AS "
            f'SELECT {", ".join([*data_cols, quote_ident(POS)])}, 0::bigint AS "_cdc_ts_us", '
            f"''::text AS \"_cdc_op\", ''::text AS \"_cdc_key\" FROM {tgt} WITH NO DATA"
        )
        all_cols = ", ".join([*data_cols, *engine_cols])
        ts_expr = "(timestamptz 'epoch' + s._cdc_ts_us * interval '1 microsecond')"
        select_cols = ", ".join([*(f"s.{c}" for c in data_cols), f"s.{quote_ident(POS)}", ts_expr])
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in [*non_key, *engine_cols])
        tomb = f"{SERVICE_SCHEMA}.tombstones"
        tomb_guard = (
            f"NOT EXISTS (SELECT 1 FROM {tomb} tb WHERE tb.table_name = %(tn)s "
            f"AND tb.key IN (s._cdc_key, '*') AND tb.position >= s.{quote_ident(POS)})"
        )
        pos = quote_ident(POS)
        self.move = ""
        self.bucket = ""
        self.others = ""
        self.others_create = self.others_fill = self.upsert_moving = ""
        if not part:
            self.upsert = (
                f"INSERT INTO {tgt} AS t ({all_cols}) "
                f"SELECT {select_cols} FROM {stg} s WHERE s._cdc_op = 'u' AND {tomb_guard} "
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets} "
                f"WHERE t.{pos} < EXCLUDED.{pos}"
            )
        else:
            # Partitioned: the unique key is (key, partition column), so a row with the same
            # source key may sit in another partition (the partition column changed). Finding
            # such rows costs an index probe per partition per staged row, so it is done once,
            # into ``others`` (a temp table, usually left empty). Then: when it is empty, the
            # plain guarded upsert; else the insert also skips writes older than such a row,
            # takes the columns this write leaves out (unchanged TOASTed values) from the older
            # one, and ``move`` removes the older one. Under the same position guard, in one
            # transaction: nothing is duplicated.
            pq = quote_ident(part)

            def same_key(a: str, b: str) -> str:
                return " AND ".join(f"{a}.{k} = {b}.{k}" for k in keys)

            odigest = hashlib.blake2b(
                f"{table.qualified}|{','.join(table.columns)}|others".encode(), digest_size=6
            ).hexdigest()
            self.others = f"cdcr_oth_{odigest}"
            oth = quote_ident(self.others)
            self.others_create = (
                f"CREATE TEMP TABLE IF NOT EXISTS {oth} ON COMMIT DELETE ROWS AS "
                f"SELECT o.*, ''::text AS \"_cdc_key\" FROM {tgt} o WITH NO DATA"
            )
            # LATERAL keeps this a per-row index probe (never a scan of every partition).
            self.others_fill = (
                f"INSERT INTO {oth} SELECT o.*, s._cdc_key FROM {stg} s CROSS JOIN LATERAL "
                f"(SELECT * FROM {tgt} o WHERE {same_key('o', 's')} "
                f"AND o.{pq} IS DISTINCT FROM s.{pq}) o WHERE s._cdc_op = 'u'"
            )
            conflict = f"ON CONFLICT ({', '.join([*keys, pq])}) DO UPDATE SET {sets} "
            self.upsert = (
                f"INSERT INTO {tgt} AS t ({all_cols}) "
                f"SELECT {select_cols} FROM {stg} s WHERE s._cdc_op = 'u' AND {tomb_guard} "
                f"{conflict}WHERE t.{pos} < EXCLUDED.{pos}"
            )
            omitted = [quote_ident(c) for c in table.columns if c not in columns]
            ins_cols = ", ".join([*data_cols, *omitted, *engine_cols])
            ins_select = ", ".join(
                [
                    *(f"s.{c}" for c in data_cols),
                    *(f"o.{c}" for c in omitted),
                    f"s.{pos}",
                    ts_expr,
                ]
            )
            self.upsert_moving = (
                f"INSERT INTO {tgt} AS t ({ins_cols}) "
                f"SELECT {ins_select} FROM {stg} s LEFT JOIN (SELECT DISTINCT ON (x._cdc_key) * "
                f"FROM {oth} x ORDER BY x._cdc_key, x.{pos} DESC) o "
                f"ON o._cdc_key = s._cdc_key AND o.{pos} < s.{pos} "
                f"WHERE s._cdc_op = 'u' AND {tomb_guard} "
                f"AND NOT EXISTS (SELECT 1 FROM {oth} n WHERE n._cdc_key = s._cdc_key "
                f"AND n.{pos} >= s.{pos}) "
                f"{conflict}WHERE t.{pos} < EXCLUDED.{pos}"
            )
            self.move = (
                f"DELETE FROM {tgt} t USING {oth} x, {stg} s WHERE s._cdc_op = 'u' "
                f"AND x._cdc_key = s._cdc_key AND x.{pos} < s.{pos} AND t.{pq} = x.{pq} "
                f"AND {same_key('t', 'x')} AND t.{pos} = x.{pos}"
            )
            if table.partition_interval:
                self.bucket = (
                    f"SELECT DISTINCT date_bin(%(iv)s::interval, "
                    f"{_as_utc_timestamp('s.' + pq, table.type_of(part))}, "
                    f"timestamp '{PARTITION_ORIGIN.strftime('%Y-%m-%d')}') "
                    f"FROM {stg} s WHERE s._cdc_op = 'u' AND s.{pq} IS NOT NULL"
                )
        # A newer write supersedes the key's tombstone; drop it so the table stays small.
        self.clear_tombstones = (
            f"DELETE FROM {tomb} tb USING {stg} s WHERE s._cdc_op = 'u' "
            f"AND tb.table_name = %(tn)s AND tb.key = s._cdc_key "
            f"AND tb.position < s.{quote_ident(POS)}"
        )
        join = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        self.delete = (
            f"DELETE FROM {tgt} t USING {stg} s WHERE s._cdc_op = 'd' AND {join} "
            f"AND t.{quote_ident(POS)} < s.{quote_ident(POS)}"
        )
        # After the delete, a remaining row with the key is newer than the delete: stale.
        self.tombstone = (
            f"INSERT INTO {tomb} AS tb (table_name, key, position, deleted_at) "
            f"SELECT %(tn)s, s._cdc_key, s.{quote_ident(POS)}, {ts_expr} FROM {stg} s "
            f"WHERE s._cdc_op = 'd' AND NOT EXISTS (SELECT 1 FROM {tgt} t WHERE {join}) "
            f"ON CONFLICT (table_name, key) DO UPDATE SET position = EXCLUDED.position, "
            f"deleted_at = EXCLUDED.deleted_at WHERE tb.position < EXCLUDED.position"
        )
        self.columns = columns


_STATEMENTS: dict[tuple[TargetTable, tuple[str, ...]], _Statements] = {}


def _statements(table: TargetTable, columns: tuple[str, ...]) -> _Statements:
    found = _STATEMENTS.get((table, columns))
    if found is None:
        found = _STATEMENTS[(table, columns)] = _Statements(table, columns)
    return found


def write_batch(conn: sa.Connection, table: TargetTable, writes: Sequence[RowWrite]) -> WriteResult:
    """Apply ``writes`` (at most one per key) to ``table`` inside the caller's transaction.

    Upserts and deletes are guarded by position; returns how many applied and how many were stale.
    Writes that leave out columns are applied in their own group, so the columns they omit keep
    their current values. Raises DBAPIError (SQLSTATE in ``.orig``); nothing is committed here.
    """
    if not writes:
        return WriteResult(0, 0)
    groups: dict[tuple[str, ...], list[RowWrite]] = {}
    full = table.columns
    part = table.partition_column
    for w in writes:
        if w.values is None or len(w.values) == len(full):
            cols = full
        else:
            cols = tuple(c for c in full if c in w.values or c in table.key_columns or c == part)
        groups.setdefault(cols, []).append(w)
    applied = 0
    raw: Any = conn.connection.dbapi_connection  # psycopg2: COPY needs the raw cursor
    assert raw is not None
    dbapi_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    try:
        with raw.cursor() as cur:
            for cols, group in groups.items():
                applied += _write_group(cur, table, _statements(table, cols), group)
    except dbapi_error as exc:
        # The raw cursor's errors are the driver's own; raise them as SQLAlchemy's DBAPIError
        # (the SQLSTATE stays in ``.orig``), like every other statement, so callers classify one
        # kind of error. A dropped connection is invalidated, so the pool does not hand it out.
        disconnect = conn.dialect.is_disconnect(exc, raw, None)  # type: ignore[arg-type]
        if disconnect:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            f"write_batch {table.qualified}",
            None,
            exc,
            dbapi_error,
            connection_invalidated=disconnect,
            dialect=conn.dialect,
        ) from exc
    return WriteResult(applied, len(writes) - applied)


def _write_group(cur: Any, table: TargetTable, st: _Statements, writes: list[RowWrite]) -> int:
    cur.execute(st.create)
    buf = io.StringIO()
    key_pos = [st.columns.index(k) for k in table.key_columns]
    has_delete = False
    has_upsert = False
    cols = st.columns
    n_keys = len(key_pos)
    single_key = key_pos[0] if n_keys == 1 else -1
    for w in writes:
        vals = w.values
        if vals is None:
            has_delete = True
            row = ["\\N"] * len(cols)
            op = "d"
        else:
            has_upsert = True
            get = vals.get
            row = [copy_field(get(c)) for c in cols]
            op = "u"
        if single_key >= 0:
            row[single_key] = copy_field(w.key[0])
        else:
            for i, k in zip(key_pos, w.key, strict=True):
                row[i] = copy_field(k)
        row.append(str(w.position))
        row.append(str(w.ts_us))
        row.append(op)
        row.append(copy_field(key_text(w.key)))
        buf.write("\t".join(row))
        buf.write("\n")
    buf.seek(0)
    cur.copy_expert(f"COPY {quote_ident(st.staging)} ({st.copy_columns}) FROM STDIN", buf)
    params = {"tn": table.qualified}
    applied = 0
    if has_upsert:
        if st.bucket:
            cur.execute(st.bucket, {"iv": table.partition_interval})
            ensure_partitions(cur, table, [r[0] for r in cur.fetchall()])
        moving = False
        if st.others:
            cur.execute(st.others_create)
            cur.execute(st.others_fill)
            moving = cur.rowcount > 0
        cur.execute(st.upsert_moving if moving else st.upsert, params)
        applied += cur.rowcount
        if moving:
            cur.execute(st.move, params)
            cur.execute(f"TRUNCATE {quote_ident(st.others)}")
        cur.execute(st.clear_tombstones, params)
    if has_delete:
        cur.execute(st.delete, params)
        cur.execute(st.tombstone, params)
        applied += cur.rowcount
    # ON COMMIT DROP removes staging at commit; empty it now too, since one transaction
    # may write the same table twice (a retry, or a second group).
    cur.execute(f"TRUNCATE {quote_ident(st.staging)}")
    return int(applied)


# --------------------------------------------------------------------------- partitions

# Partitions are cut at multiples of the interval counted from this instant (as date_bin does).
PARTITION_ORIGIN = datetime(2000, 1, 1)  # noqa: DTZ001 - a UTC wall time, compared as such


def _as_utc_timestamp(expr: str, typ: str) -> str:
    """SQL turning a partition column value into a timestamp without zone, in UTC."""
    if "with time zone" in typ:
        return f"({expr} AT TIME ZONE 'UTC')"
    if typ == "date":
        return f"({expr})::timestamp"
    return str(expr)


def bucket_start(value: datetime, interval: str) -> datetime:
    """The start (UTC wall time, no zone) of the partition holding ``value``."""
    from cdc_reconciler.config import interval_seconds

    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    step = interval_seconds(interval)
    n = int((value - PARTITION_ORIGIN).total_seconds() // step)
    return PARTITION_ORIGIN + timedelta(seconds=n * step)


def partition_name(table: TargetTable, start: datetime) -> str:
    """``<table>_p<start>``; shortened with a digest to PostgreSQL's 63 bytes when needed."""
    suffix = start.strftime("_p%Y%m%d") + (
        start.strftime("%H%M%S") if (start.hour, start.minute, start.second) != (0, 0, 0) else ""
    )
    name = table.name + suffix
    if len(name.encode()) > 63:
        digest = hashlib.blake2b(table.name.encode(), digest_size=3).hexdigest()
        name = table.name[: 63 - len(suffix) - 7] + "_" + digest + suffix
    return name


def partition_ddl(table: TargetTable, start: datetime) -> str:
    """CREATE TABLE for the partition of ``table`` starting at ``start`` (bounds are formatted
    from a datetime, never from event text)."""
    from cdc_reconciler.config import interval_seconds

    end = start + timedelta(seconds=interval_seconds(table.partition_interval))
    typ = table.type_of(table.partition_column)

    def bound(t: datetime) -> str:
        if typ == "date":
            return f"'{t:%Y-%m-%d}'"
        zone = "+00" if "with time zone" in typ else ""
        return f"'{t:%Y-%m-%d %H:%M:%S}{zone}'"

    return (
        f"CREATE TABLE IF NOT EXISTS {qualified_ident(table.schema, partition_name(table, start))} "
        f"PARTITION OF {qualified_ident(table.schema, table.name)} "
        f"FOR VALUES FROM ({bound(start)}) TO ({bound(end)})"
    )


# SQLSTATEs that mean "the partition is there already": duplicate_table (another consumer made
# it a moment ago), unique_violation (the same race caught in the catalog's own unique index)
# and invalid_object_definition (a partition made by someone else, under another name, overlaps
# the range: rows are routed there). Only ever matched on the CREATE statement itself.
_PARTITION_EXISTS = ("42P07", "23505", "42P17")


def ensure_partitions(cur: Any, table: TargetTable, starts: Iterable[datetime]) -> list[str]:
    """Create the partitions starting at ``starts`` that do not exist yet, each in a savepoint
    of the caller's transaction; one that exists (or overlaps one) is fine. Returns the names
    created. Other errors propagate (the caller's transaction is then aborted)."""
    made = []
    for start in starts:
        name = partition_name(table, start)
        cur.execute(
            "SELECT to_regclass(quote_ident(%(s)s) || '.' || quote_ident(%(n)s))",
            {"s": table.schema, "n": name},
        )
        if cur.fetchone()[0] is not None:
            continue
        cur.execute("SAVEPOINT cdcr_partition")
        try:
            cur.execute(partition_ddl(table, start))
        except Exception as exc:
            if getattr(exc, "pgcode", None) not in _PARTITION_EXISTS:
                raise
            cur.execute("ROLLBACK TO SAVEPOINT cdcr_partition")
            continue
        cur.execute("RELEASE SAVEPOINT cdcr_partition")
        made.append(name)
    return made


# TimescaleDB writes into compressed chunks (INSERT, UPDATE, DELETE, ON CONFLICT) from 2.11 on,
# decompressing only the segments a write touches; before that such a write fails.
COMPRESSED_DML_SINCE = (2, 11)


def compressed_chunk_action(timescaledb_version: str) -> tuple[str, str]:
    """What a write into a compressed hypertable chunk does, given the target's TimescaleDB
    version (``SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'``):
    ``("write", "")`` where TimescaleDB decompresses the touched segments itself (2.11+), else
    ``("dead_letter", reason)``: the event is dead-lettered ``compressed_chunk`` rather than
    retried forever; decompress the chunk (``decompress_chunk``) and replay it. An unreadable
    version is treated as old. docs/partitioning.md, compressed chunks."""
    try:
        major, minor = (int(x) for x in timescaledb_version.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if (major, minor) >= COMPRESSED_DML_SINCE:
        return "write", ""
    return "dead_letter", (
        f"compressed_chunk: TimescaleDB {timescaledb_version} rejects writes into compressed "
        "chunks (2.11+ accepts them); run decompress_chunk on the chunk and replay the event"
    )


# --------------------------------------------------------------------------- tables without a key


@dataclass(frozen=True, slots=True)
class KeylessWrite:
    """One change to a table without a key (docs/apply.md, keyless tables). ``op``: ``i`` append
    ``values``; ``u`` replace one row equal to ``before`` by ``values``; ``d`` delete one row
    equal to ``before``."""

    op: str
    values: dict[str, Any] | None
    before: dict[str, Any] | None
    position: int
    ts_us: int


class _KeylessStatements:
    """SQL for a keyless table, from reflected names only. Rows are compared by their text form
    (``ROW(...)::text``), which exists for every type, also those without an equality operator."""

    def __init__(self, table: TargetTable) -> None:
        tgt = qualified_ident(table.schema, table.name)
        digest = hashlib.blake2b(f"{table.qualified}|keyless".encode(), digest_size=6).hexdigest()
        self.staging = f"cdcr_stgk_{digest}"
        stg = quote_ident(self.staging)
        cols = [quote_ident(c) for c in table.columns]
        pos = quote_ident(POS)
        self.create = (
            f"CREATE TEMP TABLE IF NOT EXISTS {stg} ON COMMIT DROP AS "
            f'SELECT {", ".join([*cols, pos])}, 0::bigint AS "_cdc_ts_us", '
            f"''::text AS \"_cdc_op\" FROM {tgt} WITH NO DATA"
        )
        self.copy_columns = ", ".join([*cols, pos, '"_cdc_ts_us"', '"_cdc_op"'])
        ts_expr = "(timestamptz 'epoch' + s._cdc_ts_us * interval '1 microsecond')"

        def row(alias: str) -> str:
            return f"ROW({', '.join(f'{alias}.{c}' for c in cols)})::text"

        all_cols = ", ".join([*cols, pos, quote_ident(TS)])
        # Appends are idempotent: a row staged n times at one position is inserted only as far as
        # the target holds fewer than n equal rows at that position (a redelivered insert, or the
        # rows of one snapshot, which share a position, arriving twice).
        self.append = (
            f"INSERT INTO {tgt} ({all_cols}) "
            f"SELECT {', '.join(f's.{c}' for c in cols)}, s.{pos}, {ts_expr} FROM ("
            f"SELECT s.*, {row('s')} AS _cdc_row, row_number() OVER "
            f"(PARTITION BY s.{pos}, {row('s')}) AS _cdc_n FROM {stg} s WHERE s._cdc_op = 'i') s "
            f"WHERE s._cdc_n > (SELECT count(*) FROM {tgt} t WHERE t.{pos} = s.{pos} "
            f"AND {row('t')} = s._cdc_row)"
        )
        match = (
            f"SELECT t.ctid FROM {tgt} t, {stg} b WHERE b._cdc_op = 'b' "
            f"AND {row('t')} = {row('b')} LIMIT 1"
        )
        self.delete = f"DELETE FROM {tgt} WHERE ctid = ({match})"
        self.update = (
            f"UPDATE {tgt} SET ({all_cols}) = (SELECT {', '.join(f's.{c}' for c in cols)}, "
            f"s.{pos}, {ts_expr} FROM {stg} s WHERE s._cdc_op = 'a') WHERE ctid = ({match})"
        )
        self.truncate = f"TRUNCATE {stg}"
        self.columns = table.columns


_KEYLESS: dict[TargetTable, _KeylessStatements] = {}


def keyless_position_index(table: TargetTable) -> str:
    """The DDL of the index on ``_cdc_pos`` that keeps guarded appends to a keyless table fast."""
    digest = hashlib.blake2b(f"{table.qualified}|pos".encode(), digest_size=6).hexdigest()
    return (
        f"CREATE INDEX IF NOT EXISTS {quote_ident(f'cdcr_pos_{digest}')} ON "
        f"{qualified_ident(table.schema, table.name)} ({quote_ident(POS)})"
    )


def write_keyless(
    conn: sa.Connection, table: TargetTable, writes: Sequence[KeylessWrite]
) -> WriteResult:
    """Apply changes to a table without a key, in their order, inside the caller's transaction:
    runs of appends set-based (COPY + one guarded INSERT), updates and deletes one by one by
    full-row match (one matching row each; none: stale). Raises DBAPIError."""
    if not writes:
        return WriteResult(0, 0)
    st = _KEYLESS.get(table)
    if st is None:
        st = _KEYLESS[table] = _KeylessStatements(table)
    raw: Any = conn.connection.dbapi_connection
    assert raw is not None
    dbapi_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    applied = 0
    try:
        with raw.cursor() as cur:
            cur.execute(st.create)
            i = 0
            while i < len(writes):
                w = writes[i]
                if w.op == "i":
                    j = i
                    while j < len(writes) and writes[j].op == "i":
                        j += 1
                    rows = [(w2.values, w2, "i") for w2 in writes[i:j]]
                    _copy_keyless(cur, st, rows)
                    cur.execute(st.append)
                    applied += cur.rowcount
                    i = j
                else:
                    rows = [(w.before, w, "b")]
                    if w.op == "u":
                        rows.append((w.values, w, "a"))
                    _copy_keyless(cur, st, rows)
                    cur.execute(st.update if w.op == "u" else st.delete)
                    applied += cur.rowcount
                    i += 1
                cur.execute(st.truncate)
    except dbapi_error as exc:
        disconnect = conn.dialect.is_disconnect(exc, raw, None)  # type: ignore[arg-type]
        if disconnect:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            f"write_keyless {table.qualified}",
            None,
            exc,
            dbapi_error,
            connection_invalidated=disconnect,
            dialect=conn.dialect,
        ) from exc
    return WriteResult(applied, len(writes) - applied)


def _copy_keyless(
    cur: Any, st: _KeylessStatements, rows: list[tuple[dict[str, Any] | None, KeylessWrite, str]]
) -> None:
    buf = io.StringIO()
    for vals, w, op in rows:
        get = (vals or {}).get
        buf.write(
            "\t".join(
                [*(copy_field(get(c)) for c in st.columns), str(w.position), str(w.ts_us), op]
            )
        )
        buf.write("\n")
    buf.seek(0)
    cur.copy_expert(f"COPY {quote_ident(st.staging)} ({st.copy_columns}) FROM STDIN", buf)


def _ts_text(ts_us: int) -> str:
    secs, micros = divmod(ts_us, 1_000_000)
    return f"{datetime.fromtimestamp(secs, tz=UTC).strftime('%Y-%m-%d %H:%M:%S')}.{micros:06d}+00"


TRUNCATE_KEY = "*"


def truncate_table(conn: sa.Connection, table: TargetTable, position: int, ts_us: int) -> int:
    """Apply a source TRUNCATE at ``position``: remove the rows older than it and remember it as a
    table-wide tombstone (key ``*``), so older writes replayed later stay out. Versioned like
    every write, so a redelivered truncate never removes newer rows. Returns rows removed."""
    tgt = qualified_ident(table.schema, table.name)
    removed = conn.execute(
        sa.text(f"DELETE FROM {tgt} WHERE {quote_ident(POS)} < :pos"), {"pos": position}
    ).rowcount
    conn.execute(
        sa.text(
            f"DELETE FROM {SERVICE_SCHEMA}.tombstones WHERE table_name = :tn AND position < :pos "
            "AND key <> '*'"
        ),
        {"tn": table.qualified, "pos": position},
    )
    conn.execute(
        sa.text(
            f"INSERT INTO {SERVICE_SCHEMA}.tombstones AS tb (table_name, key, position, deleted_at) "
            "VALUES (:tn, '*', :pos, :ts) ON CONFLICT (table_name, key) DO UPDATE SET "
            "position = EXCLUDED.position, deleted_at = EXCLUDED.deleted_at "
            "WHERE tb.position < EXCLUDED.position"
        ),
        {"tn": table.qualified, "pos": position, "ts": _ts_text(ts_us)},
    )
    return int(removed)


def engine_column_ddl() -> Iterable[str]:
    yield f"{quote_ident(POS)} numeric(40,0) NOT NULL"
    yield f"{quote_ident(TS)} timestamptz NOT NULL"
