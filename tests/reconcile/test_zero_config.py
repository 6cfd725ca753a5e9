"""Zero-configuration reconcile on a real pipeline (PostgreSQL -> Debezium -> Kafka -> cdcr ->
PostgreSQL): the consumer is configured with a topic pattern only (the topic prefix left at its
default, which matches no topic), and ``cdcr reconcile --once`` with no ``--table`` and no YAML
finds the table the group applies, verifies it, and reports planted damage exactly."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from cdc_reconciler.config import Settings
from tests.conftest import Services
from tests.stream.pipeline import (
    TRAFFIC_RECORDS,
    Pipeline,
    expected_records,
    run_until_idle,
    source_traffic,
)

from .helpers import cli, create_pair, drop_pair

pytestmark = pytest.mark.services


@pytest.fixture()
def pattern_only(
    pipeline: Pipeline,
    services: Services,
    source_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Pipeline]:
    """The pipeline applied by a consumer that knows only CDCR_KAFKA__TOPIC_PATTERN."""
    monkeypatch.delenv("CDCR_KAFKA__TOPIC_PREFIX", raising=False)
    monkeypatch.delenv("CDCR_TABLES", raising=False)
    monkeypatch.delenv("CDCR_CONFIG_FILE", raising=False)
    settings = Settings()
    assert settings.kafka.topic_prefix == "cdc"  # the default: not the connector's prefix
    source_traffic(source_engine, pipeline.table)
    expected_records(pipeline, services, TRAFFIC_RECORDS)
    run_until_idle(settings)
    yield pipeline
    with sa.create_engine(services.target_url).begin() as conn:
        for stmt in (
            "DELETE FROM cdcr.discrepancies WHERE table_name = :t",
            "DELETE FROM cdcr.extra_rows_archive WHERE table_name = :t",
            "DELETE FROM cdcr.deferred_keys WHERE table_name = :t",
            "DELETE FROM cdcr.reconcile_runs WHERE table_name = :t",
            "DELETE FROM cdcr.watermarks WHERE table_name = :t",
        ):
            conn.execute(sa.text(stmt), {"t": pipeline.qualified})
        conn.execute(
            sa.text("DELETE FROM cdcr.applied_offsets WHERE consumer_group = :g"),
            {"g": settings.kafka.group_id},
        )


def test_reconcile_with_no_table_finds_what_the_group_applies(
    pattern_only: Pipeline, target_engine: sa.Engine
) -> None:
    p = pattern_only
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"delete from {p.qualified} where id = 21"))
        conn.execute(sa.text(f"update {p.qualified} set name = 'corrupt' where id = 22"))
    code, out = cli("reconcile", "--once", "--dry-run", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert [t["table"] for t in data["tables"]] == [p.qualified]
    [table] = data["tables"]
    assert table["verified"] is True and table["unverified_reason"] is None
    found = {(d["kind"], d["key"][0]) for w in table["windows"] for d in w["differences"]}
    assert found == {("missing", 21), ("mismatched", 22)}

    code, out = cli("reconcile", "--once")
    assert code == 0, out
    assert "reconciled through -inf" not in out
    assert f"{p.qualified}: reconciled through 2" in out


def test_a_table_the_group_does_not_apply_fails_in_one_line(
    pattern_only: Pipeline,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    unique_name: Callable[[str], str],
) -> None:
    other = create_pair(source_engine, target_engine, unique_name("n"), "id int PRIMARY KEY")
    try:
        code, out = cli(
            "reconcile", "--once", "--table", other, "--table", "public.no_such_table_xyz"
        )
    finally:
        drop_pair(source_engine, target_engine, other)
    assert code == 1, out
    assert "reconciled through -inf" not in out
    lines = {
        x.split(":", 1)[0]: x
        for x in out.splitlines()
        if x.startswith((other + ":", "public.no_such_table_xyz:"))
    }
    assert "not verified" in lines[other] and "has applied no topic routed to" in lines[other]
    assert "not verified" in lines["public.no_such_table_xyz"]
    assert "source table public.no_such_table_xyz not found" in lines["public.no_such_table_xyz"]
