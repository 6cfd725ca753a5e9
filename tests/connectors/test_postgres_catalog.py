"""connectors/postgres: the catalog reader, reflect_table, the include/exclude column rule and
the mirrored DDL built from them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa

from cdc_reconciler.config import PartitionBy, TableMapping, column_selected
from cdc_reconciler.connectors.postgres import catalog
from cdc_reconciler.connectors.postgres.reflect import reflect_table
from cdc_reconciler.connectors.postgres.sql import qualified_ident, quote_ident
from cdc_reconciler.connectors.postgres.table import TargetTable
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.errors import ApplyError
from cdc_reconciler.stream.mirror import mirror_ddl
from cdc_reconciler.stream.tables import Route, TableResolver

# --------------------------------------------------------------------------- pure rules


def test_quote_ident_doubles_quotes() -> None:
    assert quote_ident('we"ird') == '"we""ird"'
    assert qualified_ident("s", "T") == '"s"."T"'


@pytest.mark.parametrize(
    ("column", "include", "exclude", "keys", "expected"),
    [
        ("a", None, [], (), True),  # no lists: every column
        ("a", None, ["a"], (), False),  # excluded
        ("a", ["a"], [], (), True),  # included
        ("b", ["a"], [], (), False),  # not included
        ("id", ["a"], [], ("id",), True),  # a key is carried though not included
        ("id", ["id"], ["id"], ("id",), False),  # exclude wins, also over include and key
        ("id", [], [], ("id",), True),  # an empty include list carries the keys only
        ("a", [], [], ("id",), False),
    ],
)
def test_column_selected(
    column: str,
    include: list[str] | None,
    exclude: list[str],
    keys: tuple[str, ...],
    expected: bool,
) -> None:
    assert column_selected(column, include, exclude, keys) is expected


def test_row_values_applies_the_rule() -> None:
    """The apply engine's filter is column_selected: excluded and not-included columns are
    dropped, the key stays (no database is touched: every column is known)."""
    table = TargetTable("public", "t", ("id",), ("id", "a", "b"), ("integer", "text", "text"))
    mapping = TableMapping(include_columns=["a", "secret"], exclude_columns=["secret"])
    resolver = TableResolver(sa.create_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none"), {})
    route, out = resolver.row_values(
        Route.of(table, mapping), {"id": 1, "a": "x", "b": "y", "secret": "s"}
    )
    assert route.table is table
    assert out == {"id": 1, "a": "x"}


# --------------------------------------------------------------------------- against PostgreSQL


@pytest.fixture()
def schema(target_engine: sa.Engine, unique_name: Callable[[str], str]) -> Iterator[str]:
    name = unique_name("cat")
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {name}"))
        conn.execute(sa.text(f"CREATE DOMAIN {name}.amount AS numeric(12,2)"))
        conn.execute(
            sa.text(
                f'CREATE TABLE {name}.t (a int, "B" text, amt {name}.amount, tags int[], '
                "gone int, _cdc_pos numeric(40,0) NOT NULL, _cdc_ts timestamptz NOT NULL, "
                'PRIMARY KEY ("B", a))'
            )
        )
        conn.execute(sa.text(f"ALTER TABLE {name}.t DROP COLUMN gone"))
        conn.execute(sa.text(f"CREATE VIEW {name}.v AS SELECT a, amt FROM {name}.t"))
        conn.execute(sa.text(f"CREATE SEQUENCE {name}.seq"))
        conn.execute(sa.text(f"CREATE TABLE {name}.nokey (x int)"))
    yield name
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))


@pytest.mark.services
def test_catalog_reads_columns_key_and_kinds(target_engine: sa.Engine, schema: str) -> None:
    cols = catalog.columns(target_engine, schema, "t")
    assert [c.name for c in cols] == ["a", "B", "amt", "tags", "_cdc_pos", "_cdc_ts"]
    by = {c.name: c for c in cols}
    assert by["amt"].type == f"{schema}.amount"
    assert by["amt"].kind == "bN:numeric"  # the domain resolved to its base type
    assert by["tags"].type == "integer[]" and by["tags"].kind == "bA:_int4"
    # Key order is the constraint's, not the columns'.
    assert catalog.primary_key(target_engine, schema, "t") == ("B", "a")
    assert catalog.primary_key(target_engine, schema, "nokey") == ()
    with target_engine.connect() as conn:  # also in the caller's transaction
        assert catalog.column_types(conn, schema, "v") == {
            "a": "integer",
            "amt": f"{schema}.amount",
        }
    assert catalog.partitioning(target_engine, schema, "t") == (None, None)


@pytest.mark.services
def test_catalog_exists_counts_tables_and_views_only(target_engine: sa.Engine, schema: str) -> None:
    assert catalog.exists(target_engine, schema, "t")
    assert catalog.exists(target_engine, schema, "v")
    assert not catalog.exists(target_engine, schema, "seq")
    assert not catalog.exists(target_engine, schema, "missing")
    assert catalog.columns(target_engine, schema, "missing") == []


@pytest.mark.services
def test_reflect_table(target_engine: sa.Engine, schema: str) -> None:
    t = reflect_table(target_engine, schema, "t")
    assert t is not None
    assert t.key_columns == ("B", "a")
    assert t.columns == ("a", "B", "amt", "tags")  # no engine columns, no dropped ones
    assert t.column_types == ("integer", "text", f"{schema}.amount", "integer[]")
    assert t.type_of("amt") == f"{schema}.amount"
    configured = reflect_table(target_engine, schema, "t", ["a"])
    assert configured is not None and configured.key_columns == ("a",)
    assert reflect_table(target_engine, schema, "missing") is None
    with pytest.raises(CdcrError, match="engine columns"):
        reflect_table(target_engine, schema, "nokey", allow_keyless=True)


@pytest.mark.services
def test_mirror_ddl_carries_the_selected_columns(target_engine: sa.Engine, schema: str) -> None:
    with target_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {schema}.src (id int, k text, note text, secret text, "
                "at timestamptz, PRIMARY KEY (k, id))"
            )
        )
    src, tgt = (schema, "src"), ("out", "dst")
    engine_cols = '"_cdc_pos" numeric(40,0) NOT NULL, "_cdc_ts" timestamptz NOT NULL'
    plain = mirror_ddl(target_engine, src, tgt, TableMapping(include_columns=["note"]))
    assert plain == (
        'CREATE TABLE IF NOT EXISTS "out"."dst" ("id" integer NOT NULL, "k" text NOT NULL, '
        f'"note" text, {engine_cols}, PRIMARY KEY ("k", "id"))'
    )
    parted = mirror_ddl(
        target_engine,
        src,
        tgt,
        TableMapping(exclude_columns=["secret"], partition_by=PartitionBy(column="at")),
    )
    assert parted == (
        'CREATE TABLE IF NOT EXISTS "out"."dst" ("id" integer NOT NULL, "k" text NOT NULL, '
        f'"note" text, "at" timestamp with time zone NOT NULL, {engine_cols}, '
        'PRIMARY KEY ("k", "id", "at")) PARTITION BY RANGE ("at")'
    )
    with pytest.raises(ApplyError, match="partition column 'note' is of type text"):
        mirror_ddl(target_engine, src, tgt, TableMapping(partition_by=PartitionBy(column="note")))
    with pytest.raises(ApplyError, match="does not exist"):
        mirror_ddl(target_engine, (schema, "missing"), tgt, TableMapping())


def test_a_missing_target_table_is_not_looked_up_for_every_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --create-missing, each event of a topic whose target table is missing used to
    read the catalog before its dead letter; the answer now holds for MISSING_RECHECK_S, and a
    table created meanwhile is used once it has passed."""
    from types import SimpleNamespace

    from cdc_reconciler.stream import tables

    made = TargetTable("public", "t", ("id",), ("id",), ("integer",))
    lookups: list[str] = []
    exists = [False]

    def reflect(_engine: Any, schema: str, name: str, *_a: Any, **_k: Any) -> Any:
        lookups.append(f"{schema}.{name}")
        return made if exists[0] else None

    clock = [100.0]
    monkeypatch.setattr(tables, "reflect_table", reflect)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # the module tables.py reads
    resolver = TableResolver(sa.create_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none"), {})
    event = cast(Any, SimpleNamespace(source_schema="public", source_table="t"))
    for _ in range(3):
        with pytest.raises(ApplyError) as info:
            resolver.route("cdc.public.t", event)
        assert info.value.kind == "no_target_table"
    assert lookups == ["public.t"]  # one catalog read for three events
    exists[0] = True
    clock[0] += tables.MISSING_RECHECK_S
    assert resolver.route("cdc.public.t", event).table is made
    assert lookups == ["public.t", "public.t"]
