"""The ``cdcr lag`` command: consumer lag per partition in offsets and seconds, with a status, as a
table, as JSON, continuously (``--watch``) or as Prometheus gauges (``--serve PORT``).

The rules live in :mod:`cdc_reconciler.stream.lag`; this module wires settings, Kafka, the target
database and output together. Heavy imports (confluent-kafka, psycopg2, prometheus-client) happen
inside the command so that every other ``cdcr`` command starts fast; a one-shot call makes one
round of requests, and the history the status rules read is kept by the ``--watch`` and
``--serve`` loops (one sample per refresh).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from cdc_reconciler.cli import ConfigOpt
from cdc_reconciler.config import Settings, require_driver
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.lag import (
    LONG_LAG_S,
    OFFSET_RESETS,
    AppliedOffset,
    LagMonitor,
    LagReport,
    PartitionLag,
    Status,
    Thresholds,
    TimeLagSource,
    collect,
    report_as_json,
)

if TYPE_CHECKING:
    import sqlalchemy as sa
    from prometheus_client.registry import Collector

# Connecting to the target DB only adds the "applied" column; an unreachable DB must not hold the
# lag report (wanted most exactly when something is down) for longer than this.
_DB_CONNECT_TIMEOUT_S = 3

_STATUS_STYLE = {
    Status.OK: "green",
    Status.WARN: "yellow",
    Status.REWIND: "magenta",
    Status.STALL: "red",
    Status.STOP: "bold red",
}

GroupOpt = Annotated[
    list[str] | None,
    typer.Option("--group", "-g", help="Consumer group (repeatable). Default: kafka.group_id."),
]


def register(app: typer.Typer) -> None:
    """Add the ``lag`` command to the ``cdcr`` app."""
    app.command("lag")(lag)


def lag(
    group: GroupOpt = None,
    topic: Annotated[
        str | None,
        typer.Option(
            "--topic",
            help="Only topics matching this regex; also lists matching partitions the "
            "group never committed (lag from the log start).",
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", help="Refresh every --refresh seconds, keeping a history for the status."
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Machine-readable JSON (schema below; one document per line with --watch).",
        ),
    ] = False,
    serve: Annotated[
        int | None,
        typer.Option(
            "--serve",
            metavar="PORT",
            help="Serve Prometheus gauges on 127.0.0.1:PORT/metrics, "
            "refreshed every --refresh seconds, until stopped.",
        ),
    ] = None,
    samples: Annotated[
        int,
        typer.Option(
            "--samples",
            min=1,
            help="Samples per one-shot report (1: one round of requests; more let the status "
            "see the committed offset move, --interval apart).",
        ),
    ] = 1,
    interval: Annotated[
        float, typer.Option("--interval", min=0.0, help="Seconds between samples.")
    ] = 0.25,
    refresh: Annotated[
        float,
        typer.Option("--refresh", min=0.1, help="Seconds between refreshes (--watch, --serve)."),
    ] = 5.0,
    stall_after: Annotated[
        float,
        typer.Option(
            "--stall-after",
            min=0.0,
            help="Seconds a standing committed offset may leave messages "
            "waiting before the partition is STALL.",
        ),
    ] = 60.0,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.1, help="Seconds to wait for each Kafka request before failing."
        ),
    ] = 10.0,
    offset_reset: Annotated[
        str,
        typer.Option(
            "--offset-reset",
            help="auto.offset.reset of the given groups (earliest or latest): where a group "
            "starts on a partition it never committed on. kafka.group_id always uses earliest.",
        ),
    ] = "earliest",
    config: ConfigOpt = None,
) -> None:
    """Consumer lag per partition: committed and applied offsets, log end, offset lag, time lag
    in seconds, and a status (OK, WARN, STALL, STOP, REWIND) per partition and group.

    \b
    Every partition of every topic the group consumes is listed, including partitions it never
    committed on (committed null, reason no_commit, lag from where it would start).

    \b
    --json prints one document (schema_version 1; fields are only ever added):
    {"schema_version": 1, "generated_at": "<UTC ISO-8601, Z>", "samples": int,
     "interval_s": float,
     "applied_offsets": {"available": bool, "note": str|null},
     "groups": [{"group": str, "state": str, "members": int, "status": STATUS,
                 "total_offset_lag": int, "max_time_lag_s": float,
                 "partitions_without_commit": int,
                 "partitions": [{"topic": str, "partition": int, "committed": int|null,
                                 "reason": "no_commit|offset_out_of_range"|null,
                                 "position": int, "log_start": int, "log_end": int,
                                 "offset_lag": int, "time_lag_s": float|null,
                                 "time_lag_source":
                                 "caught_up|timestamp|estimate|lower_bound|unavailable",
                                 "time_lag_over_30m": bool,
                                 "oldest_unconsumed_age_s": float|null,
                                 "status": STATUS, "applied": int|null,
                                 "applied_event_time": str|null,
                                 "applied_updated_at": str|null}]}]}
    STATUS is one of OK, WARN, REWIND, STALL, STOP. See docs/lag.md for the rules.
    """
    from cdc_reconciler.cli import fail, settings_or_fail

    settings = settings_or_fail(config)
    groups = list(dict.fromkeys(group or [settings.kafka.group_id]))
    try:
        if offset_reset not in OFFSET_RESETS:
            raise CdcrError(f"--offset-reset must be earliest or latest, not {offset_reset!r}")
        with _Session(settings, groups, topic, stall_after, timeout, offset_reset) as session:
            if serve is not None:
                _serve(session, port=serve, samples=samples, interval=interval, refresh=refresh)
            elif watch:
                _watch(
                    session, as_json=as_json, samples=samples, interval=interval, refresh=refresh
                )
            else:
                report = session.refresh(samples=samples, interval=interval)
                _emit(report, as_json=as_json)
    except CdcrError as exc:
        fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(code=0) from None


# -- wiring ---------------------------------------------------------------------------------------


class _Session:
    """One run of the command: the Kafka inspector, the lag monitor and the applied-offsets
    reader, closed together."""

    def __init__(
        self,
        settings: Settings,
        groups: Sequence[str],
        topic: str | None,
        stall_after: float,
        timeout_s: float,
        offset_reset: str = "earliest",
    ) -> None:
        from cdc_reconciler.connectors.kafka_admin import KafkaAdmin, client_config

        k = settings.kafka
        admin = KafkaAdmin(
            client_config(
                k.bootstrap_servers,
                sasl_username=k.sasl_username,
                sasl_password=k.sasl_password.get_secret_value() if k.sasl_password else None,
            ),
            timeout_s=timeout_s,
        )
        self.groups = list(groups)
        own = k.group_id
        # `cdcr run` subscribes its group to kafka.topic_pattern with auto.offset.reset=earliest
        # (connectors/kafka.py): every matching partition is the group's, committed or not.
        self.monitor = LagMonitor(
            admin,
            self.groups,
            topic_pattern=topic,
            thresholds=Thresholds(stall_after_s=stall_after),
            group_patterns={own: k.topic_pattern} if own in self.groups else None,
            group_excludes={own: {k.dlq_topic()}},
            offset_reset={g: "earliest" if g == own else offset_reset for g in self.groups},
        )
        # The raw URL: normalising it (engine_url) imports SQLAlchemy, which the one-shot path
        # avoids; the psycopg2 path needs only the libpq form of it.
        target_url = settings.target.url.get_secret_value()
        if target_url:
            require_driver()  # a missing psycopg2 is a FAILED line, as for every command
        self.applied = AppliedOffsetsReader(target_url)

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.applied.close()

    def refresh(self, *, samples: int, interval: float) -> LagReport:
        # The DB read is independent of Kafka: overlap it with the sampling (a first connect with
        # the SQLAlchemy import costs about as much as the whole Kafka side).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdcr-applied") as pool:
            pending = pool.submit(self.applied.read, self.groups)
            collect(self.monitor, samples=samples, interval_s=interval)
            applied, note = pending.result()
        return self.monitor.report(applied=applied, applied_note=note, interval_s=interval)


class AppliedOffsetsReader:
    """Reads ``cdcr.applied_offsets`` from the target DB, when one is configured and the table
    exists. Never raises: an unreadable DB yields ``(None, reason)`` so lag is still reported.

    A PostgreSQL target is read with psycopg2 directly: importing SQLAlchemy costs more than the
    whole Kafka side of a one-shot ``cdcr lag`` (about 0.2 s of CPU). Other targets go through
    SQLAlchemy."""

    _QUERY = (
        "select consumer_group, topic, partition, next_offset, last_event_time, updated_at "
        "from cdcr.applied_offsets where consumer_group = any(%(groups)s)"
    )
    _EXISTS = "select to_regclass('cdcr.applied_offsets') is not null"
    _MISSING = "table cdcr.applied_offsets does not exist (run cdcr migrate)"

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: sa.Engine | None = None
        self._conn: Any = None
        self._libpq_refused = False  # the URL has options only SQLAlchemy understands

    def read(
        self,
        groups: Sequence[str],
    ) -> tuple[dict[tuple[str, str, int], AppliedOffset] | None, str | None]:
        if not self._url:
            return None, "no target database configured (CDCR_TARGET__URL)"
        libpq = None if self._libpq_refused else _libpq_uri(self._url)
        rows = self._read_psycopg2(libpq, groups) if libpq else self._read_sqlalchemy(groups)
        if isinstance(rows, str):
            return None, rows
        return {(r[0], r[1], int(r[2])): AppliedOffset(int(r[3]), r[4], r[5]) for r in rows}, None

    def _read_psycopg2(self, uri: str, groups: Sequence[str]) -> list[Any] | str:
        import psycopg2

        try:
            if self._conn is None or self._conn.closed:
                try:
                    self._conn = psycopg2.connect(uri, connect_timeout=_DB_CONNECT_TIMEOUT_S)
                except psycopg2.ProgrammingError:  # "invalid dsn": not a libpq URI after all
                    self._libpq_refused = True
                    return self._read_sqlalchemy(groups)
                self._conn.set_session(readonly=True, autocommit=True)
            with self._conn.cursor() as cur:
                cur.execute(self._EXISTS)
                if not cur.fetchone()[0]:
                    return self._MISSING
                cur.execute(self._QUERY, {"groups": list(groups)})
                return list(cur.fetchall())
        except psycopg2.Error as exc:
            self._drop_conn()
            first = (str(exc).strip().splitlines() or [""])[0]
            return f"target database unreadable: {type(exc).__name__}: {first}"

    def _read_sqlalchemy(self, groups: Sequence[str]) -> list[Any] | str:
        import sqlalchemy as sa

        from cdc_reconciler.config import engine_url
        from cdc_reconciler.errors import ConfigError

        try:
            if self._engine is None:
                self._engine = sa.create_engine(engine_url(self._url), pool_pre_ping=True)
            with self._engine.connect() as conn:
                if not conn.execute(sa.text(self._EXISTS)).scalar():
                    return self._MISSING
                query = sa.text(self._QUERY.replace("%(groups)s", ":groups"))
                return list(conn.execute(query, {"groups": list(groups)}).all())
        except ConfigError as exc:
            return f"target database URL: {exc}"
        except sa.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            first = (str(cause).strip().splitlines() or [""])[0]
            return f"target database unreadable: {type(cause).__name__}: {first}"

    def _drop_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001, S110 - a broken connection may fail to close; it is dropped either way
                pass
            self._conn = None

    def close(self) -> None:
        self._drop_conn()
        if self._engine is not None:
            self._engine.dispose()


def _libpq_uri(url: str) -> str | None:
    """The libpq URI of a SQLAlchemy PostgreSQL URL with the psycopg2 (default) driver; None for
    anything else. Both use RFC 3986 URLs with percent-encoded credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgresql+psycopg2", "postgres"):
        return None
    return f"postgresql://{rest}"


