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

import hashlib
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
from cdc_reconciler.connectors.postgres.statements import KeylessStatements, Statements
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
        for cols, group in groups.items():
            applied += _write_group(cur, conn, table, _statements(table, cols), group)
    return WriteResult(applied, len(writes) - applied)


# The temporary tables a connection has, in its pool entry's ``info`` (which lives as long as
# the DBAPI connection): staging name -> what it was made for; and the ones holding rows of the
# open transaction (commit empties them: ON COMMIT DELETE ROWS).
_MADE = "cdcr_staging"
_FILLED = "cdcr_staging_filled"


def _forget_staging(conn: sa.Connection, *_args: Any) -> None:
    """A rollback (also to a savepoint) may have undone a staging table's CREATE: make it again
    on next use."""
    try:
        info = conn.connection.info
    except sa.exc.SQLAlchemyError:  # an invalidated connection: its info goes with it
        return
    info.pop(_MADE, None)
    info.pop(_FILLED, None)


def _committed(conn: sa.Connection) -> None:
    try:
        conn.connection.info.pop(_FILLED, None)
    except sa.exc.SQLAlchemyError:
        return


def _reset(_dbapi: Any, record: Any, *_args: Any) -> None:
    record.info.pop(_MADE, None)
    record.info.pop(_FILLED, None)


sa.event.listen(sa.Engine, "rollback", _forget_staging)
sa.event.listen(sa.Engine, "rollback_savepoint", _forget_staging)
sa.event.listen(sa.Engine, "commit", _committed)
sa.event.listen(sa.pool.Pool, "reset", _reset)


def _staging(cur: Any, conn: sa.Connection, name: str, made_for: object, create: str) -> None:
    """Make sure the temporary table ``name`` exists on this connection as ``made_for`` needs
    it, and is empty. It is made once per connection (and again when the target table changed,
    or after a rollback), not per batch: every CREATE and DROP writes the catalog."""
    info = conn.connection.info
    made: dict[str, object] = info.setdefault(_MADE, {})
    filled: set[str] = info.setdefault(_FILLED, set())
    if made.get(name) != made_for:
        cur.execute(create)
        made[name] = made_for
    elif name in filled:  # written earlier in this transaction (a retry, or a second group)
        cur.execute(f"DELETE FROM {quote_ident(name)}")
    filled.add(name)


def _write_group(
    cur: Any, conn: sa.Connection, table: TargetTable, st: Statements, writes: list[RowWrite]
) -> int:
    _staging(cur, conn, st.staging, table, st.create)
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
            _staging(cur, conn, st.others, table, st.others_create)
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
        st = _KEYLESS[table] = KeylessStatements(table)
    applied = 0
    with _raw_cursor(conn, "write_keyless", table) as cur:
        _staging(cur, conn, st.staging, table, st.create)
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
