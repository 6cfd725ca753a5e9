"""The diff against real PostgreSQL: exact differences found by bisection, equal values that
print differently are not differences, windows narrow what is compared."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from cdc_reconciler.reconcile.checksum import TablePair, describe_pair
from cdc_reconciler.reconcile.diff import DiffOptions, Kind, diff_table
from cdc_reconciler.reconcile.segments import Window

from .helpers import create_pair, drop_pair, run

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture()
def pair_factory(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(name: str, source_cols: str, target_cols: str | None = None) -> str:
        q = create_pair(source_engine, target_engine, name, source_cols, target_cols)
        made.append(q)
        return q

    yield make
    for q in made:
        drop_pair(source_engine, target_engine, q)


def _pair(source: sa.Engine, target: sa.Engine, name: str, **kw: object) -> TablePair:
    with source.connect() as s, target.connect() as t:
        return describe_pair(s, t, name, **kw)  # type: ignore[arg-type]


FILL = (
    "INSERT INTO {t} SELECT g, 'name ' || g, (g * 1.5)::numeric, "
    "('{{\"a\": 1, \"b\": ' || g || '}}')::json, timestamptz '2026-01-01 00:00Z' + g * interval '1 second' "
    "FROM generate_series(1, {n}) g"
)


def test_int_key_exact_differences(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    pair_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    # The target's numeric has another scale, json is jsonb, and timestamps are written in
    # another time zone: none of that is a difference.
    q = pair_factory(
        unique_name("d"),
        "id bigint PRIMARY KEY, name text, amount numeric, doc json, at timestamptz",
        "id bigint PRIMARY KEY, name text, amount numeric(20,6), doc jsonb, at timestamptz",
    )
    run(source_engine, FILL.format(t=q, n=5000))
    with target_engine.begin() as c:
        c.execute(sa.text("SET LOCAL TimeZone = 'Asia/Tokyo'"))
        c.execute(
            sa.text(
                f"INSERT INTO {q} (id, name, amount, doc, at) SELECT g, 'name ' || g, "
                "(g * 1.5)::numeric(20,6), ('{\"b\": ' || g || ', \"a\": 1}')::jsonb, "
                "timestamptz '2026-01-01 00:00Z' + g * interval '1 second' FROM generate_series(1, 5000) g"
            )
        )
    run(target_engine, f"DELETE FROM {q} WHERE id IN (7, 2500, 4999)")
    run(target_engine, f"UPDATE {q} SET name = 'corrupt' WHERE id = 100")
    run(target_engine, f"UPDATE {q} SET amount = amount + 0.01, doc = '{{}}' WHERE id = 3001")
    run(target_engine, f"INSERT INTO {q} (id, name) VALUES (6000, 'x'), (-3, 'y')")

    pair = _pair(source_engine, target_engine, q)
    result = diff_table(source_engine, target_engine, pair, options=DiffOptions(threshold=16))
    got = {(d.kind, d.key, d.columns) for d in result.differences}
    assert got == {
        (Kind.MISSING, (7,), ()),
        (Kind.MISSING, (2500,), ()),
        (Kind.MISSING, (4999,), ()),
        (Kind.MISMATCHED, (100,), ("name",)),
        (Kind.MISMATCHED, (3001,), ("amount", "doc")),
        (Kind.EXTRA, (6000,), ()),
        (Kind.EXTRA, (-3,), ()),
    }
    assert result.stats.rows_downloaded < 500  # bisected, not downloaded
    mism = next(d for d in result.differences if d.key == (100,))
    assert mism.source_row is not None and mism.source_row["name"] == "name 100"
    assert mism.target_row is not None and mism.target_row["name"] == "corrupt"


def test_in_sync_is_clean(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    pair_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    q = pair_factory(
        unique_name("d"),
        "id bigint PRIMARY KEY, name text, amount numeric, doc json, at timestamptz",
    )
    run(source_engine, FILL.format(t=q, n=3000))
    run(
        target_engine,
        FILL.format(t=q, n=3000).replace(
            f"INSERT INTO {q}", f"INSERT INTO {q} (id, name, amount, doc, at)"
        ),
    )
    result = diff_table(source_engine, target_engine, _pair(source_engine, target_engine, q))
    assert result.clean
    assert result.stats.rows_downloaded == 0
    assert result.stats.source_rows == result.stats.target_rows == 3000


@pytest.mark.parametrize("key_kind", ["text", "composite"])
def test_text_and_composite_keys(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    pair_factory: Callable[..., str],
    unique_name: Callable[[str], str],
    key_kind: str,
) -> None:
    missing: tuple[object, ...]
    extra: tuple[object, ...]
    bad: tuple[object, ...]
    if key_kind == "text":
        cols = "k text PRIMARY KEY, v int"
        fill = "SELECT 'key-' || g, g FROM generate_series(1, 4000) g"
        missing, extra, bad = ("key-17",), ("key-zzz",), ("key-3999",)
    else:
        cols = "a int, b text, v int, PRIMARY KEY (a, b)"
        fill = "SELECT g % 50, 'b' || g, g FROM generate_series(1, 4000) g"
        missing, extra, bad = (17, "b17"), (3, "extra"), (49, "b3999")
    q = pair_factory(unique_name("k"), cols)
    run(source_engine, f"INSERT INTO {q} {fill}")
    cols_list = "k, v" if key_kind == "text" else "a, b, v"
    run(target_engine, f"INSERT INTO {q} ({cols_list}) {fill}")
    key_cols = ("k",) if key_kind == "text" else ("a", "b")

    def where(key: tuple[object, ...]) -> str:
        return " AND ".join(f"{c} = '{v}'" for c, v in zip(key_cols, key, strict=True))

    run(target_engine, f"DELETE FROM {q} WHERE {where(missing)}")
    run(target_engine, f"UPDATE {q} SET v = -1 WHERE {where(bad)}")
    run(
        target_engine,
        f"INSERT INTO {q} ({cols_list}) VALUES ({', '.join(repr(x) for x in extra)}, 0)",
    )
    result = diff_table(
        source_engine,
        target_engine,
        _pair(source_engine, target_engine, q),
        options=DiffOptions(threshold=20),
    )
    got = {(d.kind, d.key, d.columns) for d in result.differences}
    assert got == {
        (Kind.MISSING, missing, ()),
        (Kind.EXTRA, extra, ()),
        (Kind.MISMATCHED, bad, ("v",)),
    }


def test_window_narrows_and_defers_moved_rows(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    pair_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    q = pair_factory(unique_name("w"), "id int PRIMARY KEY, v text, updated_at timestamptz")
    fill = (
        f"INSERT INTO {q} (id, v, updated_at) SELECT g, 'v' || g, "
        "timestamptz '2026-01-01 00:00Z' + g * interval '1 second' FROM generate_series(1, 1200) g"
    )
    run(source_engine, fill)
    run(target_engine, fill)
    # Inside the window [00:05, 00:10) = ids 300..599: one missing, one mismatched.
    run(target_engine, f"DELETE FROM {q} WHERE id = 400")
    run(target_engine, f"UPDATE {q} SET v = 'bad' WHERE id = 450")
    # Outside the window: not reported for it.
    run(target_engine, f"DELETE FROM {q} WHERE id = 900")
    # Changed in the source after the window (target not yet caught up): deferred.
    run(source_engine, f"UPDATE {q} SET v = 'new', updated_at = '2026-01-01 01:00Z' WHERE id = 500")
    # Target still has an old version of a row the source changed inside the window.
    run(
        source_engine,
        f"UPDATE {q} SET v = 'moved in', updated_at = '2026-01-01 00:06Z' WHERE id = 1100",
    )

    pair = _pair(source_engine, target_engine, q, change_time_column="updated_at")
    window = Window(T0 + timedelta(minutes=5), T0 + timedelta(minutes=10))
    result = diff_table(source_engine, target_engine, pair, window, DiffOptions(threshold=8))
    got = {(d.kind, d.key, d.columns) for d in result.differences}
    assert got == {
        (Kind.MISSING, (400,), ()),
        (Kind.MISMATCHED, (450,), ("v",)),
        (Kind.MISMATCHED, (1100,), ("v", "updated_at")),
    }
    assert result.stats.deferred == 1
