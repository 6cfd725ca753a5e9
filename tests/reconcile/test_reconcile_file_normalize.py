"""The file side of reconcile-file's normalisation, in DuckDB alone (no services): each spelling
a file may use becomes the canonical text PostgreSQL produces for the typed value (the table side
is tested against real PostgreSQL in test_reconcile_file.py)."""

from __future__ import annotations

import duckdb
import pytest

from cdc_reconciler.reconcile.file_normalize import (
    ColumnType,
    Kind,
    duck_canonical,
    hash60,
    joined,
    kind_of,
)


def canon(pg_type: str, value: str | None) -> str | None:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        expr = duck_canonical(ColumnType("c", pg_type), "v")
        row = con.execute(
            f"SELECT {expr} FROM (SELECT CAST(? AS VARCHAR) AS v)", [value]
        ).fetchone()
        return None if row is None else row[0]
    finally:
        con.close()


@pytest.mark.parametrize(
    ("pg_type", "spellings", "expected"),
    [
        ("numeric(12,2)", ["1.5", "1.50", "+1.500", "15e-1", " 1.5 "], "1.5"),
        ("numeric", ["-0", "-0.000", "0"], "0"),
        ("integer", ["100", "+100", "1e2", "100.0"], "100"),
        ("bigint", ["9223372036854775807"], "9223372036854775807"),
        ("double precision", ["0.1", "0.10000000000000001", "1e-1"], "0.1"),
        ("double precision", ["100", "100.0", "1e2"], "100"),
        ("double precision", ["inf", "Infinity"], "Infinity"),
        ("real", ["0.1", "0.100000001"], "0.1"),
        ("boolean", ["t", "TRUE", "1", "yes", "Y", "on"], "t"),
        ("boolean", ["f", "False", "0", "no", "N", "OFF"], "f"),
        ("date", ["2026-03-04", " 2026-03-04 "], "2026-03-04"),
        (
            "timestamp with time zone",
            ["2026-01-01T12:00:00+02:00", "2026-01-01 10:00:00", "2026-01-01T10:00:00Z"],
            "2026-01-01T10:00:00.000000",
        ),
        ("timestamp without time zone", ["2026-01-01 10:00:00.5"], "2026-01-01T10:00:00.500000"),
        (
            "uuid",
            ["A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"],
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ),
        ("text", [" x "], " x "),
        ("character(4)", ["ab  ", "ab"], "ab"),
    ],
)
def test_equal_spellings_share_one_canonical_text(
    pg_type: str, spellings: list[str], expected: str
) -> None:
    assert {canon(pg_type, s) for s in spellings} == {expected}


@pytest.mark.parametrize(
    "pg_type", ["integer", "numeric", "text", "boolean", "date", "timestamp with time zone"]
)
def test_empty_is_null_for_every_type(pg_type: str) -> None:
    assert canon(pg_type, "") is None
    assert canon(pg_type, None) is None


def test_values_that_do_not_parse_are_marked_not_dropped() -> None:
    assert canon("integer", "one") == "!one"
    assert canon("boolean", "maybe") == "!maybe"
    assert canon("timestamp with time zone", "yesterday") == "!yesterday"
    # commas and quotes cannot break the joined row text
    assert canon("date", 'a,"b"') == "!a;'b'"


def test_kinds_of_postgresql_types() -> None:
    assert kind_of("timestamp(3) with time zone") is Kind.TIMESTAMPTZ
    assert kind_of("timestamp without time zone") is Kind.TIMESTAMP
    assert kind_of("character varying(20)") is Kind.TEXT
    assert kind_of("numeric(10,0)") is Kind.NUMBER
    assert kind_of("jsonb") is Kind.OTHER


def test_joined_text_keeps_rows_apart_and_hashes_equally_in_both_dialects() -> None:
    t = ColumnType("t", "text")
    n = ColumnType("n", "integer")
    con = duckdb.connect()
    try:

        def row(a: str | None, b: str | None) -> str:
            sql = joined([("?", t), ("?", t)], duck=True)
            return str(con.execute(f"SELECT {sql}", [a, b]).fetchone()[0])  # type: ignore[index]

        assert row("a,b", "c") != row("a", "b,c")
        assert row(None, "x") != row("~", "x") != row("", "x")
        assert row('a"', "b") == '"a""","b"'
        [(h,)] = con.execute(
            f"SELECT {hash60(joined([('?', n)], duck=True), duck=True)}", ["7"]
        ).fetchall()
    finally:
        con.close()
    # md5('7') = 8f14e45fceea167a5a36dedd4bea2543; its first 15 hex digits as an integer, which
    # PostgreSQL's ('x' || substr(md5(t), 1, 15))::bit(60)::bigint gives too
    assert h == int("8f14e45fceea167", 16)
