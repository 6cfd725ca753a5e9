"""Repair writes carry the source's values exactly (found by a new-user trial): the source row is
read as text under fixed output styles and COPY reads it back into the same type, so an interval
keeps its months, an hstore is not a Python dict, NaN stays NaN. The path is the one repair and
`cdcr review resolve --apply-source` use: fetch_text_by_keys, then the versioned write_batch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.reflect import reflect_table
from cdc_reconciler.connectors.postgres.write import RowWrite, write_batch
from cdc_reconciler.reconcile.checksum import describe_pair, fetch_text_by_keys

from .helpers import create_pair, drop_pair, run

pytestmark = pytest.mark.services

COLS = (
    "id int PRIMARY KEY, iv interval, h hstore, n numeric, f float8, a text[], tz timetz, "
    "ts timestamptz, j jsonb, b bytea, r int4range, p point"
)
ROW = (
    "1, '1 year 2 mons -3 days +04:05:06.789', 'k=>v, \"n\"=>NULL, \"a b\"=>\"x,y\"', 'NaN', "
    "0.1, ARRAY['a', NULL, 'q\"uote', 'x,y'], '18:34:31+03:30', '2026-01-01 12:00+05:30', "
    "'{\"b\": [1, 2.50], \"a\": null}', '\\x00ff5c', '[3,7)', '(1.5,-2)'"
)


def _text(engine: sa.Engine, table: str) -> list[tuple[str | None, ...]]:
    with engine.connect() as c:
        cols = [
            r[0]
            for r in c.execute(
                sa.text(
                    "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
                    "AND attnum > 0 AND NOT attisdropped AND attname NOT LIKE '\\_cdc\\_%' ORDER BY attnum"
                ),
                {"t": table},
            )
        ]
        sel = ", ".join(f'"{c}"::text' for c in cols)
        return [tuple(r) for r in c.execute(sa.text(f"SELECT {sel} FROM {table} ORDER BY id"))]


def test_repair_writes_every_type_back_exactly(
    source_engine: sa.Engine, target_engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    for e in (source_engine, target_engine):
        run(e, "CREATE EXTENSION IF NOT EXISTS hstore")
    q = create_pair(source_engine, target_engine, unique_name("rv"), COLS)
    try:
        run(source_engine, f"INSERT INTO {q} VALUES ({ROW})")
        # The target's row is damaged in one column (what the diff would report as mismatched).
        names = ", ".join(c.split()[0] for c in COLS.split(", "))
        run(target_engine, f"INSERT INTO {q} ({names}) VALUES ({ROW})")
        run(target_engine, f"UPDATE {q} SET iv = '30 days', h = NULL, n = 1")
        with source_engine.connect() as s, target_engine.connect() as t:
            pair = describe_pair(s, t, q)
        with source_engine.connect() as s:
            rows = fetch_text_by_keys(s, pair.source, [(1,)])
        schema, name = q.split(".")
        table = reflect_table(target_engine, schema, name)
        assert table is not None
        with target_engine.begin() as conn:
            res = write_batch(conn, table, [RowWrite((1,), rows[(1,)], 1 << 100, 0)])
        assert res.applied == 1
        assert _text(target_engine, q) == _text(source_engine, q)
    finally:
        drop_pair(source_engine, target_engine, q)
