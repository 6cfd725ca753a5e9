"""The row hash (hash_record_extended over native type hashes, text where needed) calls two rows
equal exactly when the leaves' normalized text is equal: equal values of compatible types agree,
and every real difference (a NULL moved to another column, '' vs NULL, 1 day vs 24 hours, -0 vs
0, 1.0 vs 1.00 inside jsonb, an enum label) changes the checksum."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.checksum import hash_family, native_hash_columns
from cdc_reconciler.reconcile import checksum as ck
from cdc_reconciler.reconcile.checksum import TablePair, describe_pair
from cdc_reconciler.reconcile.diff import Kind, diff_table
from cdc_reconciler.reconcile.segments import Segment

from .helpers import create_pair, drop_pair, run


def test_hash_families() -> None:
    assert hash_family("integer") == hash_family("bigint") == "int"
    assert hash_family("numeric(12,2)") == hash_family("numeric") == "numeric"
    assert hash_family("character varying(32)") == hash_family("text") == "text"
    assert hash_family("timestamp(3) with time zone") == "timestamptz"
    assert hash_family("timestamp without time zone") == "timestamp"
    assert hash_family("time with time zone") == "timetz"
    for typ in (
        "jsonb",
        "json",
        "double precision",
        "interval",
        "citext",
        "mood",
        "integer[]",
        "numeric(12,2)[]",
        "character varying[]",
        "text[]",
        "timestamp with time zone[]",
        "date[]",
        "uuid[]",
    ):
        assert hash_family(typ) is None, typ
    cols = ("a", "b", "c", "d")
    src = {"a": "integer", "b": "text", "c": "timestamp without time zone", "d": "interval"}
    tgt = {
        "a": "bigint",
        "b": "character varying",
        "c": "timestamp with time zone",
        "d": "interval",
    }
    # timestamp vs timestamptz print differently, so they are hashed as text (as the leaves see)
    assert native_hash_columns(cols, src, tgt) == {"a", "b"}


def _stats(source: sa.Engine, target: sa.Engine, pair: TablePair, key: int) -> tuple[int, int]:
    seg = Segment(pair.name, lo=(key,), hi=(key + 1,))
    out = []
    for engine, side in ((source, pair.source), (target, pair.target)):
        with engine.connect() as conn, conn.begin():
            out.append(ck.segment_stats(conn, side, seg).checksum)
    return out[0], out[1]


@pytest.mark.services
def test_row_hash_equal_exactly_when_the_text_is(
    source_engine: sa.Engine, target_engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    enum = unique_name("mood")
    for e in (source_engine, target_engine):
        run(e, f"CREATE TYPE {enum} AS ENUM ('sad', 'ok', 'happy')")
    cols = "a int, b int, t text, v varchar(20), n numeric(12,2), j jsonb, i interval, f float8, m {}, tz timetz, ts timestamptz"
    q = create_pair(
        source_engine,
        target_engine,
        unique_name("h"),
        "id int PRIMARY KEY, " + cols.format(enum),
        "id bigint PRIMARY KEY, "
        + cols.format(enum)
        .replace("a int", "a bigint")
        .replace("v varchar(20)", "v text")
        .replace("n numeric(12,2)", "n numeric"),
    )
    try:
        same = (
            "(1, 1, NULL, 'x', 'y', 1.50, '{\"k\": [1, 2]}', '1 day', 0.5, 'ok', "
            "'18:34:31+03:30', '2026-01-01 10:00+02')"
        )
        run(source_engine, f"INSERT INTO {q} VALUES {same}")
        run(
            target_engine,
            f"INSERT INTO {q} VALUES (1, 1, NULL, 'x', 'y', 1.5, '{{\"k\": [1, 2]}}', '1 day', "
            "0.5, 'ok', '15:04:31+00', '2026-01-01 08:00+00')",
        )
        # Each later row differs from the source in one way the leaves' text shows.
        base = "(1, 1, 't', 'v', 1.5, '{\"v\": 1.0}', '1 day', 0.0, 'ok', '10:00+00', '2026-01-01 00:00Z')"
        variants = [
            "(NULL, 1, 't', 'v', 1.5, '{\"v\": 1.0}', '1 day', 0.0, 'ok', '10:00+00', '2026-01-01 00:00Z')",
            "(1, NULL, 't', 'v', 1.5, '{\"v\": 1.0}', '1 day', 0.0, 'ok', '10:00+00', '2026-01-01 00:00Z')",
            "(1, 1, '', 'v', 1.5, '{\"v\": 1.0}', '1 day', 0.0, 'ok', '10:00+00', '2026-01-01 00:00Z')",
            "(1, 1, 'v', 't', 1.5, '{\"v\": 1.0}', '1 day', 0.0, 'ok', '10:00+00', '2026-01-01 00:00Z')",
            "(1, 1, 't', 'v', 1.51, '{\"v\": 1.0}', '1 day', 0.0, 'ok', '10:00+00', '2026-01-01 00:00Z')",
            "(1, 1, 't', 'v', 1.5, '{\"v\": 1.00}', '1 day', 0.0, 'ok', '10:00+00', '2026-01-01 00:00Z')",
            "(1, 1, 't', 'v', 1.5, '{\"v\": 1.0}', '24:00:00', 0.0, 'ok', '10:00+00', '2026-01-01 00:00Z')",
            "(1, 1, 't', 'v', 1.5, '{\"v\": 1.0}', '1 day', '-0', 'ok', '10:00+00', '2026-01-01 00:00Z')",
            "(1, 1, 't', 'v', 1.5, '{\"v\": 1.0}', '1 day', 0.0, 'sad', '10:00+00', '2026-01-01 00:00Z')",
            "(1, 1, 't', 'v', 1.5, '{\"v\": 1.0}', '1 day', 0.0, 'ok', '10:00+01', '2026-01-01 00:00Z')",
            "(1, 1, 't', 'v', 1.5, '{\"v\": 1.0}', '1 day', 0.0, 'ok', '10:00+00', "
            "'2026-01-01 00:00:00.000001Z')",
        ]
        for k, row in enumerate(variants, start=2):
            run(source_engine, f"INSERT INTO {q} VALUES ({k}, {base[1:]}")
            run(target_engine, f"INSERT INTO {q} VALUES ({k}, {row[1:]}")
        with source_engine.connect() as s, target_engine.connect() as t:
            pair = describe_pair(s, t, q)
        assert pair.source.native_hash == {"id", "a", "b", "t", "v", "n", "tz", "ts"}
        s1, t1 = _stats(source_engine, target_engine, pair, 1)
        assert s1 == t1
        for k in range(2, len(variants) + 2):
            s_k, t_k = _stats(source_engine, target_engine, pair, k)
            assert s_k != t_k, variants[k - 2]
        result = diff_table(source_engine, target_engine, pair)
        assert sorted(d.key[0] for d in result.differences) == list(range(2, len(variants) + 2))
        assert {d.kind for d in result.differences} == {Kind.MISMATCHED}
    finally:
        drop_pair(source_engine, target_engine, q)
        for e in (source_engine, target_engine):
            run(e, f"DROP TYPE IF EXISTS {enum}")
