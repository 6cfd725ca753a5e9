"""TOASTed values with no target row to keep them from, end to end through real Debezium (issue 9
item 3): with REPLICA IDENTITY DEFAULT a primary-key change arrives as delete + create whose
unchanged TOASTed columns are placeholders; the engine re-reads them from the source."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from cdc_reconciler.stream import command
from cdc_reconciler.stream.engine import ApplyEngine
from tests.conftest import Connector, Services
from tests.helpers import count_records, read_topic, rows, settings_for, value_json, wait_for
from tests.stream.pipeline import free_port, run_until_idle

pytestmark = pytest.mark.services

COLS = "id, name, md5(big), length(big), md5(arr::text)"
N = 50


def _big() -> str:
    return secrets.token_urlsafe(9600)  # 12,800 random characters: incompressible, TOASTed


def _arr() -> list[str]:
    return [secrets.token_urlsafe(96) for _ in range(100)]  # ~12.8 KB of random text


@pytest.fixture()
def toasty(
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    debezium: Callable[..., Connector],
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    table = unique_name("toast")
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"create table public.{table} (id int primary key, name text, big text, arr text[])"
            )
        )  # REPLICA IDENTITY DEFAULT
        conn.execute(
            sa.text(
                f"alter table public.{table} alter big set storage external, "
                "alter arr set storage external"
            )
        )
        conn.execute(
            sa.text(f"insert into public.{table} values (:i, :n, :b, :a)"),
            [{"i": i, "n": f"n{i}", "b": _big(), "a": _arr()} for i in range(1, N + 1)],
        )
    connector = debezium([f"public.{table}"])
    env = {
        "KAFKA__TOPIC_PATTERN": rf"^{connector.topic_prefix}\.public\.{table}$",
        "KAFKA__TOPIC_PREFIX": connector.topic_prefix,
        "KAFKA__GROUP_ID": f"g_{table}",
        "KAFKA__BATCH_TIMEOUT_S": "0.3",
        "KAFKA__SESSION_TIMEOUT_MS": "6000",
        "METRICS__PORT": str(free_port()),
    }
    settings = settings_for(monkeypatch, **env)
    command.sync_tables(settings, [f"public.{table}"])
    engines: list[ApplyEngine] = []

    def recorded(**kw: Any) -> ApplyEngine:
        engine = ApplyEngine(**kw)
        engines.append(engine)
        return engine

    monkeypatch.setattr(command, "ApplyEngine", recorded)
    yield {
        "table": table,
        "topic": connector.topic(f"public.{table}"),
        "env": env,
        "settings": settings,
        "engines": engines,
    }
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists public.{table}"))
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists public.{table}"))
        for t in ("tombstones",):
            conn.execute(
                sa.text(f"delete from cdcr.{t} where table_name = :t"), {"t": f"public.{table}"}
            )
        conn.execute(
            sa.text("delete from cdcr.reconcile_runs where table_name = :t"),
            {"t": f"public.{table}"},
        )
        conn.execute(
            sa.text("delete from cdcr.applied_offsets where consumer_group = :g"),
            {"g": f"g_{table}"},
        )


def _equal(source: sa.Engine, target: sa.Engine, table: str) -> None:
    src = rows(source, f"public.{table}", COLS)
    assert rows(target, f"public.{table}", COLS) == src
    with target.connect() as conn:
        nulls = conn.execute(
            sa.text(f"select count(*) from public.{table} where big is null or arr is null")
        ).scalar()
    assert nulls == 0


def test_key_changes_and_first_sight_refetch_toasted_values_from_the_source(
    toasty: dict[str, Any],
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t, topic = toasty["table"], toasty["topic"]
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"update public.{t} set id = id + 1000 where id <= 40"))
    with source_engine.begin() as conn:  # rows exist in the target: their values are kept
        conn.execute(
            sa.text(f"update public.{t} set name = name || '-u' where id between 41 and 44")
        )
    n = N + 40 * 3 + 4  # snapshot, (delete + tombstone + create) per key change, updates
    wait_for(f"{n} records", lambda: count_records(services.kafka_bootstrap, topic) >= n)
    # The key changes' creates do carry the placeholders (else this test proves nothing).
    creates = [
        v["payload"]["after"]
        for v in map(value_json, read_topic(services.kafka_bootstrap, topic))
        if v is not None and v["payload"]["op"] == "c"
    ]
    assert len(creates) == 40
    assert all(
        a["big"] == "__debezium_unavailable_value" and a["arr"] == ["__debezium_unavailable_value"]
        for a in creates
    )

    first = run_until_idle(toasty["settings"]).totals
    assert first.consumed == n and first.dead_lettered == 0
    assert first.consumed == (
        first.applied + first.skipped_duplicate + first.skipped_stale + first.skipped_noop
    )
    _equal(source_engine, target_engine, t)
    engine = toasty["engines"][-1]
    assert engine.toast_refetched == 40 and engine.toast_missing == 0

    # First sight of a key mid-stream: its target row is gone (deleted by hand), then an update
    # that leaves the TOASTed columns out.
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"delete from public.{t} where id = 45"))
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"update public.{t} set name = 'first-sight' where id = 45"))
    wait_for("the update", lambda: count_records(services.kafka_bootstrap, topic) >= n + 1)
    second = run_until_idle(toasty["settings"]).totals
    assert second.consumed == 1 and second.applied == 1
    _equal(source_engine, target_engine, t)
    assert toasty["engines"][-1].toast_refetched == 1


def test_a_toasted_event_whose_source_row_is_gone_becomes_an_open_discrepancy(
    toasty: dict[str, Any],
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t, topic = toasty["table"], toasty["topic"]
    wait_for("the snapshot", lambda: count_records(services.kafka_bootstrap, topic) >= N)
    run_until_idle(toasty["settings"])
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"delete from public.{t} where id = 46"))
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"update public.{t} set name = 'gone-soon' where id = 46"))
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"delete from public.{t} where id = 46"))
    wait_for(
        "update, delete, tombstone", lambda: count_records(services.kafka_bootstrap, topic) >= N + 3
    )
    # One record per batch, so the update is applied before the delete arrives.
    settings = settings_for(monkeypatch, KAFKA__BATCH_SIZE="1")
    totals = run_until_idle(settings).totals
    assert totals.consumed == 3 and totals.dead_lettered == 0
    assert totals.skipped_stale == 1  # the update: its source row is gone, no NULL written
    engine = toasty["engines"][-1]
    assert engine.toast_missing == 1 and engine.toast_refetched == 0
    _equal(source_engine, target_engine, t)
    with target_engine.connect() as conn:
        d = conn.execute(
            sa.text(
                "select d.key, d.kind, d.columns, d.action, d.review_state from cdcr.discrepancies d "
                "where d.table_name = :t"
            ),
            {"t": f"public.{t}"},
        ).all()
    assert [tuple(r) for r in d] == [
        ("[46]", "missing", ["big", "arr"], "toast_source_missing", "open")
    ]
