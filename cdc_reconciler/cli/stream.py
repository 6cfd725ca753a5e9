"""``cdcr run``, ``cdcr replay`` and ``cdcr tables sync``: thin layers over stream/command.py and
stream/replay.py."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cdc_reconciler.cli.common import (
    TIME_HELP,
    ConfigOpt,
    JsonOpt,
    echo_json,
    err_console,
    parse_time,
    progress,
    say,
    settings,
)
from cdc_reconciler.errors import CdcrError

if TYPE_CHECKING:
    from cdc_reconciler.stream.replay import ReplayResult
    from cdc_reconciler.stream.runner import RunSummary

# The counters of one table in the replay summary, in column order.
_REPLAY_COLUMNS = (
    ("applied", "applied"),
    ("duplicate", "skipped_duplicate"),
    ("stale", "skipped_stale"),
    ("dead-lettered", "dead_lettered"),
    ("no-op", "skipped_noop"),
)


def register(app: typer.Typer) -> None:
    tables_app = typer.Typer(
        help="Create target tables mirroring source tables.", no_args_is_help=True
    )
    app.add_typer(tables_app, name="tables")
    app.command()(run)
    app.command()(replay)
    tables_app.command("sync")(tables_sync)


def run(
    config: ConfigOpt = None,
    create_missing: Annotated[
        bool,
        typer.Option(
            "--create-missing",
            help="Create a target table that does not exist by mirroring the "
            "source table (needs CDCR_SOURCE__URL); without it, events for a missing table are "
            "dead-lettered.",
        ),
    ] = False,
    stop_when_idle: Annotated[
        float | None,
        typer.Option(
            "--stop-when-idle",
            metavar="SECONDS",
            help="Exit after SECONDS without new records (catch up, then stop). Default: run "
            "until SIGTERM/SIGINT.",
        ),
    ] = None,
    no_metrics: Annotated[
        bool, typer.Option("--no-metrics", help="Do not serve /metrics and /healthz.")
    ] = False,
    as_json: JsonOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Consume Debezium topics and apply the changes to the target, always on.

    Subscribes to the topics matching CDCR_KAFKA__TOPIC_PATTERN (a Python regex; the
    dead-letter topic is never consumed) as consumer group CDCR_KAFKA__GROUP_ID. Several
    `cdcr run` processes with the same group share the partitions.

    Each batch is decoded, redelivered changes are dropped (Redis), the newest change per
    key is kept, and all of it is written in ONE target transaction together with the
    applied offsets; only then are the change IDs recorded in Redis and the Kafka offsets
    committed. A write applies only if its source position is newer than the row's, so
    redelivery, duplicates and reordering never change the outcome. Undecodable or rejected
    events go to the dead-letter topic (CDCR_KAFKA__DEAD_LETTER_TOPIC, default
    PREFIX.cdcr.dlq) and cdcr.dead_letters, and the consumer goes on.

    Serves Prometheus metrics and /healthz on CDCR_METRICS__HOST:CDCR_METRICS__PORT
    (127.0.0.1:9464). SIGTERM or Ctrl-C stops after the current batch.

    --json: one line with the counters; first_record_at and last_commit_at are Unix seconds.

    Example: cdcr run --create-missing
    """
    from cdc_reconciler.stream import command

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = settings(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    summary = command.run(
        cfg,
        create_missing=create_missing,
        stop_when_idle_s=stop_when_idle,
        serve_metrics=not no_metrics,
        stop=stop,
    )
    data = run_summary_json(summary)
    if as_json:
        echo_json(data)
    else:
        say(
            "stopped ({stopped_by}): consumed {consumed}, applied {applied}, "
            "duplicate {skipped_duplicate}, stale {skipped_stale}, "
            "dead-lettered {dead_lettered}, no-op {skipped_noop}".format(**data),
            err=True,
        )


def run_summary_json(summary: RunSummary) -> dict[str, Any]:
    t = summary.totals
    return {
        "batches": summary.batches,
        "consumed": t.consumed,
        "applied": t.applied,
        "skipped_duplicate": t.skipped_duplicate,
        "skipped_stale": t.skipped_stale,
        "dead_lettered": t.dead_lettered,
        "skipped_noop": t.skipped_noop,
        "stopped_by": summary.stopped_by,
        "first_record_at": summary.first_record_at,
        "last_commit_at": summary.last_commit_at,
        "events_per_s": summary.rate(),
    }


def replay(
    start: Annotated[
        str,
        typer.Option("--from", metavar="TIME", help=f"Start of the range. {TIME_HELP}"),
    ],
    end: Annotated[
        str,
        typer.Option("--to", metavar="TIME", help=f"End of the range (exclusive). {TIME_HELP}"),
    ],
    table: Annotated[
        list[str] | None,
        typer.Option("--table", help="Only this source table (schema.table); repeatable."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Apply inside transactions that are rolled back: report what "
            "would change, write nothing.",
        ),
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-apply the change events Kafka holds for a time range, through the same engine.

    Reads each matching topic partition from the first record at or after --from (Kafka
    record time, offsets by timestamp) until a record at or after --to or the log end, and
    applies the records with the same versioned writes as `cdcr run`: rows that have newer
    changes are left alone, so replaying an old window is always safe. Uses its own
    consumer and commits no offsets: the live consumers are not disturbed.

    Prints a summary per table (applied, duplicate, stale, dead-lettered); --json for
    scripts. Example:

        cdcr replay --from 2026-11-22T10:00Z --to 2026-11-22T11:00Z --table public.orders
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    from cdc_reconciler.stream import replay as replay_mod

    cfg = settings(config)
    t0, t1 = parse_time(start, "--from"), parse_time(end, "--to")
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    with progress(*columns, TimeRemainingColumn(), hidden=as_json) as bar:
        task = bar.add_task("replaying", total=None)
        result = replay_mod.replay(
            cfg,
            t0,
            t1,
            tables=list(table or []),
            dry_run=dry_run,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if as_json:
        echo_json({"from": t0, "to": t1, "dry_run": dry_run, **result.as_json()})
        return
    _print_replay(result, t0, t1, dry_run)
    if result.incomplete:
        raise CdcrError(
            "partitions stopped returning records before their end: " + ", ".join(result.incomplete)
        )


def _print_replay(result: ReplayResult, t0: datetime, t1: datetime, dry_run: bool) -> None:
    from rich.table import Table

    out = Table(
        title=f"replay {t0.isoformat()} .. {t1.isoformat()}"
        + (" (dry run: nothing written)" if dry_run else "")
    )
    out.add_column("table", justify="left")
    for label, _ in _REPLAY_COLUMNS:
        out.add_column(label, justify="right")
    for name, c in sorted(result.by_table.items()):
        out.add_row(name, *(str(c.get(k, 0)) for _, k in _REPLAY_COLUMNS))
    err_console.print(out)
    t = result.totals
    say(
        f"consumed {t.consumed} from {len(result.partitions)} partition(s); no-op {t.skipped_noop}",
        err=True,
    )


def tables_sync(
    tables: Annotated[
        list[str] | None,
        typer.Argument(
            help="Source tables as schema.table (default: every table in the config file)."
        ),
    ] = None,
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the DDL only.")] = False,
) -> None:
    """Create missing target tables by mirroring the source definitions, plus the engine's
    columns (_cdc_pos, _cdc_ts). Existing tables are left alone."""
    from cdc_reconciler.stream import command

    ddl = command.sync_tables(settings(config), list(tables or []), dry_run=dry_run)
    for stmt in ddl:
        typer.echo(stmt + ";")
    say(f"{'would create' if dry_run else 'created'} {len(ddl)} table(s)", err=True)
