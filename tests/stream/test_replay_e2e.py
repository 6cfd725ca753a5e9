"""`cdcr replay` against the real stack: a past window re-applied after newer changes leaves the
newer data intact, --dry-run writes nothing, and the live group's offsets are untouched."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from typer.testing import CliRunner

from cdc_reconciler.cli import app
from tests.conftest import Services
from tests.helpers import committed, rows
from tests.stream.pipeline import (
    COLUMNS,
    TRAFFIC_RECORDS,
    Pipeline,
    expected_records,
    run_until_idle,
    source_traffic,
    target_matches_source,
)

pytestmark = pytest.mark.services


def replay_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["replay", *args, "--json"])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return doc


def test_replaying_a_past_window_keeps_newer_data_and_dry_run_writes_nothing(
    pipeline: Pipeline, services: Services, source_engine: sa.Engine, target_engine: sa.Engine
) -> None:
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    source_traffic(source_engine, pipeline.table)
    expected_records(pipeline, services, TRAFFIC_RECORDS)
    time.sleep(1.5)
    t_mid = datetime.now(UTC)
    time.sleep(1.5)
    with source_engine.begin() as conn:  # newer changes, after the window
        conn.execute(sa.text(f"update public.{pipeline.table} set name = 'newest' where id < 30"))
    expected_records(pipeline, services, TRAFFIC_RECORDS + 26)
    run_until_idle(pipeline.settings)
    target_matches_source(pipeline, source_engine, target_engine)
    group = f"g_{pipeline.table}"
    live_offset = committed(services, group, pipeline.topic)
    before = rows(target_engine, pipeline.qualified, COLUMNS + ", _cdc_pos")

    # Without Redis remembering them, every replayed change meets the position guard.
    redis.Redis.from_url(services.redis_url).flushdb()
    out = replay_json("--from", t0.isoformat(), "--to", t_mid.isoformat())
    assert out["consumed"] == TRAFFIC_RECORDS
    assert out["applied"] == 0 and out["skipped_stale"] + out["skipped_noop"] == TRAFFIC_RECORDS
    assert rows(target_engine, pipeline.qualified, COLUMNS + ", _cdc_pos") == before
    assert committed(services, group, pipeline.topic) == live_offset

    # A row lost in the target comes back from the replay; --dry-run only reports it.
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"delete from {pipeline.qualified} where id = 40"))
    dry = replay_json(
        "--from",
        t0.isoformat(),
        "--to",
        t_mid.isoformat(),
        "--dry-run",
        "--table",
        f"public.{pipeline.table}",
    )
    assert dry["dry_run"] is True and dry["applied"] == 1
    assert rows(target_engine, pipeline.qualified, "count(*)", "1") == [(len(before) - 1,)]
    real = replay_json("--from", t0.isoformat(), "--to", t_mid.isoformat())
    assert real["applied"] == 1
    target_matches_source(pipeline, source_engine, target_engine)


def test_replay_rejects_an_empty_range(pipeline: Pipeline) -> None:
    result = CliRunner().invoke(
        app, ["replay", "--from", "2026-01-02T00:00Z", "--to", "2026-01-01T00:00Z"]
    )
    assert result.exit_code == 1
    assert "must be after" in result.output
