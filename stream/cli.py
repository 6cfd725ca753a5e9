"""``cdcr run`` and ``cdcr tables sync``."""

import json
import logging
import signal
import threading
from typing import Annotated

import typer

from cdc_reconciler.cli import ConfigOpt, JsonOpt, err_console, fail, settings_or_fail
from cdc_reconciler.errors import CdcrError


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
        <prefix>.cdcr.dlq) and cdcr.dead_letters, and the consumer goes on.

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
