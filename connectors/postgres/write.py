"""Versioned, set-based writes into target tables (the contract: :mod:`.table`).

:func:`write_batch` applies a batch of writes (at most one per key, newest already chosen) in the
caller's transaction: COPY into a temporary staging table, then one guarded statement per kind
(:mod:`.statements`). A write applies only when its position is newer than the row's and the
key's tombstone's; the others are counted as stale. Nothing is committed here: the caller commits
the rows together with the applied offsets (DESIGN invariant 3). Database errors propagate as
SQLAlchemy's ``DBAPIError`` (also those of the raw COPY cursor), with the SQLSTATE in
``.orig.pgcode``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.copytext import copy_field
from cdc_reconciler.connectors.postgres.partitions import ensure_partitions
from cdc_reconciler.connectors.postgres.sql import qualified_ident, quote_ident
from cdc_reconciler.connectors.postgres.statements import KeylessStatements, Statements, name_digest
from cdc_reconciler.connectors.postgres.table import (
    POS,
    SERVICE_SCHEMA,
    TRUNCATE_KEY,
    TargetTable,
    key_text,
)


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


_STATEMENTS: dict[tuple[TargetTable, tuple[str, ...]], Statements] = {}


def _statements(table: TargetTable, columns: tuple[str, ...]) -> Statements:
    found = _STATEMENTS.get((table, columns))
    if found is None:
        found = _STATEMENTS[(table, columns)] = Statements(table, columns)
    return found


@contextmanager
def _raw_cursor(conn: sa.Connection, what: str, table: TargetTable) -> Iterator[Any]:
    """The driver's own cursor on ``conn`` (psycopg2: COPY needs it). Its errors are the
    driver's; they are raised as SQLAlchemy's DBAPIError (the SQLSTATE stays in ``.orig``), like
    every other statement's, so callers classify one kind of error. A dropped connection is
    invalidated, so the pool does not hand it out again."""
    raw: Any = conn.connection.dbapi_connection
    assert raw is not None
    dbapi_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    try:
        with raw.cursor() as cur:
            yield cur
    except dbapi_error as exc:
        disconnect = conn.dialect.is_disconnect(exc, raw, None)  # type: ignore[arg-type]
        if disconnect:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            f"{what} {table.qualified}",
            None,
            exc,
            dbapi_error,
            connection_invalidated=disconnect,
            dialect=conn.dialect,
        ) from exc


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
    with _raw_cursor(conn, "write_batch", table) as cur:
        staging = _staging(cur, conn, table)
        for cols, group in groups.items():
            applied += _write_group(cur, staging, table, _statements(table, cols), group)
    return WriteResult(applied, len(writes) - applied)


class _Staging:
    """The temporary tables of one DBAPI connection, kept in its pool entry's ``info`` (which
    lives as long as that connection). They are made once per connection and target table shape
    (ON COMMIT DELETE ROWS: commit empties them), not per batch: every CREATE and DROP writes
    the catalog (pg_class, pg_attribute, pg_type) and sends invalidations to every backend."""

    __slots__ = ("committing", "filled", "fresh", "made")

    def __init__(self) -> None:
        self.made: dict[str, object] = {}  # name -> the target shape it was made for
        self.fresh: set[str] = set()  # made in the open transaction: a rollback undoes them
        self.filled: set[str] = set()  # holding rows of the open transaction
        # Made in the transaction whose COMMIT was sent last: undone if that COMMIT fails.
        self.committing: set[str] = set()

    def ensure(self, cur: Any, name: str, shape: object, create: str) -> None:
        """Make ``name`` exist as ``shape`` needs it, and be empty."""
        if self.made.get(name) != shape:
            cur.execute(create)
            self.made[name] = shape
            self.fresh.add(name)
        elif name in self.filled:  # written earlier in this transaction (a retry, a 2nd group)
            cur.execute(f"DELETE FROM {quote_ident(name)}")
        self.filled.add(name)

    def committed(self) -> None:
        """COMMIT is about to be sent (SQLAlchemy's "commit" event fires before it)."""
        self.committing = self.fresh
        self.fresh = set()
        self.filled.clear()

    def began(self) -> None:
        """A new transaction: the last COMMIT succeeded (or its failure was seen)."""
        self.committing.clear()

    def failed(self) -> None:
        """A database error on the connection. Right after :meth:`committed` it can only be the
        COMMIT's: the tables it would have made exist no more (a serialization failure or a
        deferred trigger at COMMIT once left them "made", and every later batch on that
        connection failed on the missing table until the watchdog)."""
        for name in self.committing:
            self.made.pop(name, None)
        self.committing.clear()

    def rolled_back(self, to_savepoint: bool) -> None:
        """Tables made in the transaction may be gone (a savepoint's extent is not tracked:
        they are all made again, DROP IF EXISTS first). After a full rollback all are empty."""
        for name in self.fresh:
            self.made.pop(name, None)
        self.fresh.clear()
        if not to_savepoint:
            self.filled.clear()


_INFO_KEY = "cdcr_staging"


def _staging_of(conn: sa.Connection) -> _Staging | None:
    try:
        found = conn.connection.info.get(_INFO_KEY)
    except sa.exc.SQLAlchemyError:  # an invalidated connection: its info went with it
        return None
    return found if isinstance(found, _Staging) else None


def _on_commit(conn: sa.Connection) -> None:
    if (st := _staging_of(conn)) is not None:
        st.committed()


def _on_begin(conn: sa.Connection) -> None:
    if (st := _staging_of(conn)) is not None:
        st.began()


def _on_error(ctx: sa.engine.ExceptionContext) -> None:
    if ctx.connection is not None and (st := _staging_of(ctx.connection)) is not None:
        st.failed()


def _on_rollback(conn: sa.Connection) -> None:
    if (st := _staging_of(conn)) is not None:
        st.rolled_back(to_savepoint=False)


def _on_rollback_savepoint(conn: sa.Connection, name: str, context: Any) -> None:
    if (st := _staging_of(conn)) is not None:
        st.rolled_back(to_savepoint=True)


def _on_reset(dbapi_connection: Any, connection_record: Any, reset_state: Any) -> None:
    # The pool rolls back a connection returned with its transaction open.
    found = connection_record.info.get(_INFO_KEY)
    if isinstance(found, _Staging):
        found.rolled_back(to_savepoint=False)


sa.event.listen(sa.Engine, "begin", _on_begin)
sa.event.listen(sa.Engine, "commit", _on_commit)
sa.event.listen(sa.Engine, "handle_error", _on_error)
sa.event.listen(sa.Engine, "rollback", _on_rollback)
sa.event.listen(sa.Engine, "rollback_savepoint", _on_rollback_savepoint)
sa.event.listen(sa.pool.Pool, "reset", _on_reset)

# The target table's shape as the catalog has it now: a column altered while cdcr runs (the
# table description cached) makes staging again with the new type. A catalog read, no write.
_SHAPE_SQL = (
    "SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ',' "
    "ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = %(t)s::regclass AND a.attnum > 0 "
    "AND NOT a.attisdropped"
)


def _staging(cur: Any, conn: sa.Connection, table: TargetTable) -> tuple[_Staging, object]:
    """This connection's staging tables, and the shape of ``table`` they must have."""
    info = conn.connection.info
    st = info.get(_INFO_KEY)
    if not isinstance(st, _Staging):
        st = info[_INFO_KEY] = _Staging()
    cur.execute(_SHAPE_SQL, {"t": qualified_ident(table.schema, table.name)})
    return st, (table, cur.fetchone()[0])


def _write_group(
    cur: Any,
    staging: tuple[_Staging, object],
    table: TargetTable,
    st: Statements,
    writes: list[RowWrite],
) -> int:
    tables, shape = staging
    tables.ensure(cur, st.staging, shape, st.create)
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
            tables.ensure(cur, st.others, shape, st.others_create)
            cur.execute(st.others_fill)
            moving = cur.rowcount > 0
        # The plain upsert also drops the tombstones it supersedes.
        cur.execute(st.upsert_moving if moving else st.upsert, params)
        applied += cur.rowcount
        if moving:
            cur.execute(st.move, params)
            cur.execute(st.clear_tombstones, params)
    if has_delete:
        cur.execute(st.delete, params)  # the rows, and their tombstones (the row count)
        applied += cur.rowcount
    return int(applied)


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


_KEYLESS: dict[TargetTable, KeylessStatements] = {}


def keyless_position_index(table: TargetTable) -> str:
    """The DDL of the index on ``_cdc_pos`` that keeps guarded appends to a keyless table fast."""
    digest = name_digest(f"{table.qualified}|pos")
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
        st = _KEYLESS[table] = KeylessStatements(table)
    applied = 0
    with _raw_cursor(conn, "write_keyless", table) as cur:
        tables, shape = _staging(cur, conn, table)
        tables.ensure(cur, st.staging, shape, st.create)
        i = 0
        while i < len(writes):
            n, i = _keyless_step(cur, st, writes, i)
            applied += n
            cur.execute(st.truncate)
    return WriteResult(applied, len(writes) - applied)


def _keyless_step(
    cur: Any, st: KeylessStatements, writes: Sequence[KeylessWrite], i: int
) -> tuple[int, int]:
    """Apply ``writes[i]``, or the run of appends starting there: ``(applied, next index)``."""
    w = writes[i]
    if w.op == "i":
        j = i
        while j < len(writes) and writes[j].op == "i":
            j += 1
        _copy_keyless(cur, st, [(w2.values, w2, "i") for w2 in writes[i:j]])
        cur.execute(st.append)
        return int(cur.rowcount), j
    rows = [(w.before, w, "b")]
    if w.op == "u":
        rows.append((w.values, w, "a"))
    _copy_keyless(cur, st, rows)
    cur.execute(st.update if w.op == "u" else st.delete)
    return int(cur.rowcount), i + 1


def _copy_keyless(
    cur: Any, st: KeylessStatements, rows: list[tuple[dict[str, Any] | None, KeylessWrite, str]]
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
            f"AND key <> '{TRUNCATE_KEY}'"
        ),
        {"tn": table.qualified, "pos": position},
    )
    conn.execute(
        sa.text(
            f"INSERT INTO {SERVICE_SCHEMA}.tombstones AS tb (table_name, key, position, deleted_at) "
            f"VALUES (:tn, '{TRUNCATE_KEY}', :pos, :ts) ON CONFLICT (table_name, key) DO UPDATE SET "
            "position = EXCLUDED.position, deleted_at = EXCLUDED.deleted_at "
            "WHERE tb.position < EXCLUDED.position"
        ),
        {"tn": table.qualified, "pos": position, "ts": _ts_text(ts_us)},
    )
    return int(removed)
