"""``cdcr reconcile``: a thin layer over reconcile/command.py (windows, ``--sample``,
``--reverify``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cdc_reconciler.cli.common import (
    TIME_HELP,
    ConfigOpt,
    JsonOpt,
    echo_json,
    out_console,
    parse_optional_time,
    progress,
    say,
    settings,
    short_time,
)
from cdc_reconciler.cli.sample import sample_tables
from cdc_reconciler.errors import CdcrError

if TYPE_CHECKING:  # annotations only: SQLAlchemy stays out of every command's start-up
    from cdc_reconciler.config import Settings
    from cdc_reconciler.reconcile.metrics import ReconcileMetrics
    from cdc_reconciler.reconcile.model import TableReport, WindowReport
    from cdc_reconciler.reconcile.segments import Window

# Window outcomes that make `cdcr reconcile` exit 1.
_FAILED_STATUSES = ("unresolved", "check_failed", "failed")


def register(app: typer.Typer) -> None:
    """Add ``reconcile`` to the ``cdcr`` application."""
    app.command()(reconcile)


def reconcile(
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table",
            "-t",
            help="Source table as schema.table; repeat for more. Default: every "
            "table the consumer group applies (its applied offsets), plus the tables "
            "in the configuration.",
        ),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Reconcile windows from this time instead of from the watermark. " + TIME_HELP,
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Stop at this time (exclusive). Only closed windows are reconciled. " + TIME_HELP,
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="One pass over the windows closed now, then exit. Without it, run "
            "until interrupted.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Report differences only; write nothing (no repairs, no audit rows, "
            "no watermark).",
        ),
    ] = False,
    fail_on_differences: Annotated[
        bool,
        typer.Option(
            "--fail-on-differences",
            help="Exit 1 when any window had differences, even if they were repaired "
            "(with --dry-run: when any was found). For CI gates and cron checks.",
        ),
    ] = False,
    delete_extra: Annotated[
        bool,
        typer.Option(
            "--delete-extra",
            help="Archive, then delete, rows found only in the target. "
            "Without it they are only recorded for review.",
        ),
    ] = False,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample",
            min=1,
            metavar="N",
            help="Instead of reconciling, check about N random "
            "keys per table (from both sides, so rows only in the target show too) and report "
            "the mismatch rate with a 95% Wilson confidence interval. Repairs nothing; writes one "
            "audit row per table (status 'sampled') unless --dry-run. With --from/--to, windowed "
            "tables are sampled among rows changed in that range.",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of --sample's random draws (default: random; the seed used is "
            "reported), to repeat a sample.",
        ),
    ] = None,
    reverify: Annotated[
        bool,
        typer.Option(
            "--reverify",
            help="Walk already-verified windows again (behind the watermark), oldest-"
            "verified first, without moving the watermark: differences go through the same "
            "confirmation, repair and review path and are counted as found_in_history. One "
            "pass (implies --once). Range: --since (default reconcile.reverify_horizon_s, "
            "7d) or --from/--to; --sample N re-verifies N random windows of it instead of all "
            "(--full, the default).",
        ),
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="DURATION",
            help="With --reverify: only windows changed in the last DURATION "
            "(90s, 30m, 12h, 7d, 2w, 1d12h).",
        ),
    ] = None,
    full: Annotated[
        bool,
        typer.Option("--full", help="With --reverify: every window of the range (the default)."),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Without --once: serve Prometheus metrics (/metrics) and "
            "/healthz on CDCR_METRICS__HOST:PORT. Default: CDCR_METRICS__PORT + 2 (9466).",
        ),
    ] = None,
    no_metrics: Annotated[
        bool, typer.Option("--no-metrics", help="Without --once: do not serve metrics.")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify closed windows against the source, repair the target, advance watermarks.

    Each table is compared window by window, oldest unreconciled window first: count and
    checksum inside each database, bisection by key range down to rows, then repair of
    missing and mismatched rows from the source at a position any later change beats.
    A window is reconciled only once every Kafka partition feeding the table has applied
    events past its end plus the grace period (or is idle at its log end).

    With --sample N, only estimate the mismatch rate from N random keys per table.

    Optional per-table checks from the YAML mapping (sum of a column with a tolerance,
    business-rule SQL with an expected result) run for every window; a failed check keeps
    the watermark before that window.

    Exit status 1 when a window stays unresolved after repair or fails a configured check,
    when a sample finds any difference, or (--once) when a table could not be verified at all;
    with --fail-on-differences also when any difference was found (repaired or, with
    --dry-run, reported).
    """
    from cdc_reconciler.reconcile import command
    from cdc_reconciler.reconcile.history import parse_duration

    cfg = settings(config)
    once = _check_options(reverify, since, full, sample, delete_extra, once)
    start, end = parse_optional_time(from_, "--from"), parse_optional_time(to, "--to")
    tables = table or ()
    if sample is not None and not reverify:
        sample_tables(cfg, sample, tables, start, end, seed, dry_run, as_json)
        return
    serve = not once and not no_metrics
    if not once:
        # Continuous mode runs until stopped: say so, and one line per pass that did something.
        # cdcr's own INFO lines; libraries (alembic announces its plugins at INFO) stay quiet.
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("cdc_reconciler").setLevel(logging.INFO)
        say(
            "reconciling continuously: each closed window as it closes, one log line per pass "
            "(Ctrl-C to stop; --once for one pass)",
            err=True,
        )
    with _metrics(cfg, metrics_port, serve) as metrics, _progress(as_json) as on_window:
        reports = command.reconcile(
            cfg,
            tables=tables,
            start=start,
            end=end,
            once=once,
            dry_run=dry_run,
            delete_extra=delete_extra,
            on_window=on_window,
            metrics=metrics,
            reverify=reverify,
            since=None if since is None else parse_duration(since),
            sample_windows=sample if reverify else None,
            seed=seed,
        )
    if as_json:
        echo_json(_reports_json(reports, dry_run, reverify), indent=2)
    else:
        _print_reports(reports, dry_run)
    raise typer.Exit(code=_exit_status(reports, once, fail_on_differences))


