"""``cdcr reconcile`` and ``cdcr status``: thin typer layers over reconcile/command.py."""

# No `from __future__ import annotations`: typer reads the option types at registration, and
# ConfigOpt/JsonOpt are imported inside register() (cdc_reconciler.cli imports this module).

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cdc_reconciler.errors import CdcrError

if TYPE_CHECKING:  # annotations only: SQLAlchemy stays out of every command's start-up
    from cdc_reconciler.reconcile.run import TableReport
    from cdc_reconciler.reconcile.sample import SampleReport
    from cdc_reconciler.reconcile.segments import Window

_out = Console()
_err = Console(stderr=True)


def _when(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CdcrError(f"{what}: not an ISO-8601 time: {value!r}") from exc
    if t.tzinfo is None:
        raise CdcrError(f"{what} must carry a time zone, e.g. 2026-01-01T00:00:00Z")
    return t


def register(app: typer.Typer) -> None:
    """Add ``reconcile`` and ``status`` to the ``cdcr`` application."""
    from cdc_reconciler.cli import ConfigOpt, JsonOpt, fail, settings_or_fail

    @app.command()
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
                help="Reconcile windows from this ISO-8601 UTC time instead of from the "
                "watermark (e.g. 2026-01-01T00:00:00Z).",
            ),
        ] = None,
        to: Annotated[
            str | None,
            typer.Option(
                "--to", help="Stop at this time (exclusive). Only closed windows are reconciled."
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
            typer.Option(
                "--full", help="With --reverify: every window of the range (the default)."
            ),
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
        or when a sample finds any difference.
        """
        from cdc_reconciler.reconcile import command

        settings = settings_or_fail(config)
        if not reverify and (since is not None or full):
            fail(CdcrError("--since and --full apply to --reverify only"))
        if reverify:
            if full and sample is not None:
                fail(CdcrError("--full and --sample N are alternatives: pick one"))
            once = True
        if sample is not None and not reverify:
            if delete_extra:
                fail(CdcrError("--sample reads only: --delete-extra does not apply"))
            _sample(settings, sample, table or (), from_, to, seed, dry_run, as_json)
            return
        server = None
        metrics = None
        if not once and not no_metrics:
            from cdc_reconciler.reconcile.metrics import ReconcileMetrics, serve

            metrics = ReconcileMetrics()
            port = settings.metrics.port + 2 if metrics_port is None else metrics_port
            try:
                server = serve(metrics, settings.metrics.host, port, lambda: (True, "ok"))
            except OSError as exc:
                fail(
                    CdcrError(
                        f"cannot serve metrics on {settings.metrics.host}:{port}: {exc} "
                        "(choose another --metrics-port, or --no-metrics)"
                    )
                )
            _err.print(
                f"metrics on http://{settings.metrics.host}:{server.server_port}/metrics",
                highlight=False,
            )
        from cdc_reconciler.reconcile.history import parse_duration

        try:
            start, end = _when(from_, "--from"), _when(to, "--to")
            # JSON output for scripts: no progress display on the terminal.
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=_err,
                transient=True,
                disable=as_json,
            ) as progress:
                task = progress.add_task("reconciling", total=None)

                def on_window(name: str, w: "Window") -> None:
                    progress.update(task, description=f"{name} [{_t(w.start)}, {_t(w.end)})")

                reports = command.reconcile(
                    settings,
                    tables=table or (),
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
        except CdcrError as exc:
            fail(exc)
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "dry_run": dry_run,
                        "reverify": reverify,
                        "found_in_history": sum(r.found_in_history for r in reports),
                        "tables": [r.as_json() for r in reports],
                    },
                    indent=2,
                    default=str,
                )
            )
        else:
            _print_reports(reports, dry_run)
        if any(
            w.status in ("unresolved", "check_failed", "failed") for r in reports for w in r.windows
        ):
            raise typer.Exit(code=1)
        if once and any(r.unverified for r in reports):
            raise typer.Exit(code=1)  # nothing verified is a failure, never a silent success

    @app.command()
    def status(
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
        wide: Annotated[
            bool,
            typer.Option(
                "--wide",
                help="Full tables (watermarks, gaps, applied offsets per partition, recent "
                "runs, open discrepancies) instead of one summary per table and group.",
            ),
        ] = False,
    ) -> None:
        """One summary per table (last verified, windows behind, open review items, drift
        and orphans) and per consumer group (applied through, lag), from the service's tables
        in the target database; --wide for the full tables. Asks Kafka for log-end offsets (2 s
        timeout) only to tell idle partitions from lagging ones, and says so when Kafka does not
        answer."""
        from cdc_reconciler.reconcile import command

        settings = settings_or_fail(config)
        try:
            data = command.status(settings)
        except CdcrError as exc:
            fail(exc)
        if as_json:
            typer.echo(json.dumps(data, indent=2, default=str))
        elif wide:
            _print_status(data)
        else:
            _print_summary(data)


def _sample(
    settings: Any,
    n: int,
    tables: list[str] | tuple[()],
    from_: str | None,
    to: str | None,
    seed: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    from cdc_reconciler.cli import fail
    from cdc_reconciler.reconcile import command

    try:
        with _err.status("sampling"):
            reports = command.sample(
                settings,
                n,
                tables=tables,
                start=_when(from_, "--from"),
                end=_when(to, "--to"),
                seed=seed,
                dry_run=dry_run,
            )
    except CdcrError as exc:
        fail(exc)
    if as_json:
        typer.echo(
            json.dumps(
                {"dry_run": dry_run, "sample": True, "tables": [r.as_json() for r in reports]},
                indent=2,
                default=str,
            )
        )
    else:
        _print_samples(reports, dry_run)
    if any(r.differences for r in reports):
        raise typer.Exit(code=1)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3g}%"


def _print_samples(reports: "list[SampleReport]", dry_run: bool) -> None:
    tbl = Table(
        title="reconcile --sample (dry run: nothing written)" if dry_run else "reconcile --sample"
    )
    for col in (
        "table",
        "method",
        "sampled",
        "missing",
        "extra",
        "mismatched",
        "rate",
        "95% interval",
    ):
        tbl.add_column(col)
    for r in reports:
        lo, hi = r.interval
        tbl.add_row(
            r.table,
            r.method,
            f"{r.sampled}/{r.requested}",
            str(r.counts["missing"]),
            str(r.counts["extra"]),
            str(r.counts["mismatched"]),
            _pct(r.rate),
            f"[{_pct(lo)}, {_pct(hi)}]",
        )
    _out.print(tbl)
    for r in reports:
        for d in r.differences[:50]:
            cols = f" columns={','.join(d.columns)}" if d.columns else ""
            _out.print(f"  {r.table} {d.kind.value} key={list(d.key)}{cols}", highlight=False)
        if r.note:
            _out.print(f"{r.table}: {r.note}", highlight=False)
        _out.print(
            f"{r.table}: seed {r.seed}; population ≈ {r.population} keys "
            f"(source {r.source_rows}, target {r.target_rows})",
            highlight=False,
        )


def _t(t: datetime | None) -> str:
    return "-inf" if t is None else t.strftime("%Y-%m-%d %H:%M:%SZ")


def _print_reports(reports: "list[TableReport]", dry_run: bool) -> None:
    title = "reconcile --reverify" if any(r.reverify for r in reports) else "reconcile"
    tbl = Table(title=f"{title} (dry run: nothing written)" if dry_run else title)
    for col in ("table", "window", "status", "missing", "extra", "mismatched", "deferred", "rows"):
        tbl.add_column(col)
    for r in reports:
        if not r.windows:
            why = (
                "not verified"
                if r.unverified
                else "nothing to re-verify"
                if r.reverify
                else "no new closed window"
            )
            tbl.add_row(r.table, "", why, "", "", "", "", "")
        for w in r.windows:
            c = w.counts
            tbl.add_row(
                r.table,
                f"[{_t(w.window.start)}, {_t(w.window.end)})",
                w.status,
                str(c.get("missing", 0)),
                str(c.get("extra", 0)),
                str(c.get("mismatched", 0)),
                str(c.get("deferred", 0)),
                str(c.get("source_rows", "")),
            )
    _out.print(tbl)
    for r in reports:
        for w in r.windows:
            for d in w.differences:
                cols = f" columns={','.join(d.columns)}" if d.columns else ""
                _out.print(f"  {r.table} {d.kind.value} key={list(d.key)}{cols}", highlight=False)
            shown = w.deferred[:20]
            for k, why in shown:
                _out.print(f"  {r.table} deferred key={list(k)} ({why})", highlight=False)
            if len(w.deferred) > len(shown):
                _out.print(
                    f"  {r.table} … {len(w.deferred) - len(shown)} more deferred keys (--json)",
                    highlight=False,
                )
            if c.get("orphan"):
                _out.print(
                    f"  {r.table} {c['orphan']} orphan row(s): foreign-key parent missing in the "
                    "target (cdcr review list --kind orphan)",
                    highlight=False,
                )
        for drift in r.drift:
            detail = ", ".join(
                f"{k}={v}" for k, v in drift.items() if k not in ("column", "problem")
            )
            _out.print(
                f"  {r.table} schema drift: column {drift.get('column')} {drift.get('problem')}"
                + (f" ({detail})" if detail else ""),
                highlight=False,
                soft_wrap=True,
            )
        if r.unverified:
            _out.print(f"{r.table}: {r.unverified}", highlight=False, soft_wrap=True)
        elif r.reverify:
            _out.print(
                f"{r.table}: re-verified {len(r.windows)} window(s) of history, "
                f"{r.found_in_history} difference(s) found in history; watermark stays at "
                f"{_t(r.reconciled_through)}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            _out.print(f"{r.table}: reconciled through {_t(r.reconciled_through)}", highlight=False)


def _short(t: str | None) -> str:
    """An ISO instant as ``YYYY-MM-DD HH:MM:SSZ`` (UTC), or ``never``."""
    if t is None:
        return "never"
    return datetime.fromisoformat(t).strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _print_summary(data: dict[str, Any]) -> None:
    """The default ``cdcr status``: a few short lines per table and group, readable at 80
    columns (names longer than the terminal wrap; nothing else does)."""
    now = datetime.fromisoformat(data["now"])
    marks = {m["table"]: m for m in data["watermarks"]}
    gaps = {g["table"]: g for g in data["gaps"]}
    integ = {x["table"]: x for x in data.get("integrity", [])}
    ver = {x["table"]: x for x in data.get("verification", [])}
    queue: dict[str, dict[str, int]] = {}
    for q in data.get("review", {}).get("open", []):
        queue.setdefault(q["table"], {})[q["kind"]] = q["open"]
    names = sorted({*marks, *gaps, *integ, *queue})
    p = _out.print
    p("[bold]tables[/]" if names else "tables: none reconciled yet", highlight=False)
    for name in names:
        m = marks.get(name)
        behind: Any = gaps[name]["windows_behind"] if name in gaps else 0
        if behind is None:  # never reconciled and no first change known: the whole table
            behind = "all"
        kinds = queue.get(name, {})
        open_txt = f"{sum(kinds.values())} open"
        if kinds:
            open_txt += " (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")"
        state = "" if m is None or m["state"] == "idle" else f" · {m['state']}"
        p(name, highlight=False, markup=False, soft_wrap=True)
        line = (
            f"  verified through {_short(m['reconciled_through'] if m else None)} · "
            f"{behind} behind · {open_txt}{state}"
        )
        if len(line) > 78 and kinds:  # the breakdown of the open items on a line of its own
            line = line.replace(open_txt, f"{sum(kinds.values())} open")
            p(line, highlight=False, markup=False)
            line = "  open: " + open_txt.split("(", 1)[1].rstrip(")")
        p(line, highlight=False, markup=False)
        x = integ.get(name)
        if x is not None:
            parts = []
            if x["schema_drift"]:
                cols = ", ".join(f"{d['column']} ({d['problem']})" for d in x["schema_drift"][:3])
                more = len(x["schema_drift"]) - 3
                parts.append(f"drift: {cols}" + (f" +{more}" if more > 0 else ""))
            if x["orphans"]:
                parts.append(f"{x['orphans']} orphan rows")
            p("  " + "; ".join(parts), highlight=False, markup=False)
        v = ver.get(name)  # after the drift line, which scripts expect second
        if v is not None and v["windows"]:
            age = v["oldest_verified_age_s"]
            p(
                "  oldest verification "
                + ("never recorded" if age is None else f"{_ago(age)} ago")
                + f" (window from {_short(v['window']['start'] or v['window']['end'])}; "
                f"{v['due']} due)",
                highlight=False,
                markup=False,
            )
    prio = data.get("priorities", [])
    total = data.get("priorities_total", len(prio))
    if prio:
        p(
            f"[bold]to verify next[/] ({total} window{'s' if total != 1 else ''}, "
            "highest priority first)",
            highlight=False,
        )
    for x in prio[:5]:
        # Wrapped at the terminal's width (names included); --json has each command whole.
        n_rows = "?" if x["rows_changed"] is None else str(x["rows_changed"])
        start = "-inf" if x["window_start"] is None else _short(x["window_start"])
        p(
            f"  {x['priority']:g} {x['status']} {x['table']} [{start}, "
            f"{_short(x['window_end'])}) {n_rows} rows, closed {_ago(x['age_s'])} ago",
            highlight=False,
            markup=False,
        )
        p(f"    {x['next']}", highlight=False, markup=False)
    blocked = data.get("blocked", [])
    if blocked:
        p(
            "[bold red]blocked tables[/] (every event dead-lettered; see docs/apply.md)",
            highlight=False,
        )
    for b in blocked:
        p(f"  {b['topic']}", highlight=False, markup=False, soft_wrap=True)
        p(
            f"    {b['kind']}: {b['dead_lettered']} dead letters, last {_short(b['last_seen'])}",
            highlight=False,
            markup=False,
        )
        p(f"    {(b['last_error'] or '')[:200]}", highlight=False, markup=False, soft_wrap=True)
    groups: dict[str, list[dict[str, Any]]] = {}
    for o in data["applied_offsets"]:
        groups.setdefault(o["consumer_group"], []).append(o)
    if groups:
        p("[bold]consumer groups[/]", highlight=False)
    for g, rows in sorted(groups.items()):
        times = [datetime.fromisoformat(r["last_event_time"]) for r in rows if r["last_event_time"]]
        oldest = min(times) if times else None
        topics = len({r["topic"] for r in rows})
        dlq = sum(int(r["dead_lettered"] or 0) for r in rows)
        p(g, highlight=False, markup=False, soft_wrap=True)
        lag = (
            "nothing applied yet"
            if oldest is None
            else f"events through {_short(oldest.isoformat())} "
            f"({_ago((now - oldest).total_seconds())} ago)"
        )
        p(
            f"  {topics} topic{'s' if topics != 1 else ''}, {len(rows)} "
            f"partition{'s' if len(rows) != 1 else ''} · {lag}",
            highlight=False,
            markup=False,
        )
        if dlq:
            p(f"  {dlq} events dead-lettered (cdcr status --wide)", highlight=False, markup=False)
    review = data.get("review", {})
    if review.get("open_total"):
        p(
            f"review queue: {review['open_total']} open, oldest "
            f"{_ago(review['oldest_age_s'] or 0)} old (cdcr review list)",
            highlight=False,
            markup=False,
        )
    if data["kafka"]["log_ends"] == "unavailable":
        _err.print(
            "note: Kafka did not answer for log-end offsets; windows behind may be understated",
            highlight=False,
        )
    p("(cdcr status --wide for every partition, run and discrepancy)", style="dim")


def _print_status(data: dict[str, Any]) -> None:
    t = Table(title="watermarks")
    for col in ("table", "reconciled_through", "state", "updated_at"):
        t.add_column(col)
    for m in data["watermarks"]:
        t.add_row(m["table"], str(m["reconciled_through"]), m["state"], m["updated_at"])
    _out.print(t)
    if data["gaps"]:
        g = Table(title="gaps: windows behind their closure time (newest first)")
        for col in (
            "table",
            "reconciled_through",
            "closed_through",
            "windows_behind",
            "newest windows",
        ):
            g.add_column(col)
        for x in data["gaps"]:
            newest = ", ".join(f"[{w['start'] or '-inf'}, {w['end']})" for w in x["windows"][:3])
            g.add_row(
                x["table"],
                str(x["reconciled_through"]),
                str(x["closed_through"]),
                str(x["windows_behind"]),
                newest,
            )
        _out.print(g)
    if data.get("priorities"):
        pr = Table(title="to verify next (highest priority first)")
        for col in ("priority", "table", "window", "status", "rows", "next"):
            pr.add_column(col)
        for x in data["priorities"]:
            pr.add_row(
                f"{x['priority']:g}",
                x["table"],
                f"[{x['window_start'] or '-inf'}, {x['window_end']})",
                x["status"],
                "?" if x["rows_changed"] is None else str(x["rows_changed"]),
                x["next"],
            )
        _out.print(pr)
    if data["kafka"]["log_ends"] == "unavailable":
        _err.print(
            "note: Kafka did not answer for log-end offsets, so idle partitions could "
            f"not be told apart from lagging ones; gaps may be understated "
            f"({data['kafka']['error']})",
            highlight=False,
        )
    o = Table(title="applied offsets")
    # consumed = applied + duplicate + stale + dead-lettered + no-op, per partition.
    for col in (
        "group",
        "topic",
        "partition",
        "next_offset",
        "last_event_time",
        "consumed",
        "applied",
        "duplicate",
        "stale",
        "dead-lettered",
        "no-op",
    ):
        o.add_column(col)
    for x in data["applied_offsets"]:
        o.add_row(
            x["consumer_group"],
            x["topic"],
            str(x["partition"]),
            str(x["next_offset"]),
            str(x["last_event_time"]),
            *(
                str(x[k])
                for k in (
                    "consumed",
                    "applied",
                    "skipped_duplicate",
                    "skipped_stale",
                    "dead_lettered",
                    "skipped_noop",
                )
            ),
        )
    _out.print(o)
    r = Table(title="recent runs")
    for col in ("started", "table", "window_end", "status"):
        r.add_column(col)
    for x in data["recent_runs"]:
        r.add_row(str(x["started"]), x["table_name"], str(x["window_end"]), x["status"])
    _out.print(r)
    d = Table(title="open discrepancies")
    for col in ("table", "kind", "count"):
        d.add_column(col)
    for x in data["open_discrepancies"]["counts"]:
        d.add_row(x["table_name"], x["kind"], str(x["n"]))
    _out.print(d)
