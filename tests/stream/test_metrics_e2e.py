"""`cdcr run` serves /metrics and /healthz on 127.0.0.1 while it applies a real stream."""

from __future__ import annotations

import threading

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from cdc_reconciler.stream import command
from tests.conftest import Services
from tests.helpers import wait_for
from tests.stream.pipeline import Pipeline, applied_counts, expected_records

pytestmark = pytest.mark.services


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_run_exports_event_counts_batch_latency_and_health(
    pipeline: Pipeline, services: Services, target_engine: sa.Engine
) -> None:
    expected_records(pipeline, services, 20)
    port = pipeline.settings.metrics.port
    stop = threading.Event()
    t = threading.Thread(
        target=command.run, args=(pipeline.settings,), kwargs={"stop": stop, "serve_metrics": True}
    )
    t.start()
    try:
        wait_for(
            "snapshot applied",
            lambda: applied_counts(target_engine, f"g_{pipeline.table}")["consumed"] >= 20,
        )
        samples = wait_for(
            "metrics",
            lambda: (m := scrape(port)) and any(k[0] == "cdcr_events_total" for k in m) and m,
        )
        applied = samples[
            ("cdcr_events_total", (("outcome", "applied"), ("table", pipeline.qualified)))
        ]
        assert applied == 20
        assert samples[("cdcr_batch_seconds_count", ())] >= 1
        assert samples[("cdcr_redis_up", ())] == 1
        assert (
            "cdcr_apply_lag_seconds",
            (("partition", "0"), ("topic", pipeline.topic)),
        ) in samples
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        stop.set()
        t.join(30)
