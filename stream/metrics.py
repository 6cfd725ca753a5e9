"""Prometheus metrics of the apply engine, and the HTTP endpoint serving them with a health check.

Each Metrics object owns its registry (no module-level global state), so tests and several
engines in one process do not collide."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from cdc_reconciler.stream.outcomes import OUTCOMES, BatchOutcome


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "cdcr_events",
            "Consumed records by table and outcome "
            "(applied, skipped_duplicate, skipped_stale, dead_lettered, "
            "skipped_noop)",
            ["table", "outcome"],
            registry=r,
        )
        self.consumed = Counter("cdcr_records_consumed", "Records consumed", ["topic"], registry=r)
        self.batch_seconds = Histogram(
            "cdcr_batch_seconds",
            "Time to apply one batch (decode to DB commit)",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_size = Histogram(
            "cdcr_batch_records",
            "Records per batch",
            registry=r,
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000),
        )
        self.apply_lag = Gauge(
            "cdcr_apply_lag_seconds",
            "Now minus the event time of the newest applied event",
            ["topic", "partition"],
            registry=r,
        )
        self.redis_up = Gauge("cdcr_redis_up", "1 if the Redis fast path works, else 0", registry=r)
        self.db_retries = Counter(
            "cdcr_db_retries", "Target transactions retried after an outage", registry=r
        )
        self.toast_refetched = Counter(
            "cdcr_toast_refetched",
            "Events whose unchanged TOASTed columns had no target row to keep them from, by "
            "result: refetched (re-read from the source) or source_missing (skipped, discrepancy)",
            ["table", "result"],
            registry=r,
        )
        self.rebalances = Counter(
            "cdcr_rebalances", "Partition assignments and revocations", ["kind"], registry=r
        )
        self.last_batch = Gauge(
            "cdcr_last_batch_timestamp_seconds", "When the last batch committed", registry=r
        )

    def observe_batch(
        self, outcome: BatchOutcome, seconds: float, *, redis_up: bool | None
    ) -> None:
        self.batch_seconds.observe(seconds)
        now = time.time()
        total = 0
        for (topic, partition), c in outcome.partitions.items():
            total += c.consumed
            self.consumed.labels(topic).inc(c.consumed)
            if c.last_event_us is not None:
                self.apply_lag.labels(topic, str(partition)).set(
                    max(0.0, now - c.last_event_us / 1e6)
                )
        self.batch_size.observe(total)
        for table, by in outcome.by_table.items():
            for o in OUTCOMES:
                if by.get(o):
                    self.events.labels(table, o).inc(by[o])
        if redis_up is not None:
            self.redis_up.set(1 if redis_up else 0)
        self.last_batch.set(now)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return


class HasRegistry(Protocol):
    registry: CollectorRegistry


def serve(
    metrics: HasRegistry, host: str, port: int, healthy: Callable[[], tuple[bool, str]]
) -> WSGIServer:
    """Serve /metrics and /healthz on host:port in a daemon thread. /healthz answers 200 "ok" or
    503 with the reason."""
    prom = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") == "/healthz":
            ok, why = healthy()
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [why.encode()]
        return prom(environ, start_response)

    server = make_server(host, port, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="cdcr-metrics", daemon=True).start()
    return server
