"""``cdcr purge``: remove old tombstones and audit rows from the service's tables
(cdc_reconciler/store/purge.py says what is always kept)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cdc_reconciler.cli import common
from cdc_reconciler.cli.common import ConfigOpt, JsonOpt, echo_json, say
from cdc_reconciler.errors import CdcrError

if TYPE_CHECKING:
    from cdc_reconciler.store.purge import PurgeResult


def as_json(r: PurgeResult) -> dict[str, Any]:
    return {
        "dry_run": r.dry_run,
        "tombstones_before": r.tombstones_before,
        "audit_before": r.audit_before,
        "deleted": {
            "tombstones": r.tombstones,
            "reconcile_runs": r.runs,
            "discrepancies": r.discrepancies,
            "extra_rows_archive": r.archived_rows,
            "dead_letters": r.dead_letters,
        },
    }


def purge(
    config: ConfigOpt = None,
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
    as_json_out: JsonOpt = False,
) -> None:
    """Remove old tombstones and audit rows from the service's tables in the target."""
    from cdc_reconciler import wiring
    from cdc_reconciler.store.purge import purge as run_purge

    if tombstones_older_than is None and audit_older_than is None:
        raise CdcrError("nothing to purge: give --tombstones-older-than and/or --audit-older-than")
    engine = wiring.target_engine(common.settings(config))
    try:
        result = run_purge(
            engine,
            now=datetime.now(UTC),
            tombstones_older_than=None
            if tombstones_older_than is None
            else timedelta(days=tombstones_older_than),
            audit_older_than=None if audit_older_than is None else timedelta(days=audit_older_than),
            dry_run=dry_run,
        )
    finally:
        engine.dispose()
    if as_json_out:
        echo_json(as_json(result), indent=2)
        return
    verb = "would remove" if dry_run else "removed"
    for name, n in as_json(result)["deleted"].items():
        say(f"{verb} {n} rows from cdcr.{name}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("purge")(purge)
