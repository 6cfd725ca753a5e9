"""The SQL of the versioned writes, built once per (table, column set) from reflected names
only (never from event text), and cached by the writer (:mod:`.write`).

A batch is COPYed into a temporary staging table (data columns, ``_cdc_pos``, the event time as
integer microseconds, the op ``u``/``d`` and the key's tombstone text), then applied by one
guarded statement per kind: a write applies only when its position is newer than the row's and
the key's tombstone's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cdc_reconciler.connectors.postgres.partitions import PARTITION_ORIGIN, utc_timestamp_sql
from cdc_reconciler.connectors.postgres.sql import qualified_ident, quote_ident
from cdc_reconciler.connectors.postgres.table import (
    POS,
    SERVICE_SCHEMA,
    TRUNCATE_KEY,
    TS,
    TargetTable,
)

# Staging carries the event time as integer microseconds (cheap to format); SQL turns it into
# timestamptz exactly.
_TS_EXPR = "(timestamptz 'epoch' + s._cdc_ts_us * interval '1 microsecond')"
_TOMBSTONES = f"{SERVICE_SCHEMA}.tombstones"


def _tomb_position(key: str) -> str:
    """The position of the tombstone of ``key`` (NULL: none). A scalar subquery is a probe of
    the tombstones' primary key per staged row, whatever the (missing) statistics of staging
    say; a join may be planned as a nested loop over every tombstone of the table."""
    return f"(SELECT tb.position FROM {_TOMBSTONES} tb WHERE tb.table_name = %(tn)s AND tb.key = {key})"


# The position of the table's TRUNCATE tombstone, -1 when none: uncorrelated, so evaluated once
# per statement.
_TRUNCATED = "COALESCE(" + _tomb_position(f"'{TRUNCATE_KEY}'") + ", -1)"


def name_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


@dataclass(frozen=True, slots=True)
class _Parts:
    """The quoted pieces the statements of one (table, column set) are made of."""

    tgt: str  # the target table
    stg: str  # the staging table
    pos: str  # the position column
    data_cols: list[str]  # the written data columns
    keys: list[str]  # the key columns
    engine_cols: list[str]  # _cdc_pos, _cdc_ts
    all_cols: str  # data and engine columns, the INSERT's column list
    select_cols: str  # the same, read from staging
    sets: str  # ON CONFLICT's SET list: non-key columns and the engine columns
    tomb_guard: str  # no tombstone of the key (or table) at or after the write's position

    @classmethod
    def of(cls, table: TargetTable, columns: tuple[str, ...], staging: str) -> _Parts:
        pos = quote_ident(POS)
        data_cols = [quote_ident(c) for c in columns]
        part = table.partition_column
        non_key = [quote_ident(c) for c in columns if c not in table.key_columns and c != part]
        engine_cols = [pos, quote_ident(TS)]
        return cls(
            tgt=qualified_ident(table.schema, table.name),
            stg=quote_ident(staging),
            pos=pos,
            data_cols=data_cols,
            keys=[quote_ident(k) for k in table.key_columns],
            engine_cols=engine_cols,
            all_cols=", ".join([*data_cols, *engine_cols]),
            select_cols=", ".join([*(f"s.{c}" for c in data_cols), f"s.{pos}", _TS_EXPR]),
            sets=", ".join(f"{c} = EXCLUDED.{c}" for c in [*non_key, *engine_cols]),
            tomb_guard=(
                f"s.{pos} > COALESCE({_tomb_position('s._cdc_key')}, -1) AND s.{pos} > {_TRUNCATED}"
            ),
        )

    def conflict(self, extra: list[str]) -> str:
        return f"ON CONFLICT ({', '.join([*self.keys, *extra])}) DO UPDATE SET {self.sets} "

    def same_key(self, a: str, b: str) -> str:
        return " AND ".join(f"{a}.{k} = {b}.{k}" for k in self.keys)


class Statements:
    """The SQL for one (table, column set): built once, from reflected names only."""

    def __init__(self, table: TargetTable, columns: tuple[str, ...]) -> None:
        self.columns = columns
        self.staging = "cdcr_stg_" + name_digest(f"{table.qualified}|{','.join(columns)}")
        p = _Parts.of(table, columns, self.staging)
        self.copy_columns = ", ".join(
            [*p.data_cols, p.pos, '"_cdc_ts_us"', '"_cdc_op"', '"_cdc_key"']
        )
        # Made once per connection (write.py remembers it); COPY fills it, commit empties it.
        self.create = (
            f"DROP TABLE IF EXISTS pg_temp.{p.stg}; CREATE TEMP TABLE {p.stg} "
            "ON COMMIT DELETE ROWS AS "
            f'SELECT {", ".join([*p.data_cols, p.pos])}, 0::bigint AS "_cdc_ts_us", '
            f"''::text AS \"_cdc_op\", ''::text AS \"_cdc_key\" FROM {p.tgt} WITH NO DATA"
        )
        self.move = ""
        self.bucket = ""
        self.others = ""
        self.others_create = self.others_fill = self.upsert_moving = ""
        part = table.partition_column
        self.clear_tombstones, self.delete = _deletes(p)
        self.upsert = _upsert(p, [quote_ident(part)] if part else [])
        if part:
            self._moving_rows(table, columns, p)
            if table.partition_interval:
                self.bucket = _bucket(table, p)

    def _moving_rows(self, table: TargetTable, columns: tuple[str, ...], p: _Parts) -> None:
        """Partitioned: the unique key is (key, partition column), so a row with the same
        source key may sit in another partition (the partition column changed). Finding such
        rows costs an index probe per partition per staged row, so it is done once, into
        ``others`` (a temp table, usually left empty). Then: when it is empty, the plain guarded
        upsert; else the insert also skips writes older than such a row, takes the columns this
        write leaves out (unchanged TOASTed values) from the older one, and ``move`` removes the
        older one. Under the same position guard, in one transaction: nothing is duplicated."""
        pq = quote_ident(table.partition_column)
        pos, tgt, stg = p.pos, p.tgt, p.stg
        self.others = "cdcr_oth_" + name_digest(
            f"{table.qualified}|{','.join(table.columns)}|others"
        )
        oth = quote_ident(self.others)
        self.others_create = (
            f"DROP TABLE IF EXISTS pg_temp.{oth}; CREATE TEMP TABLE {oth} ON COMMIT DELETE ROWS AS "
            f"SELECT o.*, ''::text AS \"_cdc_key\" FROM {tgt} o WITH NO DATA"
        )
        # LATERAL keeps this a per-row index probe (never a scan of every partition).
        self.others_fill = (
            f"INSERT INTO {oth} SELECT o.*, s._cdc_key FROM {stg} s CROSS JOIN LATERAL "
            f"(SELECT * FROM {tgt} o WHERE {p.same_key('o', 's')} "
            f"AND o.{pq} IS DISTINCT FROM s.{pq}) o WHERE s._cdc_op = 'u'"
        )
        omitted = [quote_ident(c) for c in table.columns if c not in columns]
        ins_cols = ", ".join([*p.data_cols, *omitted, *p.engine_cols])
        ins_select = ", ".join(
            [*(f"s.{c}" for c in p.data_cols), *(f"o.{c}" for c in omitted), f"s.{pos}", _TS_EXPR]
        )
        self.upsert_moving = (
            f"INSERT INTO {tgt} AS t ({ins_cols}) "
            f"SELECT {ins_select} FROM {stg} s LEFT JOIN (SELECT DISTINCT ON (x._cdc_key) * "
            f"FROM {oth} x ORDER BY x._cdc_key, x.{pos} DESC) o "
            f"ON o._cdc_key = s._cdc_key AND o.{pos} < s.{pos} "
            f"WHERE s._cdc_op = 'u' AND {p.tomb_guard} "
            f"AND NOT EXISTS (SELECT 1 FROM {oth} n WHERE n._cdc_key = s._cdc_key "
            f"AND n.{pos} >= s.{pos}) "
            f"{p.conflict([pq])}WHERE t.{pos} < EXCLUDED.{pos}"
        )
        self.move = (
            f"DELETE FROM {tgt} t USING {oth} x, {stg} s WHERE s._cdc_op = 'u' "
            f"AND x._cdc_key = s._cdc_key AND x.{pos} < s.{pos} AND t.{pq} = x.{pq} "
            f"AND {p.same_key('t', 'x')} AND t.{pos} = x.{pos}"
        )


def _upsert(p: _Parts, partition: list[str]) -> str:
    """The guarded upsert of the staged ``u`` rows (the conflict target is the key, plus the
    partition column of a partitioned table), in one statement with dropping the tombstones
    those writes are newer than. The key's tombstone is probed once per staged row, in ``_u``;
    the tombstones to drop are then fetched by their ``ctid`` (one probe each, for the few keys
    that have one), never by scanning the table's tombstones."""
    pos = p.pos
    older_tomb = (
        f"SELECT tb.ctid FROM {_TOMBSTONES} tb WHERE tb.table_name = %(tn)s "
        f"AND tb.key = s._cdc_key AND tb.position < s.{pos}"
    )
    return (
        f"WITH _u AS MATERIALIZED (SELECT s.*, {_tomb_position('s._cdc_key')} AS _cdc_tomb "
        f"FROM {p.stg} s WHERE s._cdc_op = 'u'), "
        f"_clr AS (DELETE FROM {_TOMBSTONES} WHERE ctid = ANY(ARRAY("
        f"SELECT ({older_tomb}) FROM _u s WHERE s.{pos} > s._cdc_tomb))) "
        f"INSERT INTO {p.tgt} AS t ({p.all_cols}) "
        f"SELECT {p.select_cols} FROM _u s WHERE s.{pos} > COALESCE(s._cdc_tomb, -1) "
        f"AND s.{pos} > {_TRUNCATED} "
        f"{p.conflict(partition)}WHERE t.{pos} < EXCLUDED.{pos}"
    )


