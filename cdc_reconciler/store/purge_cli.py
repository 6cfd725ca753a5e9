"""``cdcr purge``: remove old tombstones and audit rows (cdc_reconciler/store/purge.py says what is
kept). Self-contained: ``register(app)`` adds the command to a Typer app; a CdcrError raised here
is turned into ``FAILED: …`` by the CLI's edge."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from cdc_reconciler.errors import CdcrError
from cdc_reconciler.store.purge import PurgeResult


def as_json(r: PurgeResult) -> dict[str, Any]:
    return {
        "dry_run": r.dry_run,
        "tombstones_before": None
        if r.tombstones_before is None
        else r.tombstones_before.isoformat(),
        "audit_before": None if r.audit_before is None else r.audit_before.isoformat(),
        "deleted": {
            "tombstones": r.tombstones,
            "reconcile_runs": r.runs,
            "discrepancies": r.discrepancies,
            "extra_rows_archive": r.archived_rows,
            "dead_letters": r.dead_letters,
        },
    }


def run_purge(
    config: Path | None,
    tombstones_days: float | None,
    audit_days: float | None,
    dry_run: bool,
    now: datetime | None = None,
) -> PurgeResult:
    """Load the settings, connect to the target and purge. Raises CdcrError."""
    from cdc_reconciler import wiring
    from cdc_reconciler.config import load_settings
    from cdc_reconciler.store.purge import purge

    if tombstones_days is None and audit_days is None:
        raise CdcrError("nothing to purge: give --tombstones-older-than and/or --audit-older-than")
    engine = wiring.target_engine(load_settings(config))
    try:
        return purge(
            engine,
            now=now or datetime.now(UTC),
            tombstones_older_than=None
            if tombstones_days is None
            else timedelta(days=tombstones_days),
            audit_older_than=None if audit_days is None else timedelta(days=audit_days),
            dry_run=dry_run,
        )
    finally:
        engine.dispose()


def purge_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML file with settings and table mappings.",
            envvar="CDCR_CONFIG_FILE",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    tombstones_older_than: Annotated[
        float | None,
        typer.Option(
            "--tombstones-older-than",
            metavar="DAYS",
            min=0,
            help="Remove tombstones of deletes older than DAYS (longer than any replay you run).",
        ),
    ] = None,
    audit_older_than: Annotated[
        float | None,
        typer.Option(
            "--audit-older-than",
            metavar="DAYS",
            min=0,
            help="Remove reconcile runs, resolved review items, archived rows and dead-letter rows "
            "older than DAYS (runs with open items or unresolved failures stay).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; remove nothing.")
    ] = False,
    as_json_out: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON output.")
    ] = False,
) -> None:
    """Remove old tombstones and audit rows from the service's tables in the target."""
    result = run_purge(config, tombstones_older_than, audit_older_than, dry_run)
    if as_json_out:
        typer.echo(json.dumps(as_json(result), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    for name, n in as_json(result)["deleted"].items():
        typer.echo(f"{verb} {n} rows from cdcr.{name}")


def register(app: typer.Typer) -> None:
    app.command("purge")(purge_command)
