"""Values the target rejects, end to end (real PostgreSQL source -> Debezium -> Kafka -> the engine
of `cdcr run` -> real PostgreSQL target): each rejected row is dead-lettered with its SQLSTATE,
table, key and column, and every other record of the partition is applied (issue 16 item 1)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.write import write_batch as real_write
from cdc_reconciler.stream import engine as engine_module
from tests.conftest import Connector, Services
from tests.helpers import count_records, read_topic, rows, settings_for, wait_for
from tests.stream.pipeline import applied_counts, free_port, run_until_idle

pytestmark = pytest.mark.services

COLS = "id, short, num::text, req, idx"
GOOD = 2000  # rows around the bad ones, so row-by-row isolation would cost thousands of writes


@pytest.fixture()
def strict_target(
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    debezium: Callable[..., Connector],
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """A source table of text columns and a target table narrower than it: varchar(5), integer,
    NOT NULL, and a btree index on a text column."""
    table = unique_name("rej")
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"create table public.{table} (id int primary key, short text, "
                "num text, req text, idx text)"
            )
        )
    with target_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"create table public.{table} (id int primary key, short varchar(5), num integer, "
                "req text not null, idx text, _cdc_pos numeric(40,0) not null, "
                "_cdc_ts timestamptz not null)"
            )
        )
        conn.execute(sa.text(f"create index {table}_idx on public.{table} (idx)"))
    connector = debezium([f"public.{table}"])
    env = {
        "KAFKA__TOPIC_PATTERN": rf"^{connector.topic_prefix}\.public\.{table}$",
        "KAFKA__TOPIC_PREFIX": connector.topic_prefix,
        "KAFKA__GROUP_ID": f"g_{table}",
        "KAFKA__BATCH_TIMEOUT_S": "0.5",
        "KAFKA__SESSION_TIMEOUT_MS": "6000",
        "METRICS__PORT": str(free_port()),
    }
    settings = settings_for(monkeypatch, **env)
    yield {
        "table": table,
        "topic": connector.topic(f"public.{table}"),
        "prefix": connector.topic_prefix,
        "settings": settings,
        "group": f"g_{table}",
    }
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists public.{table}"))
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists public.{table}"))
        conn.execute(
            sa.text("delete from cdcr.tombstones where table_name = :t"), {"t": f"public.{table}"}
        )
        conn.execute(
            sa.text("delete from cdcr.dead_letters where topic = :t"),
            {"t": connector.topic(f"public.{table}")},
        )
        conn.execute(
            sa.text("delete from cdcr.applied_offsets where consumer_group = :g"),
            {"g": f"g_{table}"},
        )


def test_rejected_values_are_dead_lettered_and_every_later_record_applied(
    strict_target: dict[str, Any],
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t, topic = strict_target["table"], strict_target["topic"]
    big = secrets.token_hex(4000)  # 8000 incompressible bytes: over the btree limit (2704)
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"insert into public.{t} select g, 'ok', g::text, 'r', 'i' || g "
                f"from generate_series(1, {GOOD // 2}) g"
            )
        )
    with source_engine.begin() as conn:
        for stmt, params in [
            (f"insert into public.{t} values (9001, 'toolong', '1', 'r', 'a')", {}),  # 22001
            (f"insert into public.{t} values (9002, 'ok', 'abc', 'r', 'b')", {}),  # 22P02
            (f"insert into public.{t} values (9003, 'ok', '3', null, 'c')", {}),  # 23502
            (f"insert into public.{t} values (9004, 'ok', '4', 'r', :big)", {"big": big}),  # 54000
        ]:
            conn.execute(sa.text(stmt), params)
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"insert into public.{t} select g, 'ok', g::text, 'r', 'i' || g "
                f"from generate_series({GOOD // 2 + 1}, {GOOD}) g"
            )
        )
        conn.execute(sa.text(f"update public.{t} set short = 'upd' where id % 10 = 0"))
        conn.execute(sa.text(f"delete from public.{t} where id in (7, 1500)"))
    n_records = GOOD + 4 + GOOD // 10 + 2 * 2  # inserts, updates, 2 deletes + 2 tombstones
    wait_for(
        f"{n_records} records", lambda: count_records(services.kafka_bootstrap, topic) >= n_records
    )

    calls = {"n": 0}

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return real_write(*args, **kwargs)

    monkeypatch.setattr(engine_module, "write_batch", counting)
    summary = run_until_idle(strict_target["settings"])

    t_ = summary.totals
    assert t_.consumed == n_records
    assert t_.dead_lettered == 4
    assert t_.consumed == (
        t_.applied + t_.skipped_duplicate + t_.skipped_stale + t_.dead_lettered + t_.skipped_noop
    )
    db = applied_counts(target_engine, strict_target["group"])
    assert db["consumed"] == n_records and db["dlq"] == 4 and db["next_offset"] == n_records
    # Isolation bisects: a few dozen writes for 4 bad rows among ~2,000, not one per row.
    assert calls["n"] < 200, calls
    print(f"write_batch calls for {n_records} records with 4 rejected: {calls['n']}")

    # Everything but the four rejected rows is in the target, as in the source.
    src = rows(source_engine, f"public.{t}", COLS)
    assert rows(target_engine, f"public.{t}", COLS) == [r for r in src if r[0] < 9001]
    with target_engine.connect() as conn:
        dl = {
            r.key_id: r
            for r in conn.execute(
                sa.text(
                    "select (convert_from(key, 'UTF8')::jsonb #>> '{payload,id}')::int key_id, "
                    "error_kind, error from cdcr.dead_letters where topic = :t"
                ),
                {"t": topic},
            )
        }
    assert {k: r.error_kind for k, r in dl.items()} == {
        9001: "apply_rejected:22001",
        9002: "apply_rejected:22P02",
        9003: "apply_rejected:23502",
        9004: "apply_rejected:54000",
    }
    for k, col in [(9001, "short"), (9002, "num"), (9003, "req")]:
        err = dl[k].error
        assert f"table public.{t}" in err and f"key [{k}]" in err and f"column {col}" in err, err
    assert "SQLSTATE 54000" in dl[9004].error and "index row" in dl[9004].error
    dlq = [m for m in read_topic(services.kafka_bootstrap, f"{strict_target['prefix']}.cdcr.dlq")]
    assert sorted(dict(m.headers())["cdcr.error.kind"].decode() for m in dlq) == [
        "apply_rejected:22001",
        "apply_rejected:22P02",
        "apply_rejected:23502",
        "apply_rejected:54000",
    ]

    # The source fixes the rows: the fixes apply like any change, and the tables are equal.
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"update public.{t} set short = 'ok', num = '9', req = 'r', "
                "idx = 'small' where id > 9000"
            )
        )
    wait_for("the fixes", lambda: count_records(services.kafka_bootstrap, topic) >= n_records + 4)
    second = run_until_idle(strict_target["settings"]).totals
    assert second.dead_lettered == 0 and second.applied == 4
    assert rows(target_engine, f"public.{t}", COLS) == rows(source_engine, f"public.{t}", COLS)


class _PgError(Exception):
    def __init__(self, pgcode: str | None) -> None:
        super().__init__(pgcode or "connection lost")
        self.pgcode = pgcode


@pytest.mark.parametrize(
    ("pgcode", "rejected"),
    [
        ("22001", True),
        ("22P02", True),
        ("22003", True),
        ("23502", True),
        ("23505", True),
        ("23514", True),
        ("44000", True),
        ("54000", True),
        ("42804", True),
        (None, False),
        ("08006", False),
        ("57P01", False),
        ("40001", False),
        ("40P01", False),
        ("53100", False),
        ("42P01", False),
        ("42703", False),
        ("42501", False),
    ],
)
def test_target_errors_are_classified_by_sqlstate(pgcode: str | None, rejected: bool) -> None:
    exc = sa.exc.DBAPIError("COPY", None, _PgError(pgcode))
    assert engine_module.is_rejected(exc) is rejected
    if rejected:
        assert engine_module.rejected_kind(exc) == f"apply_rejected:{pgcode}"