def _bucket(table: TargetTable, p: _Parts) -> str:
    """The partitions (their start times) the staged ``u`` rows fall in, for a target whose
    partitions cdcr makes."""
    part = table.partition_column
    pq = quote_ident(part)
    return (
        f"SELECT DISTINCT date_bin(%(iv)s::interval, "
        f"{utc_timestamp_sql('s.' + pq, table.type_of(part))}, "
        f"timestamp '{PARTITION_ORIGIN.strftime('%Y-%m-%d')}') "
        f"FROM {p.stg} s WHERE s._cdc_op = 'u' AND s.{pq} IS NOT NULL"
    )


def _deletes(p: _Parts) -> tuple[str, str]:
    """``(clear_tombstones, delete)``: a newer write supersedes the key's tombstone (dropped, so
    the table stays small); a delete removes older rows and leaves a tombstone unless a newer row
    remains (the delete is then stale). ``delete`` is one statement: its tombstone part sees the
    rows as they were before its delete part, so it asks for a row at least as new as the delete
    (the ones the delete part leaves); its row count is the tombstones written."""
    # (After a moving upsert; the plain upsert does this itself.) The keys whose tombstone a
    # staged write is newer than: one index probe per staged write; then the tombstones fetched
    # by primary key (ARRAY(...) is evaluated once).
    clear_tombstones = (
        f"DELETE FROM {_TOMBSTONES} tb WHERE tb.table_name = %(tn)s AND tb.key = ANY(ARRAY("
        f"SELECT s._cdc_key FROM {p.stg} s WHERE s._cdc_op = 'u' "
        f"AND s.{p.pos} > {_tomb_position('s._cdc_key')}))"
    )
    join = p.same_key("t", "s")
    delete = (
        f"WITH _del AS (DELETE FROM {p.tgt} t USING {p.stg} s WHERE s._cdc_op = 'd' AND {join} "
        f"AND t.{p.pos} < s.{p.pos}) "
        f"INSERT INTO {_TOMBSTONES} AS tb (table_name, key, position, deleted_at) "
        f"SELECT %(tn)s, s._cdc_key, s.{p.pos}, {_TS_EXPR} FROM {p.stg} s "
        f"WHERE s._cdc_op = 'd' AND NOT EXISTS (SELECT 1 FROM {p.tgt} t WHERE {join} "
        f"AND t.{p.pos} >= s.{p.pos}) "
        f"ON CONFLICT (table_name, key) DO UPDATE SET position = EXCLUDED.position, "
        f"deleted_at = EXCLUDED.deleted_at WHERE tb.position < EXCLUDED.position"
    )
    return clear_tombstones, delete


