"""Tables without a primary key, end to end through real Debezium (issue 9 item 4): REPLICA
IDENTITY FULL applies updates and deletes by full-row match; ``mode: append`` makes an insert-only
table (pgbench_history) flow; anything else is dead-lettered ``no_key``, never skipped."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from cdc_reconciler.stream import command
from tests.conftest import Connector, Services
from tests.helpers import count_records, rows, settings_for, wait_for
from tests.stream.pipeline import free_port, run_until_idle

pytestmark = pytest.mark.services

PGBIN = "/usr/lib/postgresql/15/bin"


def _env(prefix: str, pattern: str, group: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA__TOPIC_PATTERN": pattern,
        "KAFKA__TOPIC_PREFIX": prefix,
        "KAFKA__GROUP_ID": group,
        "KAFKA__BATCH_TIMEOUT_S": "0.3",
        "KAFKA__SESSION_TIMEOUT_MS": "6000",
        "METRICS__PORT": str(free_port()),
        **extra,
    }


def _all_rows(engine: sa.Engine, table: str, cols: str) -> list[tuple[Any, ...]]:
    return rows(engine, table, cols, order=cols)


def _drop(source: sa.Engine, target: sa.Engine, tables: list[str], groups: list[str]) -> None:
    for e in (source, target):
        with e.begin() as conn:
            for t in tables:
                conn.execute(sa.text(f"drop table if exists {t}"))
    with target.begin() as conn:
        for t in tables:
            conn.execute(sa.text("delete from cdcr.tombstones where table_name = :t"), {"t": t})
        conn.execute(
            sa.text("delete from cdcr.applied_offsets where consumer_group = any(:g)"),
            {"g": groups},
        )


def test_replica_identity_full_applies_updates_and_deletes_by_full_row_match(
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    debezium: Callable[..., Connector],
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = unique_name("kf")
    group = f"g_{t}"
    cols = "a, b, c::text"
    try:
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"create table public.{t} (a int, b text, c jsonb)"))
            conn.execute(sa.text(f"alter table public.{t} replica identity full"))
            # Duplicates on purpose: a keyless table may hold equal rows.
            conn.execute(
                sa.text(
                    f"insert into public.{t} values (1, 'x', '{{}}'), (1, 'x', '{{}}'), "
                    "(2, 'y', null), (3, 'z', '[1]')"
                )
            )
        c = debezium([f"public.{t}"])
        topic = c.topic(f"public.{t}")
        settings = settings_for(
            monkeypatch, **_env(c.topic_prefix, rf"^{c.topic_prefix}\.public\.{t}$", group)
        )
        command.sync_tables(settings, [f"public.{t}"])
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"insert into public.{t} values (4, 'w', null), (1, 'x', '{{}}')"))
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"update public.{t} set b = 'X' where a = 1"))  # 3 equal rows
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"delete from public.{t} where a = 3"))
            conn.execute(sa.text(f"update public.{t} set c = '{{\"k\": 1}}' where a = 2"))
        n = 4 + 2 + 3 + 2 + 1  # snapshot, inserts, 3 updates, delete + tombstone, update
        wait_for(f"{n} records", lambda: count_records(services.kafka_bootstrap, topic) >= n)

        summary = run_until_idle(settings).totals

        assert summary.consumed == n and summary.dead_lettered == 0
        assert summary.applied == n - 1 and summary.skipped_noop == 1  # the tombstone
        assert _all_rows(target_engine, f"public.{t}", cols) == _all_rows(
            source_engine, f"public.{t}", cols
        )
        with target_engine.connect() as conn:  # the target table has no key either
            pk = conn.execute(
                sa.text(
                    "select count(*) from pg_index where indrelid = cast(:t as regclass) "
                    "and indisprimary"
                ),
                {"t": f"public.{t}"},
            ).scalar()
        assert pk == 0

        # Redelivered from the start (a new group): Redis knows every change, nothing changes.
        again = run_until_idle(settings_for(monkeypatch, KAFKA__GROUP_ID=f"{group}_again")).totals
        assert again.consumed == n and again.skipped_duplicate == n - 1 and again.applied == 0
        assert _all_rows(target_engine, f"public.{t}", cols) == _all_rows(
            source_engine, f"public.{t}", cols
        )

        # A replay has no processed-change IDs: an insert whose row was updated since would come
        # back as a second row, so the keyless table's changes are skipped as stale, never
        # applied twice (found by a new-user trial: a replay doubled rows).
        from cdc_reconciler.stream.replay import replay

        now = datetime.now(UTC)
        result = replay(settings, now - timedelta(hours=1), now + timedelta(minutes=1))
        assert result.totals.consumed == n
        assert result.totals.applied == 0 and result.totals.skipped_stale == n - 1
        assert _all_rows(target_engine, f"public.{t}", cols) == _all_rows(
            source_engine, f"public.{t}", cols
        )
    finally:
        _drop(source_engine, target_engine, [f"public.{t}"], [group, f"{group}_again"])


def test_keyless_without_full_identity_is_dead_lettered_no_key_unless_mapped_append(
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    debezium: Callable[..., Connector],
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = unique_name("kl")
    groups = [f"g_{t}", f"g_{t}_append", f"g_{t}_replay"]
    try:
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"create table public.{t} (at timestamptz, msg text)"))
            conn.execute(
                sa.text(
                    f"insert into public.{t} select now(), 'm' || g from generate_series(1, 5) g"
                )
            )
        c = debezium([f"public.{t}"])
        topic = c.topic(f"public.{t}")
        pattern = rf"^{c.topic_prefix}\.public\.{t}$"
        settings = settings_for(monkeypatch, **_env(c.topic_prefix, pattern, groups[0]))
        command.sync_tables(settings, [f"public.{t}"])
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"insert into public.{t} values (now(), 'streamed')"))
        wait_for("6 records", lambda: count_records(services.kafka_bootstrap, topic) >= 6)

        refused = run_until_idle(settings).totals
        assert refused.consumed == 6 and refused.dead_lettered == 6 and refused.applied == 0
        with target_engine.connect() as conn:
            kinds = conn.execute(
                sa.text("select error_kind, error from cdcr.dead_letters where topic = :t"),
                {"t": topic},
            ).all()
        assert [k.error_kind for k in kinds] == ["no_key"] * 6
        assert "mode: append" in kinds[0].error and "REPLICA IDENTITY FULL" in kinds[0].error
        assert rows(target_engine, f"public.{t}") == []

        mapped = settings_for(
            monkeypatch,
            KAFKA__GROUP_ID=groups[1],
            TABLES=json.dumps({f"public.{t}": {"mode": "append"}}),
        )
        applied = run_until_idle(mapped).totals
        assert applied.consumed == 6 and applied.applied == 6 and applied.dead_lettered == 0
        assert _all_rows(target_engine, f"public.{t}", "at, msg") == _all_rows(
            source_engine, f"public.{t}", "at, msg"
        )

        # Redelivered with no dedup IDs at all (another Redis namespace): appends are guarded by
        # position and row, so no row doubles.
        replay = settings_for(
            monkeypatch, KAFKA__GROUP_ID=groups[2], REDIS__NAMESPACE=f"ns_{uuid.uuid4().hex[:8]}"
        )
        again = run_until_idle(replay).totals
        assert again.consumed == 6 and again.applied == 0 and again.skipped_stale == 6
        assert _all_rows(target_engine, f"public.{t}", "at, msg") == _all_rows(
            source_engine, f"public.{t}", "at, msg"
        )
    finally:
        with target_engine.begin() as conn:
            conn.execute(
                sa.text("delete from cdcr.dead_letters where topic like :t"), {"t": f"%.public.{t}"}
            )
        _drop(source_engine, target_engine, [f"public.{t}"], groups)


def test_pgbench_through_debezium_all_four_tables_equal_the_source(
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    debezium: Callable[..., Connector],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = f"pgb_{uuid.uuid4().hex[:8]}"
    tables = [f"{schema}.pgbench_{n}" for n in ("accounts", "branches", "tellers", "history")]
    group = f"g_{schema}"
    url = sa.engine.make_url(services.source_url)
    env = {
        **os.environ,
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "PGUSER": url.username or "postgres",
        "PGPASSWORD": url.password or "",
        "PGDATABASE": url.database or "source",
        "PGOPTIONS": f"-c search_path={schema}",
    }
    try:
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"create schema {schema}"))
        subprocess.run(
            [f"{PGBIN}/pgbench", "-i", "-s", "1", "-q"],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        c = debezium([rf"{schema}\.pgbench_.*"])
        settings = settings_for(
            monkeypatch,
            **_env(
                c.topic_prefix,
                rf"^{c.topic_prefix}\.{schema}\.pgbench_[a-z]+$",
                group,
                TABLES=json.dumps({f"{schema}.pgbench_history": {"mode": "append"}}),
            ),
        )
        command.sync_tables(settings, tables)
        out = subprocess.run(
            [f"{PGBIN}/pgbench", "-T", "10", "-c", "2", "-n"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        with source_engine.connect() as conn:
            tx = conn.execute(sa.text(f"select count(*) from {schema}.pgbench_history")).scalar()
        assert tx and tx > 0, out.stdout
        expect = {"accounts": 100_000 + tx, "branches": 1 + tx, "tellers": 10 + tx, "history": tx}
        for name, n in expect.items():
            topic = c.topic(f"{schema}.pgbench_{name}")

            def arrived(t: str = topic, n: int = n) -> bool:
                return count_records(services.kafka_bootstrap, t) >= n

            wait_for(f"{n} records in {topic}", arrived, timeout=300)

        summary = run_until_idle(settings, idle=5.0).totals

        assert summary.dead_lettered == 0
        assert summary.consumed == sum(expect.values())
        for tbl, cols in [
            (tables[0], "aid, bid, abalance, filler"),
            (tables[1], "bid, bbalance, filler"),
            (tables[2], "tid, bid, tbalance, filler"),
            (tables[3], "tid, bid, aid, delta, mtime, filler"),
        ]:
            assert _all_rows(target_engine, tbl, cols) == _all_rows(source_engine, tbl, cols), tbl
        print(f"pgbench: {tx} transactions, {summary.consumed} records applied equal to source")
    finally:
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"drop schema if exists {schema} cascade"))
        with target_engine.begin() as conn:
            conn.execute(sa.text(f"drop schema if exists {schema} cascade"))
            conn.execute(
                sa.text("delete from cdcr.tombstones where table_name like :s"),
                {"s": f"{schema}.%"},
            )
            conn.execute(
                sa.text("delete from cdcr.applied_offsets where consumer_group = :g"), {"g": group}
            )