# -- human and JSON output ------------------------------------------------------------------------


def _emit(report: LagReport, *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report_as_json(report), sort_keys=False))
    else:
        Console().print(render(report))


def render(report: LagReport) -> Group:
    """The report as rich renderables: one table per group."""
    parts: list[Any] = []
    for g in report.groups:
        title = Text.assemble(
            (g.group, "bold"),
            f"  state {g.state}, {g.members} member(s), ",
            ("status ", ""),
            (g.status.value, _STATUS_STYLE[g.status]),
            f", lag {g.total_offset_lag:,} msg / {_fmt_seconds(g.max_time_lag_s)}",
        )
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        notes = [_note(p) for p in g.partitions]
        columns = [
            ("topic", "left"),
            ("part", "right"),
            ("committed", "right"),
            ("applied", "right"),
            ("log end", "right"),
            ("lag", "right"),
            ("time lag", "right"),
            ("status", "left"),
        ]
        if any(notes):  # only when there is something to say: narrow terminals keep the topic
            columns.append(("note", "left"))
        for col, just in columns:
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for p, note in zip(g.partitions, notes, strict=True):
            row: list[Any] = [
                p.topic,
                str(p.partition),
                _fmt_offset(p.committed),
                _fmt_offset(p.applied),
                f"{p.log_end:,}",
                f"{p.offset_lag:,}",
                _fmt_time_lag(p),
                Text(p.status.value, style=_STATUS_STYLE[p.status]),
            ]
            table.add_row(*row, *([note] if any(notes) else []))
        if not g.partitions:
            table.add_row("(no partitions)", *[""] * (len(columns) - 1))
        parts.append(table)
    if not report.applied_available and report.applied_note:
        parts.append(Text(f"applied: {report.applied_note}", style="dim"))
    return Group(*parts)


