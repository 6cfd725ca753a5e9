"""Continuous `cdcr reconcile` is always on (issue 16 item 2): a target outage in the middle of
its passes is logged and waited out, the process does not end, and passes resume by themselves
once the target is back. The outage is a TCP proxy in front of the real target."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from cdc_reconciler.reconcile.command import reconcile
from tests.helpers import settings_for, wait_for
from tests.stream.test_outage_e2e import Proxy

from .helpers import create_pair, drop_pair

pytestmark = pytest.mark.services


def test_continuous_reconcile_waits_out_a_target_outage(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    services: Any,
    migrated_target: str,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = create_pair(source_engine, target_engine, unique_name("co"), "id int PRIMARY KEY, v text")
    url = sa.engine.make_url(services.target_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = settings_for(
        monkeypatch, TARGET__URL=proxied, RECONCILE__WINDOW_S="10", RECONCILE__REVERIFY_EVERY_S="0"
    )
    stop = threading.Event()
    passes: list[int] = []
    errors: list[BaseException] = []

    def should_stop() -> bool:
        passes.append(1)
        return stop.is_set()

    def run() -> None:
        try:
            reconcile(
                settings,
                tables=[q],
                once=False,
                should_stop=should_stop,
            )
        except BaseException as exc:  # noqa: BLE001 - the test asserts none escapes
            errors.append(exc)

    caplog.set_level(logging.ERROR)
    worker = threading.Thread(target=run, daemon=True)
    try:
        worker.start()
        wait_for("a first pass", lambda: len(passes) >= 1, timeout=30)
        proxy.cut()
        wait_for(
            "the pass to fail and be retried",
            lambda: any("retrying in" in r.getMessage() for r in caplog.records),
            timeout=60,
        )
        assert worker.is_alive() and not errors
        proxy.restore()
        seen = len(passes)
        wait_for("passes to resume", lambda: len(passes) > seen + 1, timeout=60)
        assert worker.is_alive() and not errors
    finally:
        stop.set()
        worker.join(60)
        proxy.close()
        drop_pair(source_engine, target_engine, q)
    assert not worker.is_alive() and not errors
