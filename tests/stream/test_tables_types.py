"""Issue 9 item 2: `cdcr tables sync` (and --create-missing, same code) mirrors what a source
table needs beyond built-in types: enums with the same labels in the same order, domains with
their checks, composite types, arrays of them, and extensions (created when the target has them
available, else a clear error naming the extension)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream import command, mirror, tables
from tests.helpers import settings_for

pytestmark = pytest.mark.services


def _types(engine: sa.Engine, table: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        conn.execute(sa.text("select set_config('search_path', '', true)"))
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "select attname, format_type(atttypid, atttypmod) from pg_attribute "
                    "where attrelid = cast(:t as regclass) and attnum > 0 and not attisdropped "
                    "and attname not like '\\_cdc\\_%' order by attnum"
                ),
                {"t": table},
            )
        ]


@pytest.fixture()
def schema(
    source_engine: sa.Engine, target_engine: sa.Engine, unique_name: Callable[[str], str]
) -> Iterator[str]:
    name = unique_name("s")
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"create schema {name}"))
    yield name
    for engine in (source_engine, target_engine):
        with engine.begin() as conn:
            conn.execute(sa.text(f"drop schema if exists {name} cascade"))


def test_tables_sync_mirrors_enums_domains_composites_and_extensions(
    source_engine: sa.Engine, target_engine: sa.Engine, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = schema
    with source_engine.begin() as conn:
        conn.execute(sa.text("create extension if not exists citext schema public"))
        conn.execute(sa.text(f"create type {s}.mood as enum ('zeta', 'alpha', 'o''neil')"))
        conn.execute(
            sa.text(f"create domain {s}.code as varchar(8) default 'x' check (value ~ '^[a-z]+$')")
        )
        conn.execute(sa.text(f"create domain {s}.small as {s}.code check (length(value) < 4)"))
        conn.execute(sa.text(f"create type {s}.pair as (m {s}.mood, c {s}.code, n numeric(5,2))"))
        conn.execute(
            sa.text(
                f"create table {s}.t (id int primary key, m {s}.mood, ms {s}.mood[], c {s}.small, "
                f"p {s}.pair, ps {s}.pair[], e public.citext, n numeric(7,3), ts timestamp(3))"
            )
        )
    # The target already has the enum with one label: sync adds the missing ones.
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"create schema {s}"))
        conn.execute(sa.text(f"create type {s}.mood as enum ('zeta')"))
    settings = settings_for(monkeypatch)
    done = command.sync_tables(settings, [f"{s}.t"])
    assert len(done) == 1 and done[0].startswith(f'CREATE TABLE IF NOT EXISTS "{s}"."t"')
    assert _types(target_engine, f"{s}.t") == _types(source_engine, f"{s}.t")
    with target_engine.connect() as conn:
        labels = conn.execute(sa.text(f"select enum_range(null::{s}.mood)::text")).scalar()
        assert labels == "{zeta,alpha,o'neil}"
        checks = (
            conn.execute(
                sa.text(
                    "select pg_get_constraintdef(c.oid) from pg_constraint c "
                    "where c.contypid = cast(:d as regtype) order by 1"
                ),
                {"d": f"{s}.small"},
            )
            .scalars()
            .all()
        )
        assert checks == ["CHECK ((length((VALUE)::text) < 4))"]
        # The domain's check is enforced in the target as in the source.
        assert conn.execute(sa.text("select 'A'::public.citext = 'a'")).scalar() is True
        with pytest.raises(sa.exc.DBAPIError, match="check constraint"):
            conn.execute(sa.text(f"select cast('abcd' as {s}.small)"))
    # Again: nothing to do, no error.
    assert command.sync_tables(settings, [f"{s}.t"]) == []


def test_extension_missing_in_the_target_is_named(
    source_engine: sa.Engine, target_engine: sa.Engine, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = schema
    with source_engine.begin() as conn:
        conn.execute(sa.text("create extension if not exists seg schema public"))
        conn.execute(sa.text(f"create table {s}.t (id int primary key, v public.seg)"))
    try:
        # As if the target server had no contrib package: nothing is available to create.
        monkeypatch.setattr(mirror, "_AVAILABLE", sa.text("SELECT 1 WHERE :e = ''"))
        with target_engine.connect() as conn:
            assert (
                conn.execute(sa.text("select 1 from pg_extension where extname='seg'")).first()
                is None
            )
        settings = settings_for(monkeypatch)
        with pytest.raises(CdcrError) as info:
            command.sync_tables(settings, [f"{s}.t"])
        assert "needs the extension seg" in str(info.value)
        monkeypatch.undo()
        # Available: CREATE EXTENSION IF NOT EXISTS, then the table.
        command.sync_tables(settings_for(monkeypatch), [f"{s}.t"])
        assert _types(target_engine, f"{s}.t") == [("id", "integer"), ("v", "public.seg")]
    finally:
        for engine in (target_engine, source_engine):
            with engine.begin() as conn:
                conn.execute(sa.text(f"drop table if exists {s}.t"))
                conn.execute(sa.text("drop extension if exists seg"))


def test_a_new_source_column_of_a_new_user_type_is_added_with_its_type(
    source_engine: sa.Engine, target_engine: sa.Engine, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = schema
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"create table {s}.t (id int primary key)"))
    settings = settings_for(monkeypatch)
    command.sync_tables(settings, [f"{s}.t"])
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"create type {s}.level as enum ('low', 'high')"))
        conn.execute(sa.text(f"alter table {s}.t add column lv {s}.level[], add column b bit(3)"))
    resolver = tables.TableResolver(target_engine, {}, source=source_engine)
    route = resolver._load((s, "t"))
    widened, values = resolver.row_values(route, {"id": 1, "lv": ["high"], "b": b"\x05"})
    assert set(widened.table.columns) == {"id", "lv", "b"}
    assert values["b"] == "101"  # the new bit(3) column's adapter applies at once
    assert _types(target_engine, f"{s}.t") == _types(source_engine, f"{s}.t")
    with target_engine.connect() as conn:
        assert conn.execute(sa.text(f"select enum_range(null::{s}.level)::text")).scalar() == (
            "{low,high}"
        )
