"""A target outage is not a dead letter: the engine retries with backoff, commits no offsets past
unapplied events, and converges once the target is back. The outage is a TCP proxy in front of
the real PostgreSQL that the test closes and reopens (the shared server itself stays up)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress

import pytest
import sqlalchemy as sa

from cdc_reconciler.stream import command
from cdc_reconciler.stream.engine import Prepared
from cdc_reconciler.stream.runner import RunSummary
from tests.conftest import Services
from tests.helpers import committed, settings_for, wait_for
from tests.stream.pipeline import (
    TRAFFIC_RECORDS,
    Pipeline,
    expected_records,
    source_traffic,
    target_matches_source,
)

pytestmark = pytest.mark.services


class Proxy:
    """Forwards 127.0.0.1:<port> to the target database while open; when closed, refuses new
    connections and cuts the open ones."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            for s in self.conns:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.conns.clear()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_target_outage_is_retried_and_nothing_is_lost(
    pipeline: Pipeline,
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = sa.engine.make_url(services.target_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = settings_for(monkeypatch, TARGET__URL=proxied)
    group = f"g_{pipeline.table}"
    stop = threading.Event()
    result: dict[str, RunSummary] = {}
    runner = threading.Thread(
        target=lambda: result.update(s=command.run(settings, serve_metrics=False, stop=stop))
    )
    try:
        runner.start()
        expected_records(pipeline, services, 20)
        wait_for("snapshot applied", lambda: committed(services, group, pipeline.topic) == 20)

        proxy.cut()
        source_traffic(source_engine, pipeline.table)
        expected_records(pipeline, services, TRAFFIC_RECORDS)
        wait_for(
            "the engine to hit the outage and retry",
            lambda: any("target database unavailable" in r.getMessage() for r in caplog.records),
            timeout=30,
        )
        time.sleep(2)
        # Offsets never move past what the target has not committed.
        assert committed(services, group, pipeline.topic) == 20
        assert runner.is_alive()

        proxy.restore()
        wait_for(
            "caught up after the outage",
            lambda: committed(services, group, pipeline.topic) == TRAFFIC_RECORDS,
            timeout=60,
        )
    finally:
        stop.set()
        runner.join(60)
        proxy.close()
    target_matches_source(pipeline, source_engine, target_engine)
    with target_engine.connect() as conn:
        dead = conn.execute(
            sa.text("select count(*) from cdcr.dead_letters where topic = :t"),
            {"t": pipeline.topic},
        ).scalar()
    assert dead == 0
    assert result["s"].totals.dead_lettered == 0


def test_target_outage_while_resolving_a_new_table_is_waited_out(
    pipeline: Pipeline,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first events of a table make the engine read the target's catalog (prepare, before any
    write): an outage there is retried with backoff like one during the write, never raised."""
    from cdc_reconciler.connectors.kafka import Record
    from tests.helpers import read_topic

    url = sa.engine.make_url(services.target_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = settings_for(monkeypatch, TARGET__URL=proxied)
    expected_records(pipeline, services, 20)
    records = [Record.from_message(m) for m in read_topic(services.kafka_bootstrap, pipeline.topic)]
    stop = threading.Event()
    parts = command.build_engine(
        settings, create_missing=False, group=f"g_{pipeline.table}", stop=stop, use_redis=False
    )
    result: dict[str, Prepared] = {}
    try:
        proxy.cut()
        parts.target.dispose()  # no pooled connection survives the cut
        worker = threading.Thread(target=lambda: result.update(p=parts.engine.prepare(records)))
        worker.start()
        wait_for(
            "the engine to retry the catalog read",
            lambda: any("target database unavailable" in r.getMessage() for r in caplog.records),
            timeout=30,
        )
        assert worker.is_alive() and "p" not in result
        proxy.restore()
        worker.join(60)
        assert not worker.is_alive()
        plan = result["p"].plan
        # Every record was planned as a write of the pipeline's table; nothing was dead-lettered.
        assert not plan.dead
        assert sum(len(pending) for _, pending in plan.writes.values()) == 20
        assert parts.engine.db_retries >= 1
    finally:
        stop.set()
        proxy.close()
        parts.target.dispose()
        if parts.source is not None:
            parts.source.dispose()
