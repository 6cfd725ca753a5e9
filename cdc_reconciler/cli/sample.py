"""``cdcr reconcile --sample N``: estimate the mismatch rate of tables from N random keys each."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cdc_reconciler.cli.common import echo_json, err_console, out_console

if TYPE_CHECKING:
    from cdc_reconciler.config import Settings
    from cdc_reconciler.reconcile.sample import SampleReport


def sample_tables(
    cfg: Settings,
    n: int,
    tables: list[str] | tuple[()],
    start: datetime | None,
    end: datetime | None,
    seed: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    from cdc_reconciler.reconcile import command

    with err_console.status("sampling"):
        reports = command.sample(
            cfg, n, tables=tables, start=start, end=end, seed=seed, dry_run=dry_run
        )
    if as_json:
        echo_json(
            {"dry_run": dry_run, "sample": True, "tables": [r.as_json() for r in reports]},
            indent=2,
        )
    else:
        _print_samples(reports, dry_run)
    if any(r.differences for r in reports):
        raise typer.Exit(code=1)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3g}%"


def _print_samples(reports: list[SampleReport], dry_run: bool) -> None:
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
    out_console.print(tbl)
    for r in reports:
        for d in r.differences[:50]:
            cols = f" columns={','.join(d.columns)}" if d.columns else ""
            out_console.print(
                f"  {r.table} {d.kind.value} key={list(d.key)}{cols}", highlight=False
            )
        if r.note:
            out_console.print(f"{r.table}: {r.note}", highlight=False)
        out_console.print(
            f"{r.table}: seed {r.seed}; population ≈ {r.population} keys "
            f"(source {r.source_rows}, target {r.target_rows})",
            highlight=False,
        )