def _note(p: PartitionLag) -> str:
    notes = []
    if p.reason is not None:
        notes.append(f"{p.reason.value} (from {p.position:,})")
    if (p.time_lag_s or 0.0) > LONG_LAG_S:
        notes.append("over 30 min behind")
    if p.age_s is not None and p.offset_lag > 0:
        notes.append(f"waiting {_fmt_seconds(p.age_s)}")
    return "; ".join(notes)


def _fmt_offset(v: int | None) -> str:
    return "—" if v is None else f"{v:,}"


def _fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def _fmt_time_lag(p: PartitionLag) -> str:
    if p.time_lag_s is None:
        return "—"
    prefix = {TimeLagSource.ESTIMATE: "~", TimeLagSource.LOWER_BOUND: "≥"}.get(
        p.time_lag_source, ""
    )
    return prefix + _fmt_seconds(p.time_lag_s)


def _watch(
    session: _Session, *, as_json: bool, samples: int, interval: float, refresh: float
) -> None:
    # The first report is built from --samples samples (default one); later refreshes add one
    # sample each to the monitor's bounded history, which is what the status rules read.
    report = session.refresh(samples=samples, interval=interval)
    if as_json:
        while True:
            _emit(report, as_json=True)
            time.sleep(refresh)
            report = session.refresh(samples=1, interval=refresh)
    from rich.live import Live

    with Live(render(report), refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(refresh)
            report = session.refresh(samples=1, interval=refresh)
            live.update(render(report))


# -- Prometheus -----------------------------------------------------------------------------------


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


class _LagCollector:
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


def _serve(
    session: _Session,
    *,
    port: int,
    samples: int,
    interval: float,
    refresh: float,
    stop: threading.Event | None = None,
    on_refresh: Callable[[LagReport | None], None] | None = None,
) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    collector = _LagCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_as_collector(collector))
    # The first refresh runs before the port opens, so a bad group or an unreachable broker fails
    # the command at once instead of serving an empty exporter.
    collector.update(session.refresh(samples=samples, interval=interval), up=True)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    err = Console(stderr=True)
    err.print(
        f"serving lag metrics on http://127.0.0.1:{port}/metrics every {refresh:g}s",
        highlight=False,
    )
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
                err.print(f"[yellow]lag refresh failed:[/] {exc}", highlight=False)
            if on_refresh is not None:
                on_refresh(report)
    finally:
        server.shutdown()
        thread.join(timeout=5)


def _as_collector(c: _LagCollector) -> Collector:
    return c  # type: ignore[return-value]  # structurally a Collector (collect())
