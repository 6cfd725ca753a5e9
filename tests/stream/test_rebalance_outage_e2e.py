"""A rebalance while the target database is unreachable: the assignment callback needs the
target's applied offsets, and the outage is waited out by the engine's retry policy (logged,
counted, retried), never a traceback; once the target is back the partitions are assigned and the
events applied. The outage is the TCP proxy of test_outage_e2e, cut just before the loop
subscribes, so the group's first assignment meets it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from cdc_reconciler.stream import command
from cdc_reconciler.stream.runner import Runner, RunSummary
from tests.conftest import Services
from tests.helpers import committed, settings_for, wait_for
from tests.stream.pipeline import Pipeline, expected_records, target_matches_source
from tests.stream.test_outage_e2e import Proxy

pytestmark = pytest.mark.services


def test_assignment_during_a_target_outage_is_retried_then_applied(
    pipeline: Pipeline,
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    url = sa.engine.make_url(services.target_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = settings_for(monkeypatch, TARGET__URL=proxied)
    group = f"g_{pipeline.table}"
    expected_records(pipeline, services, 20)

    # Start-up checks the target, so the outage starts after them: right before the loop's
    # first subscription, i.e. before the group's first assignment.
    refresh: Callable[[Runner], None] = Runner._refresh_subscription
    cut_once = threading.Event()

    def cut_then_refresh(self: Runner) -> None:
        if not cut_once.is_set():
            cut_once.set()
            proxy.cut()
        refresh(self)

    monkeypatch.setattr(Runner, "_refresh_subscription", cut_then_refresh)
    stop = threading.Event()
    result: dict[str, RunSummary] = {}
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result["s"] = command.run(settings, serve_metrics=False, stop=stop)
        except BaseException as exc:  # the test asserts there is none
            errors.append(exc)

    runner = threading.Thread(target=run)
    try:
        runner.start()
        wait_for(
            "the assignment callback to retry the applied-offsets read",
            lambda: (
                sum("target database unavailable" in r.getMessage() for r in caplog.records) >= 2
            ),
            timeout=60,
        )
        time.sleep(1)
        assert runner.is_alive() and not errors
        assert not any("assigned 1 partitions" in r.getMessage() for r in caplog.records)
        assert committed(services, group, pipeline.topic) < 0  # nothing assigned, nothing applied

        proxy.restore()
        wait_for(
            "applied after the target came back",
            lambda: committed(services, group, pipeline.topic) == 20,
            timeout=60,
        )
    finally:
        stop.set()
        runner.join(60)
        proxy.close()
    assert not errors, errors
    assert result["s"].totals.applied == 20
    target_matches_source(pipeline, source_engine, target_engine)
    # Logged and retried, never a traceback.
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not [r for r in caplog.records if "Traceback" in r.getMessage()]
    messages = [r.getMessage() for r in caplog.records]
    assert any("target unreachable" in m for m in messages)
    assert any("assigned 1 partitions" in m for m in messages)
