"""``cdcr status``: the service's state from its tables in the target database, as a short
summary per table and consumer group (default), full tables (``--wide``) or JSON."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cdc_reconciler.cli.common import (
    ConfigOpt,
    JsonOpt,
    ago,
    echo_json,
    out_console,
    say,
    settings,
    short_time,
)

if TYPE_CHECKING:
    from cdc_reconciler.reconcile.status import Gap, StatusReport
    from cdc_reconciler.store.watermarks import Watermark

Row = dict[str, Any]


def register(app: typer.Typer) -> None:
    """Add ``status`` to the ``cdcr`` application."""
    app.command()(status)


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
    from cdc_reconciler.reconcile import status as reconcile_status

    report = reconcile_status.status(settings(config))
    if as_json:
        echo_json(report.as_dict(), indent=2)
    elif wide:
        print_wide(report)
    else:
        print_summary(report)


def _line(text: str) -> None:
    """A line of plain text: names and values are never read as markup."""
    say(text, markup=False)


# -- the summary ----------------------------------------------------------------------------------


def print_summary(report: StatusReport) -> None:
    """The default ``cdcr status``: a few short lines per table and group, readable at 80
    columns (names longer than the terminal wrap; nothing else does)."""
    _print_tables(report)
    _print_priorities(report.priorities, report.priorities_total)
    _print_blocked(report.blocked)
    _print_groups(report.applied_offsets, report.now)
    review = report.review()
    if review.get("open_total"):
        _line(
            f"review queue: {review['open_total']} open, oldest "
            f"{ago(review['oldest_age_s'] or 0)} old (cdcr review list)"
        )
    if report.kafka_unavailable:
        say(
            "note: Kafka did not answer for log-end offsets; windows behind may be understated",
            err=True,
        )
    out_console.print("(cdcr status --wide for every partition, run and discrepancy)", style="dim")


def _by_table(rows: Iterable[Row]) -> dict[str, Row]:
    return {x["table"]: x for x in rows}


def _open_items(report: StatusReport) -> dict[str, dict[str, int]]:
    """Open review items per table and kind."""
    queue: dict[str, dict[str, int]] = {}
    for q in report.review_open:
        queue.setdefault(q["table"], {})[q["kind"]] = q["open"]
    return queue


def _print_tables(report: StatusReport) -> None:
    marks = {m.table: m for m in report.watermarks}
    gaps = {g.table: g for g in report.gaps}
    integ = _by_table(report.integrity)
    ver = _by_table(report.verification)
    queue = _open_items(report)
    names = sorted({*marks, *gaps, *integ, *queue})
    say("[bold]tables[/]" if names else "tables: none reconciled yet")
    for name in names:
        say(name, markup=False, soft_wrap=True)
        _print_table_state(marks.get(name), gaps.get(name), queue.get(name, {}))
        if name in integ:
            _line("  " + "; ".join(_integrity_parts(integ[name])))
        if name in ver:  # after the drift line, which scripts expect second
            _print_verification(ver[name])


def _behind(gap: Gap | None) -> Any:
    if gap is None:
        return 0
    # Never reconciled and no first change known: the whole table.
    return "all" if gap.windows_behind is None else gap.windows_behind


def _print_table_state(mark: Watermark | None, gap: Gap | None, kinds: dict[str, int]) -> None:
    total = sum(kinds.values())
    open_txt = f"{total} open"
    if kinds:
        open_txt += " (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")"
    state = "" if mark is None or mark.state == "idle" else f" · {mark.state}"
    through = short_time(mark.reconciled_through if mark else None)
    line = f"  verified through {through} · {_behind(gap)} behind · {open_txt}{state}"
    if len(line) > 78 and kinds:  # the breakdown of the open items on a line of its own
        _line(line.replace(open_txt, f"{total} open"))
        line = "  open: " + open_txt.split("(", 1)[1].rstrip(")")
    _line(line)


def _integrity_parts(x: Row) -> list[str]:
    parts = []
    if x["schema_drift"]:
        cols = ", ".join(f"{d['column']} ({d['problem']})" for d in x["schema_drift"][:3])
        more = len(x["schema_drift"]) - 3
        parts.append(f"drift: {cols}" + (f" +{more}" if more > 0 else ""))
    if x["orphans"]:
        parts.append(f"{x['orphans']} orphan rows")
    return parts


def _print_verification(v: Row) -> None:
    if not v["windows"]:
        return
    age = v["oldest_verified_age_s"]
    _line(
        "  oldest verification "
        + ("never recorded" if age is None else f"{ago(age)} ago")
        + f" (window from {short_time(v['window']['start'] or v['window']['end'])}; "
        f"{v['due']} due)"
    )


def _print_priorities(prio: list[Row], total: int | None) -> None:
    if not prio:
        return
    total = len(prio) if total is None else total
    say(
        f"[bold]to verify next[/] ({total} window{'s' if total != 1 else ''}, "
        "highest priority first)"
    )
    for x in prio[:5]:
        # Wrapped at the terminal's width (names included); --json has each command whole.
        n_rows = "?" if x["rows_changed"] is None else str(x["rows_changed"])
        start = "-inf" if x["window_start"] is None else short_time(x["window_start"])
        _line(
            f"  {x['priority']:g} {x['status']} {x['table']} [{start}, "
            f"{short_time(x['window_end'])}) {n_rows} rows, closed {ago(x['age_s'])} ago"
        )
        _line(f"    {x['next']}")


def _print_blocked(blocked: list[Row]) -> None:
    if blocked:
        say("[bold red]blocked tables[/] (every event dead-lettered; see docs/apply.md)")
    for b in blocked:
        say(f"  {b['topic']}", markup=False, soft_wrap=True)
        _line(
            f"    {b['kind']}: {b['dead_lettered']} dead letters, last {short_time(b['last_seen'])}"
        )
        say(f"    {(b['last_error'] or '')[:200]}", markup=False, soft_wrap=True)


def _print_groups(offsets: list[Row], now: datetime) -> None:
    groups: dict[str, list[Row]] = {}
    for o in offsets:
        groups.setdefault(o["consumer_group"], []).append(o)
    if groups:
        say("[bold]consumer groups[/]")
    for g, rows in sorted(groups.items()):
        say(g, markup=False, soft_wrap=True)
        _print_group(rows, now)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _print_group(rows: list[Row], now: datetime) -> None:
    times: list[datetime] = [r["last_event_time"] for r in rows if r["last_event_time"]]
    oldest = min(times) if times else None
    topics = len({r["topic"] for r in rows})
    dlq = sum(int(r["dead_lettered"] or 0) for r in rows)
    lag = (
        "nothing applied yet"
        if oldest is None
        else f"events through {short_time(oldest)} ({ago((now - oldest).total_seconds())} ago)"
    )
    _line(f"  {_plural(topics, 'topic')}, {_plural(len(rows), 'partition')} · {lag}")
    if dlq:
        _line(f"  {dlq} events dead-lettered (cdcr status --wide)")


# -- --wide ---------------------------------------------------------------------------------------

# The applied-offsets counters, in column order: consumed = applied + duplicate + stale +
# dead-lettered + no-op, per partition.
_OFFSET_COUNTERS = (
    ("consumed", "consumed"),
    ("applied", "applied"),
    ("duplicate", "skipped_duplicate"),
    ("stale", "skipped_stale"),
    ("dead-lettered", "dead_lettered"),
    ("no-op", "skipped_noop"),
)


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[str]]) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    return t


def print_wide(report: StatusReport) -> None:
    """``cdcr status --wide``: every watermark, gap, priority, partition, run and discrepancy."""
    p = out_console.print
    # The partition and run rows as --json writes them (instants in ISO form).
    doc = report.as_dict()
    p(_watermarks(doc["watermarks"]))
    if report.gaps:
        p(_gaps(doc["gaps"]))
    if report.priorities:
        p(_priorities(doc["priorities"]))
    if report.kafka_unavailable:
        say(
            "note: Kafka did not answer for log-end offsets, so idle partitions could "
            f"not be told apart from lagging ones; gaps may be understated "
            f"({report.kafka.error})",
            err=True,
        )
    p(_applied_offsets(doc["applied_offsets"]))
    p(
        _table(
            "recent runs",
            ("started", "table", "window_end", "status"),
            (
                (str(x["started"]), x["table_name"], str(x["window_end"]), x["status"])
                for x in doc["recent_runs"]
            ),
        )
    )
    p(
        _table(
            "open discrepancies",
            ("table", "kind", "count"),
            ((x["table_name"], x["kind"], str(x["n"])) for x in report.open_counts),
        )
    )


def _watermarks(marks: list[Row]) -> Table:
    return _table(
        "watermarks",
        ("table", "reconciled_through", "state", "updated_at"),
        ((m["table"], str(m["reconciled_through"]), m["state"], m["updated_at"]) for m in marks),
    )


def _gaps(gaps: list[Row]) -> Table:
    def newest(x: Row) -> str:
        return ", ".join(f"[{w['start'] or '-inf'}, {w['end']})" for w in x["windows"][:3])

    return _table(
        "gaps: windows behind their closure time (newest first)",
        ("table", "reconciled_through", "closed_through", "windows_behind", "newest windows"),
        (
            (
                x["table"],
                str(x["reconciled_through"]),
                str(x["closed_through"]),
                str(x["windows_behind"]),
                newest(x),
            )
            for x in gaps
        ),
    )


def _priorities(prio: list[Row]) -> Table:
    return _table(
        "to verify next (highest priority first)",
        ("priority", "table", "window", "status", "rows", "next"),
        (
            (
                f"{x['priority']:g}",
                x["table"],
                f"[{x['window_start'] or '-inf'}, {x['window_end']})",
                x["status"],
                "?" if x["rows_changed"] is None else str(x["rows_changed"]),
                x["next"],
            )
            for x in prio
        ),
    )


def _applied_offsets(offsets: list[Row]) -> Table:
    return _table(
        "applied offsets",
        (
            "group",
            "topic",
            "partition",
            "next_offset",
            "last_event_time",
            *(label for label, _ in _OFFSET_COUNTERS),
        ),
        (
            (
                x["consumer_group"],
                x["topic"],
                str(x["partition"]),
                str(x["next_offset"]),
                str(x["last_event_time"]),
                *(str(x[k]) for _, k in _OFFSET_COUNTERS),
            )
            for x in offsets
        ),
    )
