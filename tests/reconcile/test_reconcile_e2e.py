"""The reconciler on a real pipeline (PostgreSQL -> Debezium -> Kafka -> cdcr -> PostgreSQL):
damage in the target is found exactly, repaired by replaying Kafka where Kafka still has the
events, and by re-reading the source where it does not."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from cdc_reconciler.cli import app
from tests.conftest import Services
from tests.helpers import rows
from tests.stream.pipeline import (
    COLUMNS,
    TRAFFIC_RECORDS,
    Pipeline,
    expected_records,
    run_until_idle,
    source_traffic,
)

pytestmark = pytest.mark.services


def reconcile(pipeline: Pipeline, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        app, ["reconcile", "--table", pipeline.qualified, "--once", "--json", *args]
    )
    assert result.exit_code in (0, 1), result.output
    try:
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc
    except json.JSONDecodeError:
        pytest.fail(f"not JSON (exit {result.exit_code}): {result.output[-3000:]!r}")


def differences(report: dict[str, Any]) -> set[tuple[str, str]]:
    out = set()
    for table in report["tables"]:
        for w in table["windows"]:
            for d in w.get("differences", []):
                out.add((d["kind"], json.dumps(d["key"])))
    return out


def actions(target_engine: sa.Engine, table: str) -> dict[str, str]:
    with target_engine.connect() as conn:
        return {
            r.key: r.action
            for r in conn.execute(
                sa.text("select key, action from cdcr.discrepancies where table_name = :t"),
                {"t": table},
            )
        }


@pytest.fixture()
def applied(
    pipeline: Pipeline,
    services: Services,
    source_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Pipeline]:
    monkeypatch.setenv(
        "CDCR_TABLES", json.dumps({pipeline.qualified: {"change_time_column": "created"}})
    )
    # One-second windows without grace: the windows holding this test's changes close as soon as
    # the consumer is idle at the log end, instead of at the next 5-minute boundary.
    monkeypatch.setenv("CDCR_RECONCILE__WINDOW_S", "1")
    monkeypatch.setenv("CDCR_RECONCILE__GRACE_S", "0")
    source_traffic(source_engine, pipeline.table)
    expected_records(pipeline, services, TRAFFIC_RECORDS)
    run_until_idle(pipeline.settings)
    yield pipeline
    with sa.create_engine(services.target_url).begin() as conn:  # leave nothing behind
        for stmt in (
            "DELETE FROM cdcr.discrepancies WHERE table_name = :t",
            "DELETE FROM cdcr.extra_rows_archive WHERE table_name = :t",
            "DELETE FROM cdcr.reconcile_runs WHERE table_name = :t",
            "DELETE FROM cdcr.deferred_keys WHERE table_name = :t",
            "DELETE FROM cdcr.watermarks WHERE table_name = :t",
        ):
            conn.execute(sa.text(stmt), {"t": pipeline.qualified})
        conn.execute(
            sa.text("DELETE FROM cdcr.applied_offsets WHERE consumer_group = :g"),
            {"g": pipeline.settings.kafka.group_id},
        )


def test_damage_is_reported_exactly_then_repaired_by_replay_and_source(
    applied: Pipeline, target_engine: sa.Engine, source_engine: sa.Engine
) -> None:
    p = applied
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"delete from {p.qualified} where id in (21, 22)"))
        conn.execute(sa.text(f"update {p.qualified} set name = 'corrupt' where id = 23"))
        conn.execute(
            sa.text(
                f"insert into {p.qualified} (id, name, created, _cdc_pos, _cdc_ts) "
                "values (5000, 'extra', now(), 1, now())"
            )
        )
    damaged = rows(target_engine, p.qualified, COLUMNS)
    time.sleep(1.5)  # let the window holding the extra row close

    dry = reconcile(p, "--dry-run")
    assert differences(dry) == {
        ("missing", "[21]"),
        ("missing", "[22]"),
        ("mismatched", "[23]"),
        ("extra", "[5000]"),
    }
    assert rows(target_engine, p.qualified, COLUMNS) == damaged

    reconcile(p)
    source = rows(source_engine, p.qualified, COLUMNS)
    target = rows(target_engine, p.qualified, COLUMNS)
    assert [r for r in target if r[0] != 5000] == source  # repaired
    assert any(r[0] == 5000 for r in target)  # the extra row is only reported
    acts = actions(target_engine, p.qualified)
    # Kafka still had the inserts of 21 and 22; 23's events are all older than its row, so the
    # source re-read fixed it.
    assert acts == {
        "[21]": "replayed",
        "[22]": "replayed",
        "[23]": "upserted",
        "[5000]": "reported",
    }


def test_repair_falls_back_to_the_source_when_kafka_lost_the_events(
    applied: Pipeline, services: Services, target_engine: sa.Engine, source_engine: sa.Engine
) -> None:
    p = applied
    admin = AdminClient({"bootstrap.servers": services.kafka_bootstrap})
    # Retention passed: every record of the topic is gone.
    end = TopicPartition(p.topic, 0, -1)  # -1: up to the high watermark
    for fut in admin.delete_records([end]).values():
        fut.result(30)
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"delete from {p.qualified} where id in (24, 25)"))
    time.sleep(1.5)

    reconcile(p)

    assert rows(target_engine, p.qualified, COLUMNS) == rows(source_engine, p.qualified, COLUMNS)
    assert actions(target_engine, p.qualified) == {"[24]": "upserted", "[25]": "upserted"}


def test_reverify_finds_a_row_damaged_after_its_window_was_verified(
    applied: Pipeline, target_engine: sa.Engine, source_engine: sa.Engine
) -> None:
    p = applied
    first = reconcile(p)
    assert differences(first) == set()
    with target_engine.connect() as conn:
        mark = conn.execute(
            sa.text(
                "select reconciled_through, state, updated_at from cdcr.watermarks "
                "where table_name = :t"
            ),
            {"t": p.qualified},
        ).one()
    assert mark.reconciled_through is not None
    with target_engine.begin() as conn:  # damaged later, behind the watermark
        conn.execute(sa.text(f"update {p.qualified} set name = 'restored-wrong' where id = 23"))
        conn.execute(sa.text(f"delete from {p.qualified} where id = 24"))

    assert differences(reconcile(p)) == set()  # incremental reconcile never looks back
    with target_engine.connect() as conn:
        mark = conn.execute(
            sa.text(
                "select reconciled_through, state, updated_at from cdcr.watermarks "
                "where table_name = :t"
            ),
            {"t": p.qualified},
        ).one()
    dry = reconcile(p, "--reverify", "--since", "1h", "--dry-run")
    assert differences(dry) == {("mismatched", "[23]"), ("missing", "[24]")}
    assert dry["found_in_history"] == 2

    again = reconcile(p, "--reverify", "--since", "1h")
    assert again["found_in_history"] == 2 and again["tables"][0]["reverify"] is True
    assert rows(target_engine, p.qualified, COLUMNS) == rows(source_engine, p.qualified, COLUMNS)
    with target_engine.connect() as conn:
        assert (
            conn.execute(
                sa.text(
                    "select reconciled_through, state, updated_at from cdcr.watermarks "
                    "where table_name = :t"
                ),
                {"t": p.qualified},
            ).one()
            == mark
        )
    acts = actions(target_engine, p.qualified)
    assert set(acts) == {"[23]", "[24]"} and acts["[24]"] in ("replayed", "upserted")
