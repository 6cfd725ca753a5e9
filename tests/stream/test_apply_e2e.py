"""The apply engine end to end: real PostgreSQL source -> real Debezium -> real Kafka ->
cdcr -> real PostgreSQL target, with real Redis. Each test owns its table, connector, topics and
consumer group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from confluent_kafka import Producer

from cdc_reconciler.stream import command
from tests.conftest import Connector, Services
from tests.helpers import count_records, read_topic, rows, settings_for, wait_for
from tests.stream.pipeline import (
    COLUMNS,
    TRAFFIC_RECORDS,
    Pipeline,
    applied_counts,
    expected_records,
    free_port,
    run_until_idle,
    source_traffic,
    target_matches_source,
)

pytestmark = pytest.mark.services


def test_stream_applies_every_change_and_counts_add_up(
    pipeline: Pipeline, services: Services, source_engine: sa.Engine, target_engine: sa.Engine
) -> None:
    source_traffic(source_engine, pipeline.table)
    expected_records(pipeline, services, TRAFFIC_RECORDS)

    summary = run_until_idle(pipeline.settings)

    target_matches_source(pipeline, source_engine, target_engine)
    t = summary.totals
    assert t.consumed == count_records(services.kafka_bootstrap, pipeline.topic)
    assert t.consumed == (
        t.applied + t.skipped_duplicate + t.skipped_stale + t.dead_lettered + t.skipped_noop
    )
    assert t.dead_lettered == 0
    assert t.skipped_noop == 4  # the tombstones after the 3 deletes and the key change
    db = applied_counts(target_engine, f"g_{pipeline.table}")
    assert db["consumed"] == t.consumed and db["applied"] == t.applied
    assert db["next_offset"] == t.consumed  # one partition: next offset = records consumed
    # The TOASTed column survived the updates that did not touch it.
    with target_engine.connect() as conn:
        big = conn.execute(sa.text(f"select length(big) from {pipeline.qualified} where id = 21"))
        assert big.scalar() == 5000
        amount = conn.execute(sa.text(f"select amount from {pipeline.qualified} where id = 2"))
        assert amount.scalar() == Decimal("4.00")  # snapshot 2 * 1.5, then +1 (id % 7 == 2)


def test_redelivered_and_reordered_events_leave_the_target_unchanged(
    pipeline: Pipeline, services: Services, source_engine: sa.Engine, target_engine: sa.Engine
) -> None:
    source_traffic(source_engine, pipeline.table)
    expected_records(pipeline, services, TRAFFIC_RECORDS)
    run_until_idle(pipeline.settings)
    target_matches_source(pipeline, source_engine, target_engine)
    before = rows(target_engine, pipeline.qualified, COLUMNS + ", _cdc_pos")

    # Re-produce an old slice (the snapshot and the first inserts) reversed, after newer
    # changes were applied: first with Redis remembering them, then with Redis flushed.
    old = read_topic(services.kafka_bootstrap, pipeline.topic)[:60]
    producer = Producer({"bootstrap.servers": services.kafka_bootstrap})
    for m in reversed(old):
        producer.produce(pipeline.topic, key=m.key(), value=m.value())
    producer.flush(30)
    first = run_until_idle(pipeline.settings).totals
    assert first.consumed == 60 and first.skipped_duplicate == 60 and first.applied == 0

    redis.Redis.from_url(services.redis_url).flushdb()
    for m in old:
        producer.produce(pipeline.topic, key=m.key(), value=m.value())
    producer.flush(30)
    second = run_until_idle(pipeline.settings).totals
    assert second.consumed == 60 and second.applied == 0
    assert second.skipped_stale + second.skipped_duplicate == 60
    assert rows(target_engine, pipeline.qualified, COLUMNS + ", _cdc_pos") == before


def test_poison_message_is_dead_lettered_and_the_rest_applied(
    pipeline: Pipeline, services: Services, source_engine: sa.Engine, target_engine: sa.Engine
) -> None:
    expected_records(pipeline, services, 20)
    producer = Producer({"bootstrap.servers": services.kafka_bootstrap})
    producer.produce(pipeline.topic, key=b'{"id":999}', value=b'{"not debezium": true')
    producer.flush(30)
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(f"insert into public.{pipeline.table} (id, name) values (500, 'after')")
        )
    expected_records(pipeline, services, 22)

    summary = run_until_idle(pipeline.settings)

    assert summary.totals.dead_lettered == 1
    target_matches_source(pipeline, source_engine, target_engine)
    with target_engine.connect() as conn:
        dl = conn.execute(
            sa.text("select error_kind, error, value from cdcr.dead_letters where topic = :t"),
            {"t": pipeline.topic},
        ).all()
    assert len(dl) == 1 and dl[0].error_kind == "decode:not_json"
    assert bytes(dl[0].value) == b'{"not debezium": true'
    dlq = read_topic(services.kafka_bootstrap, f"{pipeline.prefix}.cdcr.dlq")
    assert len(dlq) == 1 and dlq[0].value() == b'{"not debezium": true'
    assert dict(dlq[0].headers())["cdcr.error.kind"] == b"decode:not_json"


def test_without_redis_the_pipeline_stays_correct(
    pipeline: Pipeline,
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens on this port: every Redis call fails fast.
    settings = settings_for(monkeypatch, REDIS__URL=f"redis://127.0.0.1:{free_port()}/0")
    source_traffic(source_engine, pipeline.table)
    expected_records(pipeline, services, TRAFFIC_RECORDS)
    summary = run_until_idle(settings)
    target_matches_source(pipeline, source_engine, target_engine)
    assert summary.totals.consumed > 0 and summary.totals.dead_lettered == 0


def test_kill_9_mid_stream_then_restart_converges(
    pipeline: Pipeline, services: Services, source_engine: sa.Engine, target_engine: sa.Engine
) -> None:
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"insert into public.{pipeline.table} select g, 'bulk' || g, g, now(), '{{}}', 'b', "
                "false from generate_series(100, 20099) g"
            )
        )
    expected_records(pipeline, services, 20020)
    env = {
        **os.environ,
        **{f"CDCR_{k}": v for k, v in pipeline.env.items()},
        "CDCR_KAFKA__BATCH_SIZE": "500",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc_reconciler", "run", "--no-metrics"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    group = f"g_{pipeline.table}"
    try:
        wait_for(
            "some batches applied",
            lambda: (
                proc.poll() is not None or applied_counts(target_engine, group)["consumed"] > 2000
            ),
            timeout=120,
            every=0.05,
        )
        assert proc.poll() is None, f"cdcr run exited early with {proc.returncode}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    partial = applied_counts(target_engine, group)["consumed"]
    assert partial < 20020, "killed too late to test anything"

    run_until_idle(pipeline.settings)

    target_matches_source(pipeline, source_engine, target_engine)
    c = applied_counts(target_engine, group)
    assert c["next_offset"] == count_records(services.kafka_bootstrap, pipeline.topic)
    assert c["consumed"] == c["applied"] + c["dup"] + c["stale"] + c["dlq"] + c["noop"]


def test_sigterm_stops_cleanly_and_commits_only_what_was_applied(
    pipeline: Pipeline, services: Services, target_engine: sa.Engine
) -> None:
    expected_records(pipeline, services, 20)
    stop = threading.Event()
    result: dict[str, Any] = {}
    t = threading.Thread(
        target=lambda: result.update(
            s=command.run(pipeline.settings, serve_metrics=False, stop=stop)
        )
    )
    t.start()
    wait_for(
        "snapshot applied",
        lambda: applied_counts(target_engine, f"g_{pipeline.table}")["consumed"] >= 20,
    )
    stop.set()
    t.join(30)
    assert not t.is_alive()
    assert result["s"].stopped_by == "signal"
    assert rows(target_engine, pipeline.qualified, "count(*)") == [(20,)]


def test_new_source_column_is_added_to_the_target(
    pipeline: Pipeline, services: Services, source_engine: sa.Engine, target_engine: sa.Engine
) -> None:
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"alter table public.{pipeline.table} add column region text"))
        conn.execute(
            sa.text(
                f"insert into public.{pipeline.table} (id, name, region) values (700, 'r', 'emea')"
            )
        )
    expected_records(pipeline, services, 21)
    summary = run_until_idle(pipeline.settings)
    assert summary.totals.dead_lettered == 0
    assert rows(target_engine, pipeline.qualified, "id, region", "id desc")[0] == (700, "emea")
    target_matches_source(pipeline, source_engine, target_engine)


def test_source_truncate_empties_the_target(
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    debezium: Callable[..., Connector],
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = unique_name("tr")
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"create table public.{table} (id int primary key, v text)"))
        conn.execute(
            sa.text(f"insert into public.{table} select g, 'v' from generate_series(1, 5) g")
        )
    # Debezium skips truncates unless told otherwise.
    connector = debezium([f"public.{table}"], extra={"skipped.operations": "none"})
    settings = settings_for(
        monkeypatch,
        KAFKA__TOPIC_PATTERN=rf"^{connector.topic_prefix}\.public\.{table}$",
        KAFKA__TOPIC_PREFIX=connector.topic_prefix,
        KAFKA__GROUP_ID=f"g_{table}",
        KAFKA__BATCH_TIMEOUT_S="0.2",
    )
    command.sync_tables(settings, [f"public.{table}"])
    topic = connector.topic(f"public.{table}")
    wait_for("snapshot", lambda: count_records(services.kafka_bootstrap, topic) >= 5)
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"truncate public.{table}"))
        conn.execute(sa.text(f"insert into public.{table} values (9, 'after')"))
    wait_for("truncate and insert", lambda: count_records(services.kafka_bootstrap, topic) >= 7)
    try:
        summary = run_until_idle(settings)
        assert summary.totals.dead_lettered == 0
        assert rows(target_engine, f"public.{table}", "id, v") == [(9, "after")]
    finally:
        with target_engine.begin() as conn:
            conn.execute(sa.text(f"drop table if exists public.{table}"))
            conn.execute(
                sa.text("delete from cdcr.tombstones where table_name = :t"),
                {"t": f"public.{table}"},
            )
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"drop table if exists public.{table}"))