def _reports_json(reports: list[TableReport], dry_run: bool, reverify: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "reverify": reverify,
        "found_in_history": sum(r.found_in_history for r in reports),
        "tables": [r.as_json() for r in reports],
    }


def _exit_status(reports: list[TableReport], once: bool, fail_on_differences: bool = False) -> int:
    """1 when a window stayed unresolved or failed a check, or (one pass) when a table could not
    be verified at all: nothing verified is a failure, never a silent success. With
    ``fail_on_differences``, also 1 when any window had a confirmed difference (repaired or,
    in a dry run, only reported)."""
    if any(w.status in _FAILED_STATUSES for r in reports for w in r.windows):
        return 1
    if fail_on_differences and any(w.differences for r in reports for w in r.windows):
        return 1
    return 1 if once and any(r.unverified for r in reports) else 0


def _check_options(
    reverify: bool,
    since: str | None,
    full: bool,
    sample: int | None,
    delete_extra: bool,
    once: bool,
) -> bool:
    """Reject combinations that do not go together; returns --once (implied by --reverify)."""
    if not reverify and (since is not None or full):
        raise CdcrError("--since and --full apply to --reverify only")
    if reverify and full and sample is not None:
        raise CdcrError("--full and --sample N are alternatives: pick one")
    if sample is not None and not reverify and delete_extra:
        raise CdcrError("--sample reads only: --delete-extra does not apply")
    return once or reverify


