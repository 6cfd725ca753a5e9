"""Prometheus metrics of the apply engine, the up/down state of its dependencies, and the HTTP
endpoint serving /metrics, /healthz (liveness) and /readyz (readiness).

Each Metrics object owns its registry (no module-level global state), so tests and several
engines in one process do not collide."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
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
        self.kafka_up = Gauge(
            "cdcr_kafka_up", "1 while the Kafka broker answers, 0 during an outage", registry=r
        )
        self.target_up = Gauge(
            "cdcr_target_up", "1 while the target database answers, 0 during an outage", registry=r
        )
        self.stalls = Counter(
            "cdcr_stalls",
            "Batches the progress watchdog found stuck (its connection was dropped and the "
            "batch retried)",
            registry=r,
        )
        self.kafka_up.set(1)
        self.target_up.set(1)

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


log = logging.getLogger(__name__)

# While a dependency stays down, its state is logged again this often (with the duration so far).
DOWN_REMINDER_S = 60.0


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")


class Dependency:
    """The up/down state of one dependency (Kafka, the target). Thread-safe. Each change of
    state is logged once, with how long the previous state lasted; a long outage is logged again
    every DOWN_REMINDER_S with the duration so far. The gauge follows the state (1 up, 0 down)."""

    def __init__(
        self,
        name: str,
        gauge: Gauge | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._gauge = gauge
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self.up = True
        self.since = clock()
        self.since_wall = wall()
        self.reason = ""
        self._reminded = self.since

    def mark_up(self) -> None:
        if self.up:
            return
        with self._lock:
            if self.up:
                return
            now = self._clock()
            log.warning("%s reachable again after %.0fs down", self.name, now - self.since)
            self.up, self.since, self.since_wall, self.reason = True, now, self._wall(), ""
        if self._gauge is not None:
            self._gauge.set(1)

    def mark_down(self, reason: str) -> None:
        with self._lock:
            now = self._clock()
            if self.up:
                log.error("%s unreachable (%s); waiting it out", self.name, reason)
                self.up, self.since, self.since_wall = False, now, self._wall()
                self._reminded = now
            elif now - self._reminded >= DOWN_REMINDER_S:
                log.error(
                    "%s still unreachable after %.0fs (%s)", self.name, now - self.since, reason
                )
                self._reminded = now
            self.reason = reason
        if self._gauge is not None:
            self._gauge.set(0)

    def down_for(self) -> float:
        return 0.0 if self.up else self._clock() - self.since

    def state(self) -> dict[str, Any]:
        return {"up": self.up, "since": _iso(self.since_wall), "reason": self.reason or None}


@dataclass(frozen=True, slots=True)
class Bounds:
    """How long each condition may last before a probe fails. ``stall_s``: a batch in flight
    with nothing committed (the readiness bound; liveness allows twice as long, so the watchdog
    gets its chance first)."""

    stall_s: float
    target_unready_s: float
    target_unhealthy_s: float
    kafka_unready_s: float
    kafka_unhealthy_s: float


class Progress(Protocol):
    """What the consumer loop exposes to the health checks (monotonic seconds)."""

    last_loop: float

    def inflight_for(self) -> float: ...

    def partitions(self) -> int: ...


class Health:
    """/healthz and /readyz from the loop's progress and the dependencies' states. Both answer
    ``(ok, body)``; the body names every failing check with its state and since when."""

    # The loop itself (not a batch) not iterating for this long is a hang of the process.
    LOOP_HANG_S = 120.0

    def __init__(
        self,
        *,
        progress: Progress,
        kafka: Dependency,
        target: Dependency,
        redis_up: Callable[[], bool],
        bounds: Bounds,
        stalls: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._progress = progress
        self._kafka = kafka
        self._target = target
        self._redis_up = redis_up
        self._bounds = bounds
        self._stalls = stalls
        self._clock = clock
        self._wall = wall

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        b = self._bounds
        return self._check(b.stall_s * 2, b.target_unhealthy_s, b.kafka_unhealthy_s)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        b = self._bounds
        return self._check(b.stall_s, b.target_unready_s, b.kafka_unready_s)

    def _check(
        self, stall_s: float, target_s: float, kafka_s: float
    ) -> tuple[bool, dict[str, Any]]:
        now, wall = self._clock(), self._wall()
        problems: list[dict[str, Any]] = []
        inflight = self._progress.inflight_for()
        # A batch waiting on a target that is known down is an outage (below), not a stall.
        if inflight > stall_s and self._target.up:
            problems.append(
                {
                    "check": "stalled",
                    "detail": f"records waiting and no batch committed for {inflight:.0f}s",
                    "since": _iso(wall - inflight),
                    "for_s": round(inflight, 1),
                }
            )
        idle_loop = now - self._progress.last_loop
        # The loop also waits inside calls that wait out an outage (dead letters for a broker
        # that is down, applied offsets from a target that is down): reported as that outage.
        hung = inflight == 0 and self._kafka.up and self._target.up
        if hung and idle_loop > max(self.LOOP_HANG_S, stall_s):
            problems.append(
                {
                    "check": "loop",
                    "detail": f"the consumer loop has not run for {idle_loop:.0f}s",
                    "since": _iso(wall - idle_loop),
                    "for_s": round(idle_loop, 1),
                }
            )
        for dep, bound in ((self._target, target_s), (self._kafka, kafka_s)):
            down = dep.down_for()
            if not dep.up and down >= bound:
                problems.append(
                    {
                        "check": dep.name,
                        "detail": f"{dep.name} unreachable for {down:.0f}s: {dep.reason}",
                        "since": dep.state()["since"],
                        "for_s": round(down, 1),
                    }
                )
        body: dict[str, Any] = {
            "status": "unhealthy" if problems else "ok",
            "problems": problems,
            "kafka": self._kafka.state(),
            "target": self._target.state(),
            "redis": {"up": self._redis_up()},
            "partitions": self._progress.partitions(),
            "batch_in_flight_s": round(inflight, 1),
            "stalls": self._stalls(),
        }
        return not problems, body


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return


class HasRegistry(Protocol):
    registry: CollectorRegistry


Check = Callable[[], tuple[bool, str] | tuple[bool, dict[str, Any]]]


def serve(
    metrics: HasRegistry,
    host: str,
    port: int,
    healthy: Check,
    ready: Check | None = None,
) -> WSGIServer:
    """Serve /metrics, /healthz and /readyz (``ready``, default: the same as ``healthy``) on
    host:port in a daemon thread. Each check answers 200 or 503; a text reason is sent as
    text/plain, a mapping as JSON."""
    prom = make_wsgi_app(metrics.registry)
    checks: Mapping[str, Check] = {"/healthz": healthy, "/readyz": ready or healthy}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        check = checks.get(environ.get("PATH_INFO", ""))
        if check is not None:
            ok, why = check()
            status = "200 OK" if ok else "503 Service Unavailable"
            if isinstance(why, str):
                start_response(status, [("Content-Type", "text/plain")])
                return [why.encode()]
            start_response(status, [("Content-Type", "application/json")])
            return [orjson.dumps(why)]
        return prom(environ, start_response)

    server = make_server(host, port, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="cdcr-metrics", daemon=True).start()
    return server
