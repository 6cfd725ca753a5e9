"""Referential integrity and schema drift, checked on every reconcile pass.

**Schema drift** (per table and pass): the source table's columns that the target should carry
(``_cdc_*`` never; narrowed by the mapping's include/exclude columns) against the target table:

- ``missing``: a source column the target lacks (the diff cannot compare it: it is reported here);
- ``extra``: a target column the source does not have (other than ``_cdc_*``);
- ``type``: the two ``format_type`` texts differ;
- ``nullability``: the target is NOT NULL where the source allows NULL (a NULL of the source
  could not be applied). The other way round is not drift: the apply engine creates non-key
  target columns nullable on purpose (an unchanged TOASTed value may arrive before its row).

**Referential integrity** (per window, on the child's rows of that window — changed in it for a
windowed table, the whole table otherwise): foreign keys are read from the *source* catalog
(``pg_constraint``); for each one whose parent table exists in the target, target child rows
with all foreign-key columns set and no parent row in the target are *orphans*. An orphan can be
in flight (child and parent travel on different topics, so the parent's insert — or the child's
delete — may simply not be applied yet), so candidates are confirmed as diff candidates are
(reconcile/inflight.py): read, wait until the group applied past a source clock read *after*
that first read on every partition of the child's and the parent's topics, read again; an orphan
is confirmed only if it is still an orphan with the same foreign-key values.

Both are reported in the run's checks (``schema_drift``, ``foreign_keys``) with result ``pass``,
``warn`` (found, not configured to fail) or ``fail`` when the table's mapping lists the check
(``checks: [{name: fk, kind: foreign_keys}, {name: drift, kind: schema_drift}]``): a failing
check keeps the watermark before the window. Confirmed orphans also enter the review queue
(kind ``orphan``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.config import column_selected
from cdc_reconciler.connectors.postgres.sql import quote_ident
from cdc_reconciler.reconcile import checksum as ck
from cdc_reconciler.reconcile.checksum import TablePair, split_name
from cdc_reconciler.reconcile.inflight import IDLE_SETTLE_S, POLL_S, caught_up
from cdc_reconciler.reconcile.segments import Key, Segment, Window
from cdc_reconciler.reconcile.windows import LogEnds, PartitionProgress

MAX_ORPHANS = 1000  # orphans looked at per foreign key and window


@dataclass(frozen=True, slots=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]  # in the child
    parent: str  # source "<schema>.<table>"
    parent_columns: tuple[str, ...]


def foreign_keys(conn: sa.Connection, table: str) -> list[ForeignKey]:
    """The foreign keys of ``table`` in this database's catalog, column pairs in order."""
    schema, name = split_name(table)
    rows = conn.execute(
        sa.text(
            "SELECT con.conname, pn.nspname, pc.relname, "
            "array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o) "
            "  JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o), "
            "array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o) "
            "  JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) "
            "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_class pc ON pc.oid = con.confrelid "
            "JOIN pg_namespace pn ON pn.oid = pc.relnamespace "
            "WHERE con.contype = 'f' AND n.nspname = :s AND c.relname = :t ORDER BY con.conname"
        ),
        {"s": schema, "t": name},
    ).all()
    return [ForeignKey(r[0], tuple(r[3]), f"{r[1]}.{r[2]}", tuple(r[4])) for r in rows]


def _columns(conn: sa.Connection, table: str) -> dict[str, tuple[str, bool]]:
    schema, name = split_name(table)
    rows = conn.execute(
        sa.text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND "
            "c.relname = :t AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        ),
        {"s": schema, "t": name},
    ).all()
    return {r[0]: (r[1], bool(r[2])) for r in rows}


