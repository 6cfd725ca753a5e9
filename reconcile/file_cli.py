"""``cdcr reconcile-file``: a thin typer layer over reconcile/file_command.py.

Exit status follows ``diff``: 0 the file and the table agree, 1 differences found, 2 an error
(a ``FAILED:`` line on stderr, or a usage error from the option parser)."""

# No `from __future__ import annotations`: typer reads the option types at registration.

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cdc_reconciler.errors import CdcrError

EXIT_SAME = 0
EXIT_DIFFERENT = 1
EXIT_ERROR = 2

_out = Console()
_err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add ``reconcile-file`` to the ``cdcr`` application."""
    from cdc_reconciler.cli import ConfigOpt, JsonOpt, settings_or_fail

    @app.command("reconcile-file")
    def reconcile_file(
        path: Annotated[Path, typer.Argument(help="The CSV, Parquet or JSON-lines file.")],
        table: Annotated[str, typer.Option("--table", "-t", help="Target table as schema.table.")],
        key: Annotated[
            str,
            typer.Option(
                "--key", "-k", help="Key column(s) of the table, comma-separated: id or a,b."
            ),
        ],
        map_: Annotated[
            list[str] | None,
            typer.Option(
                "--map",
                "-m",
                help="FILE_COLUMN=TABLE_COLUMN; repeat. Other columns match by name "
                "(then ignoring case).",
            ),
        ] = None,
        fmt: Annotated[
            str | None,
            typer.Option("--format", "-f", help="csv, parquet or jsonl (default: from the name)."),
        ] = None,
        where: Annotated[
            str | None,
            typer.Option(
                "--where",
                help="Only file rows matching this DuckDB condition on the file's columns "
                "(CSV columns are text: cast them, e.g. CAST(amount AS DOUBLE) > 10).",
            ),
        ] = None,
        db_where: Annotated[
            str | None,
            typer.Option(
                "--db-where",
                help="Only table rows matching this PostgreSQL condition on the table's "
                "columns (runs in a read-only transaction).",
            ),
        ] = None,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Write nothing to the database (no backfill, no audit row, no backup); "
                "--export-missing still writes its file.",
            ),
        ] = False,
        backfill_db: Annotated[
            bool,
            typer.Option(
                "--backfill-db",
                help="Insert the rows missing from the table through the versioned writer, "
                "after a CSV backup of the affected key ranges. Never updates or deletes.",
            ),
        ] = False,
        export_missing: Annotated[
            Path | None,
            typer.Option(
                "--export-missing",
                help="Write the rows found only in the table to this .csv, .jsonl or .parquet "
                "file.",
            ),
        ] = None,
        backup_dir: Annotated[
            Path | None,
            typer.Option(
                "--backup-dir", help="Where --backfill-db writes its backup (default: beside PATH)."
            ),
        ] = None,
        limit: Annotated[
            int,
            typer.Option(
                "--limit", min=0, help="List at most this many differences (counts are exact)."
            ),
        ] = 1000,
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Compare a CSV/Parquet/JSON-lines file with a table of the target database, both
        ways: rows missing from the table, rows missing from the file, and rows in both whose
        columns differ (named). Values are compared after one normalisation (numbers, floats,
        timestamps to UTC, booleans, empty = NULL; see docs/reconcile-file.md).

        Exit status: 0 same, 1 differences found, 2 error."""
        from cdc_reconciler.reconcile.file_command import FileRequest
        from cdc_reconciler.reconcile.file_command import reconcile_file as run

        settings = settings_or_fail(config)
        req = FileRequest(
            path=path,
            table=table,
            key=tuple(k.strip() for k in key.split(",") if k.strip()),
            maps=tuple(map_ or ()),
            format=fmt,
            where=where,
            db_where=db_where,
            dry_run=dry_run,
            backfill=backfill_db,
            export_missing=export_missing,
            backup_dir=backup_dir,
            limit=limit,
        )
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=_err,
                transient=True,
                disable=as_json,
            ) as progress:
                task = progress.add_task(f"reading {path.name}", total=100)
                report = run(
                    settings,
                    req,
                    on_phase=lambda d: progress.update(task, description=d, completed=0),
                    on_file_progress=lambda pct: progress.update(task, completed=pct),
                )
        except CdcrError as exc:
            _err.print(f"[bold red]FAILED:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=EXIT_ERROR) from None
        if as_json:
            typer.echo(json.dumps(report.as_json(), indent=2, default=str))
        else:
            _print(report.as_json())
        raise typer.Exit(code=report.exit_code)


def _v(value: object) -> str:
    return "NULL" if value is None else repr(value)


def _print(data: dict[str, object]) -> None:
    f = data["file"]
    t = data["table"]
    c = data["counts"]
    cols = data["columns"]
    assert isinstance(f, dict) and isinstance(t, dict) and isinstance(c, dict)
    assert isinstance(cols, dict)
    # Imported here, not at the top: file_diff pulls in SQLAlchemy and duckdb, which every other
    # cdcr command (lag above all) must not pay for at start-up.
    from cdc_reconciler.reconcile.file_diff import KINDS

    title = "reconcile-file (dry run: nothing written)" if data["dry_run"] else "reconcile-file"
    tbl = Table(title=title)
    labels = {
        "missing_in_table": "file only",
        "missing_in_file": "table only",
        "mismatched": "mismatched",
        "duplicate_in_file": "dup in file",
        "duplicate_in_table": "dup in table",
    }
    for col in ("file rows", "table rows", *(labels[k] for k in KINDS), "bad key"):
        tbl.add_column(col)
    tbl.add_row(
        str(f["rows"]),
        str(t["rows"]),
        *(str(c[k]) for k in KINDS),
        str(f["bad_key_rows"]),
    )
    _out.print(tbl)
    _out.print(
        f"{f['path']} ({f['format']}) vs {t['name']}: compared {', '.join(cols['compared'])}",
        highlight=False,
    )
    if cols["ignored_file_columns"]:
        _out.print(
            f"file columns not in the table (ignored): {', '.join(cols['ignored_file_columns'])}",
            highlight=False,
        )
    if cols["not_compared_table_columns"]:
        _out.print(
            "table columns not in the file (not compared): "
            f"{', '.join(cols['not_compared_table_columns'])}",
            highlight=False,
        )
    diffs = data["differences"]
    assert isinstance(diffs, list)
    for d in diffs:
        key = ", ".join(f"{k}={v}" for k, v in d["key"].items())
        extra = ""
        if d.get("columns"):
            extra = " " + "; ".join(
                f"{n}: file {_v(d['file_row'][n])} table {_v(d['table_row'][n])}"
                for n in d["columns"]
            )
        if d["kind"] in ("duplicate_in_file", "duplicate_in_table"):
            extra = f" ({d['occurrences']} rows)"
        _out.print(f"  {d['kind']} {key}{extra}", highlight=False)
    if data["differences_truncated"]:
        _out.print("  … more differences not listed (raise --limit)", highlight=False)
    for ex in f["bad_key_examples"]:
        _out.print(f"  file row with an unusable key: {ex}", highlight=False)
    b = data["backfill"]
    if isinstance(b, dict):
        verb = "would insert" if data["dry_run"] else "inserted"
        n = b["planned"] if data["dry_run"] else b["inserted"]
        _out.print(f"backfill: {verb} {n} rows at position 0", highlight=False)
        if b["backup"]:
            _out.print(f"backup of the affected key ranges: {b['backup']}", highlight=False)
        if b["inserted_keys_file"]:
            _out.print(f"inserted keys: {b['inserted_keys_file']}", highlight=False)
        for s in b["skipped"]:
            _out.print(f"  skipped key={s['key']}: {s['reason']}", highlight=False)
    e = data["export"]
    if isinstance(e, dict):
        _out.print(f"exported {e['rows']} table-only rows to {e['path']}", highlight=False)
