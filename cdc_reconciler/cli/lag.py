"""``cdcr lag``: consumer lag per partition in offsets and seconds, with a status, as a table, as
JSON, continuously (``--watch``) or as Prometheus gauges (``--serve PORT``).

The rules live in :mod:`cdc_reconciler.stream.lag`, the Kafka and database sources in
:mod:`cdc_reconciler.stream.lag_session`, the exporter in :mod:`cdc_reconciler.stream.lag_metrics`;
this module parses the options and renders. Heavy imports (confluent-kafka, psycopg2,
prometheus-client) happen inside the command so that every other ``cdcr`` command starts fast; a
one-shot call makes one round of requests, and the history the status rules read is kept by the
``--watch`` and ``--serve`` loops (one sample per refresh).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from cdc_reconciler.cli.common import ConfigOpt, echo_json, say, settings
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.lag import (
    LONG_LAG_S,
    OFFSET_RESETS,
    LagReport,
    PartitionLag,
    Status,
    TimeLagSource,
    report_as_json,
)

if TYPE_CHECKING:
    from cdc_reconciler.stream.lag_session import LagSession

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
    from cdc_reconciler.stream.lag_session import LagSession

    cfg = settings(config)
    groups = list(dict.fromkeys(group or [cfg.kafka.group_id]))
    if offset_reset not in OFFSET_RESETS:
        raise CdcrError(f"--offset-reset must be earliest or latest, not {offset_reset!r}")
    try:
        with LagSession(cfg, groups, topic, stall_after, timeout, offset_reset) as session:
            if serve is not None:
                _serve(session, port=serve, samples=samples, interval=interval, refresh=refresh)
            elif watch:
                _watch(
                    session, as_json=as_json, samples=samples, interval=interval, refresh=refresh
                )
            else:
                report = session.refresh(samples=samples, interval=interval)
                _emit(report, as_json=as_json)
    except KeyboardInterrupt:
        raise typer.Exit(code=0) from None


def _emit(report: LagReport, *, as_json: bool) -> None:
    if as_json:
        echo_json(report_as_json(report))
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
    session: LagSession, *, as_json: bool, samples: int, interval: float, refresh: float
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


def _serve(
    session: LagSession, *, port: int, samples: int, interval: float, refresh: float
) -> None:
    from cdc_reconciler.stream import lag_metrics

    lag_metrics.serve(
        session,
        port=port,
        samples=samples,
        interval=interval,
        refresh=refresh,
        on_started=lambda url: say(f"serving lag metrics on {url} every {refresh:g}s", err=True),
        on_failed_refresh=lambda exc: say(f"[yellow]lag refresh failed:[/] {exc}", err=True),
    )
