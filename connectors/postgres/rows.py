"""Reconcile's row reads: the rows of a segment or of given keys, normalized (for the leaf
compare), as Python values, as text (for repair writes) or as JSON (for archives).

Normalization and the segment condition are in ``cdc_reconciler.connectors.postgres.sides``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.ranges import Key, Segment
from cdc_reconciler.connectors.postgres.sides import (
    Normalized,
    Side,
    _key_expr,
    _key_literal,
    _norm,
    _stable,
    segment_where,
    stable_output,
)
from cdc_reconciler.connectors.postgres.sql import quote_ident


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