class KeylessStatements:
    """SQL for a keyless table, from reflected names only. Rows are compared by their text form
    (``ROW(...)::text``), which exists for every type, also those without an equality operator."""

    def __init__(self, table: TargetTable) -> None:
        tgt = qualified_ident(table.schema, table.name)
        digest = name_digest(f"{table.qualified}|keyless")
        self.staging = f"cdcr_stgk_{digest}"
        stg = quote_ident(self.staging)
        cols = [quote_ident(c) for c in table.columns]
        pos = quote_ident(POS)
        self.create = (
            f"DROP TABLE IF EXISTS pg_temp.{stg}; CREATE TEMP TABLE {stg} ON COMMIT DELETE ROWS AS "
            f'SELECT {", ".join([*cols, pos])}, 0::bigint AS "_cdc_ts_us", '
            f"''::text AS \"_cdc_op\" FROM {tgt} WITH NO DATA"
        )
        self.copy_columns = ", ".join([*cols, pos, '"_cdc_ts_us"', '"_cdc_op"'])

        def row(alias: str) -> str:
            return f"ROW({', '.join(f'{alias}.{c}' for c in cols)})::text"

        all_cols = ", ".join([*cols, pos, quote_ident(TS)])
        # Appends are idempotent: a row staged n times at one position is inserted only as far as
        # the target holds fewer than n equal rows at that position (a redelivered insert, or the
        # rows of one snapshot, which share a position, arriving twice).
        self.append = (
            f"INSERT INTO {tgt} ({all_cols}) "
            f"SELECT {', '.join(f's.{c}' for c in cols)}, s.{pos}, {_TS_EXPR} FROM ("
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
            f"s.{pos}, {_TS_EXPR} FROM {stg} s WHERE s._cdc_op = 'a') WHERE ctid = ({match})"
        )
        # Empties staging between steps of one transaction (TRUNCATE would write the catalog).
        self.truncate = f"DELETE FROM {stg}"
        self.columns = table.columns
