"""``cdcr run`` and ``cdcr tables sync``."""

import json
import logging
import signal
import threading
from datetime import UTC, datetime
from typing import Annotated

import typer

from cdc_reconciler.cli import ConfigOpt, JsonOpt, err_console, fail, settings_or_fail
from cdc_reconciler.errors import CdcrError


def parse_time(text: str, option: str) -> datetime:
    """ISO 8601 to an aware UTC datetime; a time without an offset is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CdcrError(
            f"{option}: {text!r} is not an ISO 8601 time (e.g. 2026-11-22T10:00:00Z)"
        ) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def register(app: typer.Typer) -> None:
    tables_app = typer.Typer(
        help="Create target tables mirroring source tables.", no_args_is_help=True
    )
    app.add_typer(tables_app, name="tables")

    @app.command()
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

        Example: cdcr run --create-missing
        """
        from cdc_reconciler.stream import command

        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        settings = settings_or_fail(config)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        try:
            summary = command.run(
                settings,
                create_missing=create_missing,
                stop_when_idle_s=stop_when_idle,
                serve_metrics=not no_metrics,
                stop=stop,
            )
        except CdcrError as exc:
            fail(exc)
        t = summary.totals
        data = {
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
        if as_json:
            typer.echo(json.dumps(data))
        else:
            err_console.print(
                "stopped ({stopped_by}): consumed {consumed}, applied {applied}, "
                "duplicate {skipped_duplicate}, stale {skipped_stale}, "
                "dead-lettered {dead_lettered}, no-op {skipped_noop}".format(**data)
            )

    @app.command()
    def replay(
        start: Annotated[
            str,
            typer.Option(
                "--from",
                metavar="TIME",
                help="Start of the range, ISO 8601 (UTC if no offset), e.g. 2026-11-22T10:00Z.",
            ),
        ],
        end: Annotated[
            str,
            typer.Option("--to", metavar="TIME", help="End of the range (exclusive), ISO 8601."),
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
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from cdc_reconciler.stream import replay as replay_mod

        settings = settings_or_fail(config)
        try:
            t0, t1 = parse_time(start, "--from"), parse_time(end, "--to")
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
                disable=as_json,
                transient=True,
            ) as bar:
                task = bar.add_task("replaying", total=None)
                result = replay_mod.replay(
                    settings,
                    t0,
                    t1,
                    tables=list(table or []),
                    dry_run=dry_run,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
        except CdcrError as exc:
            fail(exc)
        data = {
            "from": t0.isoformat(),
            "to": t1.isoformat(),
            "dry_run": dry_run,
            **result.as_json(),
        }
        if as_json:
            typer.echo(json.dumps(data))
            return
        from rich.table import Table

        out = Table(
            title=f"replay {t0.isoformat()} .. {t1.isoformat()}"
            + (" (dry run: nothing written)" if dry_run else "")
        )
        for col in ("table", "applied", "duplicate", "stale", "dead-lettered", "no-op"):
            out.add_column(col, justify="left" if col == "table" else "right")
        for name, c in sorted(result.by_table.items()):
            out.add_row(
                name,
                *(
                    str(c.get(k, 0))
                    for k in (
                        "applied",
                        "skipped_duplicate",
                        "skipped_stale",
                        "dead_lettered",
                        "skipped_noop",
                    )
                ),
            )
        err_console.print(out)
        t = result.totals
        err_console.print(
            f"consumed {t.consumed} from {len(result.partitions)} partition(s); "
            f"no-op {t.skipped_noop}"
        )
        if result.incomplete:
            fail(
                CdcrError(
                    f"partitions stopped returning records before their end: "
                    f"{', '.join(result.incomplete)}"
                )
            )

    @tables_app.command("sync")
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

        settings = settings_or_fail(config)
        try:
            ddl = command.sync_tables(settings, list(tables or []), dry_run=dry_run)
        except CdcrError as exc:
            fail(exc)
        for stmt in ddl:
            typer.echo(stmt + ";")
        err_console.print(f"{'would create' if dry_run else 'created'} {len(ddl)} table(s)")
