"""The target adapter against a real PostgreSQL: versioned writes, remembered deletes, TOAST-style
partial writes, versioned truncates, and COPY encoding of awkward values."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.copytext import copy_field
from cdc_reconciler.connectors.postgres.reflect import reflect_table
from cdc_reconciler.connectors.postgres.table import TargetTable
from cdc_reconciler.connectors.postgres.write import (
    RowWrite,
    WriteResult,
    truncate_table,
    write_batch,
)

pytestmark = pytest.mark.services

T0 = 1_700_000_000_000_000  # µs


@pytest.fixture()
def table(target_engine: sa.Engine, unique_name: Callable[[str], str]) -> Iterator[TargetTable]:
    name = unique_name("tgt")
    with target_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"create table public.{name} (id int primary key, name text, amount numeric(12,2), "
                "tags text[], doc jsonb, raw bytea, span interval, at timestamptz, d date, t time, "
                "_cdc_pos numeric(40,0) not null, _cdc_ts timestamptz not null)"
            )
        )
    tbl = reflect_table(target_engine, "public", name)
    assert tbl is not None
    yield tbl
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"drop table public.{name}"))
        conn.execute(
            sa.text("delete from cdcr.tombstones where table_name = :t"), {"t": tbl.qualified}
        )


def write(engine: sa.Engine, table: TargetTable, *writes: RowWrite) -> WriteResult:
    with engine.begin() as conn:
        return write_batch(conn, table, list(writes))


def state(engine: sa.Engine, table: TargetTable) -> dict[int, tuple[str, int]]:
    with engine.connect() as conn:
        return {
            r.id: (r.name, int(r._cdc_pos))
            for r in conn.execute(
                sa.text(f"select id, name, _cdc_pos from {table.qualified} order by id")
            )
        }


def row(id_: int, name: str, pos: int, **more: Any) -> RowWrite:
    return RowWrite(
        (id_,),
        {
            "id": id_,
            "name": name,
            "amount": None,
            "tags": None,
            "doc": None,
            "raw": None,
            "span": None,
            "at": None,
            "d": None,
            "t": None,
            **more,
        },
        pos,
        T0 + pos,
    )


def delete(id_: int, pos: int) -> RowWrite:
    return RowWrite((id_,), None, pos, T0 + pos)


def test_newer_writes_apply_and_older_ones_are_stale(
    target_engine: sa.Engine, table: TargetTable
) -> None:
    assert write(target_engine, table, row(1, "a", 10), row(2, "b", 10)).applied == 2
    res = write(target_engine, table, row(1, "old", 5), row(2, "new", 20))
    assert (res.applied, res.stale) == (1, 1)
    assert state(target_engine, table) == {1: ("a", 10), 2: ("new", 20)}
    # The same write again is stale: redelivery never changes the outcome.
    assert write(target_engine, table, row(2, "new", 20)).stale == 1


def test_delete_is_remembered_against_older_inserts(
    target_engine: sa.Engine, table: TargetTable
) -> None:
    write(target_engine, table, row(1, "a", 10))
    assert write(target_engine, table, delete(1, 20)).applied == 1
    assert state(target_engine, table) == {}
    # An older insert replayed after the delete does not bring the row back ...
    res = write(target_engine, table, row(1, "zombie", 15))
    assert (res.applied, res.stale) == (0, 1)
    assert state(target_engine, table) == {}
    # ... a newer one does, and supersedes the tombstone.
    assert write(target_engine, table, row(1, "reborn", 30)).applied == 1
    assert state(target_engine, table) == {1: ("reborn", 30)}
    with target_engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("select count(*) from cdcr.tombstones where table_name = :t"),
                {"t": table.qualified},
            ).scalar()
            == 0
        )


def test_older_delete_is_stale(target_engine: sa.Engine, table: TargetTable) -> None:
    write(target_engine, table, row(1, "a", 10))
    res = write(target_engine, table, delete(1, 5))
    assert (res.applied, res.stale) == (0, 1)
    assert state(target_engine, table) == {1: ("a", 10)}


def test_partial_write_keeps_omitted_columns(target_engine: sa.Engine, table: TargetTable) -> None:
    write(target_engine, table, row(1, "a", 10, doc='{"big": "value"}'))
    partial = RowWrite((1,), {"id": 1, "name": "renamed"}, 20, T0 + 20)
    assert write(target_engine, table, partial).applied == 1
    with target_engine.connect() as conn:
        r = conn.execute(sa.text(f"select name, doc from {table.qualified}")).one()
    assert r.name == "renamed" and r.doc == {"big": "value"}


def test_truncate_is_versioned(target_engine: sa.Engine, table: TargetTable) -> None:
    write(target_engine, table, row(1, "a", 10), row(2, "b", 30))
    with target_engine.begin() as conn:
        assert truncate_table(conn, table, 20, T0) == 1
    assert state(target_engine, table) == {2: ("b", 30)}
    # Writes older than the truncate stay out; newer ones apply.
    assert write(target_engine, table, row(3, "old", 15)).stale == 1
    assert write(target_engine, table, row(3, "new", 25)).applied == 1


def test_awkward_values_round_trip_through_copy(
    target_engine: sa.Engine, table: TargetTable
) -> None:
    at = datetime(1930, 3, 1, 12, 0, tzinfo=UTC)
    w = row(
        1,
        'tab\there "quoted" back\\slash\nnewline',
        10,
        amount=Decimal("-123.45"),
        tags=["a,b", 'q"uote', None, "back\\slash"],
        doc='{"k": [1, 2]}',
        raw=b"\x00\xff\\",
        span=timedelta(days=400, seconds=3661, microseconds=5),
        at=at,
        d=date(1969, 12, 31),
        t=time(23, 59, 59, 999999),
    )
    assert write(target_engine, table, w).applied == 1
    with target_engine.connect() as conn:
        r = conn.execute(sa.text(f"select * from {table.qualified}")).one()
    assert r.name == 'tab\there "quoted" back\\slash\nnewline'
    assert r.amount == Decimal("-123.45")
    assert r.tags == ["a,b", 'q"uote', None, "back\\slash"]
    assert r.doc == {"k": [1, 2]}
    assert bytes(r.raw) == b"\x00\xff\\"
    assert r.span == timedelta(days=400, seconds=3661, microseconds=5)
    assert r.at == at and r.d == date(1969, 12, 31)
    assert r._mapping["t"] == time(23, 59, 59, 999999)
    assert r._cdc_ts == datetime.fromtimestamp((T0 + 10) / 1e6, tz=UTC)


def test_copy_field_escapes_and_nulls() -> None:
    assert copy_field(None) == "\\N"
    assert copy_field("a\tb\\c\nd\re") == "a\\tb\\\\c\\nd\\re"
    assert copy_field(True) == "t" and copy_field(False) == "f"
    assert copy_field(7) == "7" and copy_field(Decimal("1.50")) == "1.50"


def test_a_target_column_altered_while_running_takes_the_new_type(
    target_engine: sa.Engine, table: TargetTable
) -> None:
    """Staging lives for one transaction, so a column widened on the target (on the same pooled
    connection, with the table description cached) is written with its new type: nothing is
    rounded or cut to the old one."""
    engine = sa.create_engine(target_engine.url, pool_size=1, max_overflow=0)
    try:
        write(engine, table, row(1, "a", 10, amount=Decimal("1.2345")))
        with engine.begin() as conn:
            conn.execute(
                sa.text(f"alter table {table.qualified} alter column amount type numeric(14,4)")
            )
            conn.execute(
                sa.text(f"alter table {table.qualified} alter column name type varchar(3)")
            )
        write(engine, table, row(1, "b", 20, amount=Decimal("1.2345")))
        with engine.connect() as conn:
            got = conn.execute(sa.text(f"select amount::text from {table.qualified}")).scalar()
        assert got == "1.2345"
        with engine.begin() as conn:
            conn.execute(
                sa.text(f"alter table {table.qualified} alter column name type varchar(20)")
            )
        # A value the old (narrower) type would have rejected now fits.
        write(engine, table, row(1, "widened", 30, amount=Decimal("2")))
        assert state(engine, table) == {1: ("widened", 30)}
    finally:
        engine.dispose()


def test_a_failed_commit_does_not_leave_staging_believed_made(
    target_engine: sa.Engine, table: TargetTable
) -> None:
    """SQLAlchemy's "commit" event fires before COMMIT is sent. A COMMIT that fails (here a
    deferred trigger raising a serialization failure once, as serializable isolation or a
    deferred constraint can) rolls back the staging table's CREATE; the next batch on the same
    connection must make it again, not fail on a missing relation until the watchdog."""
    name = table.qualified.split(".")[1]
    fn, seq = f"{name}_fail_once", f"{name}_tries"
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"create sequence public.{seq}"))
        conn.execute(
            sa.text(
                f"create function public.{fn}() returns trigger language plpgsql as $$ begin "
                f"if nextval('public.{seq}') = 1 then raise exception 'fail at commit once' "
                "using errcode = '40001'; end if; return null; end $$"
            )
        )
        conn.execute(
            sa.text(
                f"create constraint trigger {fn} after insert or update on {table.qualified} "
                f"deferrable initially deferred for each row execute function public.{fn}()"
            )
        )
    engine = sa.create_engine(target_engine.url, pool_size=1, max_overflow=0)
    try:
        with pytest.raises(sa.exc.DBAPIError) as info:
            write(engine, table, row(1, "a", 10))  # staging made in this transaction
        assert getattr(info.value.orig, "pgcode", None) == "40001"
        assert write(engine, table, row(1, "a", 10)).applied == 1  # same connection
        assert write(engine, table, row(2, "b", 10)).applied == 1
        assert state(engine, table) == {1: ("a", 10), 2: ("b", 10)}
    finally:
        engine.dispose()
        with target_engine.begin() as conn:
            conn.execute(sa.text(f"drop trigger if exists {fn} on {table.qualified}"))
            conn.execute(sa.text(f"drop function if exists public.{fn}()"))
            conn.execute(sa.text(f"drop sequence if exists public.{seq}"))


def test_staging_is_made_once_per_connection_and_again_after_a_rollback(
    target_engine: sa.Engine, table: TargetTable
) -> None:
    """Staging is made once per connection, not per batch; a rollback (or a rollback to a
    savepoint) that undid its CREATE makes it again on next use, and a second write in one
    transaction starts from an empty staging table."""
    from cdc_reconciler.connectors.postgres.write import _statements

    staging = _statements(table, table.columns).staging
    engine = sa.create_engine(target_engine.url, pool_size=1, max_overflow=0)

    def staging_oid(conn: sa.Connection) -> int | None:
        oid = conn.execute(sa.text("select to_regclass(:n)::oid"), {"n": f"pg_temp.{staging}"})
        return oid.scalar()

    try:
        with engine.begin() as conn:  # made, then undone by the rollback
            write_batch(conn, table, [row(1, "a", 10)])
            conn.rollback()
        with engine.connect() as conn:
            assert staging_oid(conn) is None
        assert write(engine, table, row(1, "a", 10)).applied == 1
        with engine.connect() as conn:
            first = staging_oid(conn)
        assert first is not None
        assert write(engine, table, row(2, "b", 10)).applied == 1
        with engine.connect() as conn:
            assert staging_oid(conn) == first  # not made again
        # Two writes in one transaction: the second does not see the first one's rows.
        with engine.begin() as conn:
            assert write_batch(conn, table, [row(3, "c", 10)]).applied == 1
            res = write_batch(conn, table, [row(3, "old", 5)])
            assert (res.applied, res.stale) == (0, 1)
        # A savepoint rolled back after staging was made again (new connection) inside it.
        engine.dispose()
        with engine.begin() as conn:
            with conn.begin_nested() as sp:
                write_batch(conn, table, [row(4, "gone", 10)])
                sp.rollback()
            assert write_batch(conn, table, [row(5, "e", 10)]).applied == 1
        assert state(engine, table) == {1: ("a", 10), 2: ("b", 10), 3: ("c", 10), 5: ("e", 10)}
    finally:
        engine.dispose()