def schema_drift(
    source: sa.Engine,
    target: sa.Engine,
    source_table: str,
    target_table: str,
    *,
    include_columns: Sequence[str] | None = None,
    exclude_columns: Sequence[str] = (),
    key_columns: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Drift records ``{column, problem, source, target}`` (module docstring), column order of
    the source then the target. Empty when the tables agree."""
    with source.connect() as s:
        src = _columns(s, source_table)
    with target.connect() as t:
        tgt = _columns(t, target_table)
    keys = set(key_columns)
    out: list[dict[str, Any]] = []

    def carried(c: str) -> bool:
        if c.startswith(ck.CDC_COLUMN_PREFIX):
            return False
        return column_selected(c, include_columns, exclude_columns, keys)

    for c, (typ, notnull) in src.items():
        if not carried(c):
            continue
        if c not in tgt:
            out.append({"column": c, "problem": "missing", "source": typ, "target": None})
            continue
        ttyp, tnotnull = tgt[c]
        if ttyp != typ:
            out.append({"column": c, "problem": "type", "source": typ, "target": ttyp})
        if tnotnull and not notnull:
            out.append(
                {"column": c, "problem": "nullability", "source": "NULL", "target": "NOT NULL"}
            )
    for c, (ttyp, _) in tgt.items():
        if c.startswith(ck.CDC_COLUMN_PREFIX) or c in src or c in exclude_columns:
            continue
        out.append({"column": c, "problem": "extra", "source": None, "target": ttyp})
    return out


@dataclass(frozen=True, slots=True)
class Orphan:
    fk: str
    key: Key  # the child's key
    values: tuple[Any, ...]  # its foreign-key values
    parent: str


def _orphan_rows(
    conn: sa.Connection,
    pair: TablePair,
    fk: ForeignKey,
    parent_target: str,
    window: Window | None,
    keys: Sequence[Key] | None = None,
) -> dict[Key, tuple[Any, ...]]:
    """Target child rows of ``window`` (or exactly ``keys``) whose parent row is missing."""
    side = pair.target
    params: dict[str, Any] = {}
    if keys is not None:
        if not keys:
            return {}
        cond = ck._keys_condition(side, keys, params)
    else:
        seg = Segment(pair.name, window=window if pair.windowed else None)
        cond = ck.segment_where(side, seg, params)
    kcols = ", ".join(f"c.{quote_ident(k)}" for k in side.key_columns)
    fcols = ", ".join(f"c.{quote_ident(k)}" for k in fk.columns)
    set_ = " AND ".join(f"c.{quote_ident(k)} IS NOT NULL" for k in fk.columns)
    join = " AND ".join(
        f"p.{quote_ident(pc)} = c.{quote_ident(cc)}"
        for cc, pc in zip(fk.columns, fk.parent_columns, strict=True)
    )
    ps, pn = split_name(parent_target)
    # segment_where / the key condition name columns unqualified; alias the child as c.
    rows = conn.execute(
        sa.text(
            f"SELECT {kcols}, {fcols} FROM {side.sql_name} c WHERE ({cond}) AND {set_} "
            f"AND NOT EXISTS (SELECT 1 FROM {quote_ident(ps)}.{quote_ident(pn)} p WHERE {join}) "
            f"LIMIT {MAX_ORPHANS}"
        ),
        params,
    ).all()
    n = len(side.key_columns)
    return {tuple(r[:n]): tuple(r[n:]) for r in rows}


Progress = Callable[[Sequence[str]], Sequence[PartitionProgress]]


def find_orphans(
    source: sa.Engine,
    target: sa.Engine,
    pair: TablePair,
    window: Window | None,
    *,
    parent_target: Callable[[str], str],
    progress: Progress,
    log_ends: LogEnds,
    wait_s: float,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> tuple[list[Orphan], int, list[str]]:
    """Confirmed orphans of ``window``, the number of candidates deferred as in flight, and
    notes on foreign keys that could not be checked (parent table missing in the target)."""
    with source.connect() as s:
        fks = foreign_keys(s, pair.name)
    if not fks:
        return [], 0, []
    notes: list[str] = []
    confirmed: list[Orphan] = []
    deferred = 0
    for fk in fks:
        parent = parent_target(fk.parent)
        with target.connect() as t:
            exists = t.execute(
                sa.text("SELECT to_regclass(:n) IS NOT NULL"),
                {"n": ".".join(quote_ident(p) for p in split_name(parent))},
            ).scalar()
            if not exists:
                notes.append(f"{fk.name}: parent {parent} not in the target; not checked")
                continue
            first = _orphan_rows(t, pair, fk, parent, window)
        if not first:
            continue
        with source.connect() as s:
            since = s.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        started = monotonic()
        topics = [pair.name, fk.parent]
        while True:
            elapsed = monotonic() - started
            ok = caught_up(
                progress(topics), since, log_ends, allow_idle=elapsed >= min(IDLE_SETTLE_S, wait_s)
            )
            if ok or elapsed >= wait_s:
                break
            sleep(POLL_S)
        if not ok:
            deferred += len(first)
            continue
        with target.connect() as t:
            second = _orphan_rows(t, pair, fk, parent, window, keys=list(first))
        for k, vals in first.items():
            if second.get(k) == vals:
                confirmed.append(Orphan(fk.name, k, vals, parent))
            else:
                deferred += 1
    return confirmed, deferred, notes
