"""Fixtures of the apply-engine service tests."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cdc_reconciler.stream import command
from tests.helpers import settings_for
from tests.stream.pipeline import Pipeline, free_port


@pytest.fixture()
def pipeline(services, source_engine, target_engine, debezium, unique_name, monkeypatch) -> Pipeline:
    table = unique_name("t")
    with source_engine.begin() as conn:
        conn.execute(sa.text(
            f"create table public.{table} (id int primary key, name text not null, "
            "amount numeric(12,2), created timestamptz, payload jsonb, big text, flag boolean)"
        ))
        # Rows present before the connector starts arrive as snapshot reads (op r).
        conn.execute(sa.text(
            f"insert into public.{table} select g, 'snap' || g, g * 1.5, "
            "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', "
            "jsonb_build_object('g', g), repeat('x', 3000), g % 2 = 0 from generate_series(1, 20) g"
        ))
    connector = debezium([f"public.{table}"])
    env = {
        "KAFKA__TOPIC_PATTERN": rf"^{connector.topic_prefix}\.public\.{table}$",
        "KAFKA__TOPIC_PREFIX": connector.topic_prefix,
        "KAFKA__GROUP_ID": f"g_{table}",
        "KAFKA__BATCH_TIMEOUT_S": "0.2",
        "KAFKA__SESSION_TIMEOUT_MS": "6000",
        "METRICS__PORT": str(free_port()),
    }
    settings = settings_for(monkeypatch, **env)
    command.sync_tables(settings, [f"public.{table}"])
    yield Pipeline(table, connector.topic(f"public.{table}"), connector.topic_prefix, settings, env)
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists public.{table}"))
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists public.{table}"))
        conn.execute(sa.text("delete from cdcr.tombstones where table_name = :t"),
                     {"t": f"public.{table}"})