@contextmanager
def _metrics(cfg: Settings, port: int | None, on: bool) -> Iterator[ReconcileMetrics | None]:
    """Continuous mode's /metrics and /healthz, shut down when the command ends."""
    if not on:
        yield None
        return
    from cdc_reconciler.reconcile.metrics import ReconcileMetrics, serve

    metrics = ReconcileMetrics()
    port = cfg.metrics.port + 2 if port is None else port
    try:
        server = serve(metrics, cfg.metrics.host, port, lambda: (True, "ok"))
    except OSError as exc:
        raise CdcrError(
            f"cannot serve metrics on {cfg.metrics.host}:{port}: {exc} "
            "(choose another --metrics-port, or --no-metrics)"
        ) from exc
    say(f"metrics on http://{cfg.metrics.host}:{server.server_port}/metrics", err=True)
    try:
        yield metrics
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _progress(hidden: bool) -> Iterator[Any]:
    """A spinner naming the window being reconciled (none with --json, for scripts)."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with progress(*columns, hidden=hidden) as bar:
        task = bar.add_task("reconciling", total=None)

        def on_window(name: str, w: Window) -> None:
            bar.update(task, description=f"{name} [{_t(w.start)}, {_t(w.end)})")

        yield on_window


def _t(t: datetime | None) -> str:
    return short_time(t, none="-inf")


def _print_reports(reports: list[TableReport], dry_run: bool) -> None:
    title = "reconcile --reverify" if any(r.reverify for r in reports) else "reconcile"
    tbl = Table(title=f"{title} (dry run: nothing written)" if dry_run else title)
    for col in ("table", "window", "status", "missing", "extra", "mismatched", "deferred", "rows"):
        tbl.add_column(col)
    for r in reports:
        if not r.windows:
            tbl.add_row(r.table, "", _why_no_window(r), "", "", "", "", "")
        for w in r.windows:
            tbl.add_row(r.table, *_window_cells(w))
    out_console.print(tbl)
    for r in reports:
        for w in r.windows:
            _print_window_details(r.table, w)
        _print_drift(r)
        _print_outcome(r)


def _why_no_window(r: TableReport) -> str:
    if r.unverified:
        return "not verified"
    return "nothing to re-verify" if r.reverify else "no new closed window"


def _window_cells(w: WindowReport) -> list[str]:
    c = w.counts
    return [
        f"[{_t(w.window.start)}, {_t(w.window.end)})",
        w.status,
        *(str(c.get(k, 0)) for k in ("missing", "extra", "mismatched", "deferred")),
        str(c.get("source_rows", "")),
    ]


def _print_window_details(table: str, w: WindowReport) -> None:
    for d in w.differences:
        cols = f" columns={','.join(d.columns)}" if d.columns else ""
        say(f"  {table} {d.kind.value} key={list(d.key)}{cols}")
    shown = w.deferred[:20]
    for k, why in shown:
        say(f"  {table} deferred key={list(k)} ({why})")
    if len(w.deferred) > len(shown):
        say(f"  {table} … {len(w.deferred) - len(shown)} more deferred keys (--json)")
    if w.counts.get("orphan"):
        say(
            f"  {table} {w.counts['orphan']} orphan row(s): foreign-key parent missing in the "
            "target (cdcr review list --kind orphan)"
        )


def _print_drift(r: TableReport) -> None:
    for drift in r.drift:
        detail = ", ".join(f"{k}={v}" for k, v in drift.items() if k not in ("column", "problem"))
        say(
            f"  {r.table} schema drift: column {drift.get('column')} {drift.get('problem')}"
            + (f" ({detail})" if detail else ""),
            soft_wrap=True,
        )


def _print_outcome(r: TableReport) -> None:
    if r.unverified:
        say(f"{r.table}: {r.unverified}", soft_wrap=True)
    elif r.reverify:
        say(
            f"{r.table}: re-verified {len(r.windows)} window(s) of history, "
            f"{r.found_in_history} difference(s) found in history; watermark stays at "
            f"{_t(r.reconciled_through)}",
            soft_wrap=True,
        )
    else:
        say(f"{r.table}: reconciled through {_t(r.reconciled_through)}")
