"""``cdcr lag --serve``: the lag report as Prometheus gauges, refreshed in a loop (moved out of
the CLI, stream/lag_cli.py, unchanged but for the messages, which the caller prints)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.lag import LagReport, Status
from cdc_reconciler.stream.lag_session import LagSession

if TYPE_CHECKING:
    from prometheus_client.registry import Collector


def metric_families(
    report: LagReport | None, *, up: bool, last_success: datetime | None
) -> Iterator[Any]:
    """The exported gauges for a report. Partitions without a known time lag have no time-lag
    sample (absent, never NaN)."""
    from prometheus_client.core import GaugeMetricFamily

    labels = ["group", "topic", "partition"]
    offset = GaugeMetricFamily(
        "cdcr_consumer_offset_lag",
        "Messages between the group's position and the log end.",
        labels=labels,
    )
    seconds = GaugeMetricFamily(
        "cdcr_consumer_time_lag_seconds",
        "How far behind the log end, in seconds of the log: newest message's timestamp minus "
        "the oldest unconsumed one's (0 when caught up).",
        labels=labels,
    )
    age = GaugeMetricFamily(
        "cdcr_consumer_oldest_unconsumed_age_seconds",
        "Now minus the timestamp of the oldest unconsumed message (0 when caught up).",
        labels=labels,
    )
    reason = GaugeMetricFamily(
        "cdcr_consumer_position_reason",
        "1 where the group has no usable commit on the partition: reason no_commit (never "
        "committed) or offset_out_of_range (its commit is outside the log; records lost to it).",
        labels=[*labels, "reason"],
    )
    status = GaugeMetricFamily(
        "cdcr_consumer_status",
        "1 for the partition's current lag status, 0 for the others.",
        labels=[*labels, "status"],
    )
    gstatus = GaugeMetricFamily(
        "cdcr_consumer_group_status",
        "1 for the group's current lag status, 0 for the others.",
        labels=["group", "status"],
    )
    for g in report.groups if report else ():
        for st in Status:
            gstatus.add_metric([g.group, st.value], 1.0 if g.status is st else 0.0)
        for p in g.partitions:
            lv = [g.group, p.topic, str(p.partition)]
            offset.add_metric(lv, float(p.offset_lag))
            if p.time_lag_s is not None:
                seconds.add_metric(lv, p.time_lag_s)
            if p.age_s is not None:
                age.add_metric(lv, p.age_s)
            if p.reason is not None:
                reason.add_metric([*lv, p.reason.value], 1.0)
            for st in Status:
                status.add_metric([*lv, st.value], 1.0 if p.status is st else 0.0)
    yield from (offset, seconds, age, reason, status, gstatus)
    yield GaugeMetricFamily(
        "cdcr_lag_up", "1 if the last refresh of the lag succeeded.", value=1.0 if up else 0.0
    )
    if last_success is not None:
        yield GaugeMetricFamily(
            "cdcr_lag_last_success_timestamp_seconds",
            "Unix time of the last successful refresh.",
            value=last_success.timestamp(),
        )


class LagCollector:
    """A prometheus-client collector that serves the newest report; swapped atomically by the
    refresh loop, so a scrape never sees half a refresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: tuple[LagReport | None, bool, datetime | None] = (None, False, None)

    def update(self, report: LagReport | None, *, up: bool) -> None:
        with self._lock:
            last = report.generated_at if report is not None else self._state[2]
            # A failed refresh drops the partition gauges: stale lag would hide an outage.
            self._state = (report if up else None, up, last)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            report, up, last = self._state
        return metric_families(report, up=up, last_success=last)


def serve(
    session: LagSession,
    *,
    port: int,
    samples: int,
    interval: float,
    refresh: float,
    stop: threading.Event | None = None,
    on_refresh: Callable[[LagReport | None], None] | None = None,
    on_started: Callable[[str], None] | None = None,
    on_failed_refresh: Callable[[CdcrError], None] | None = None,
) -> None:
    """Serve the gauges on 127.0.0.1:PORT/metrics until ``stop`` is set; a refresh that fails
    with a CdcrError keeps the server up with ``cdcr_lag_up`` 0."""
    from prometheus_client import CollectorRegistry, start_http_server

    collector = LagCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_as_collector(collector))
    # The first refresh runs before the port opens, so a bad group or an unreachable broker fails
    # the command at once instead of serving an empty exporter.
    collector.update(session.refresh(samples=samples, interval=interval), up=True)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    if on_started is not None:
        on_started(f"http://127.0.0.1:{port}/metrics")
    stop = stop or threading.Event()
    try:
        while not stop.wait(refresh):
            try:
                report: LagReport | None = session.refresh(samples=1, interval=refresh)
                collector.update(report, up=True)
            except CdcrError as exc:
                # Keep serving through a broker outage; cdcr_lag_up=0 says so to the alerts.
                report = None
                collector.update(None, up=False)
                if on_failed_refresh is not None:
                    on_failed_refresh(exc)
            if on_refresh is not None:
                on_refresh(report)
    finally:
        server.shutdown()
        thread.join(timeout=5)


def _as_collector(c: LagCollector) -> Collector:
    return c  # type: ignore[return-value]  # structurally a Collector (collect())
