"""``cdcr reconcile-file``: a thin layer over reconcile/file_command.py.

Exit status follows ``diff``: 0 the file and the table agree, 1 differences found, 2 an error
(a ``FAILED:`` line on stderr, or a usage error from the option parser)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cdc_reconciler.cli.common import (
    ConfigOpt,
    JsonOpt,
    echo_json,
    error_exit,
    out_console,
    progress,
    say,
    settings,
)

EXIT_SAME = 0
EXIT_DIFFERENT = 1
EXIT_ERROR = 2

Doc = dict[str, Any]

# How each kind of difference is headed in the counts table.
_LABELS = {
    "missing_in_table": "file only",
    "missing_in_file": "table only",
    "mismatched": "mismatched",
    "duplicate_in_file": "dup in file",
    "duplicate_in_table": "dup in table",
}


def register(app: typer.Typer) -> None:
    """Add ``reconcile-file`` to the ``cdcr`` application."""
    app.command("reconcile-file")(reconcile_file)


def reconcile_file(
    path: Annotated[Path, typer.Argument(help="The CSV, Parquet or JSON-lines file.")],
    table: Annotated[str, typer.Option("--table", "-t", help="Target table as schema.table.")],
    key: Annotated[
        str,
        typer.Option("--key", "-k", help="Key column(s) of the table, comma-separated: id or a,b."),
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
            help="Write the rows found only in the table to this .csv, .jsonl or .parquet file.",
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

    error_exit(EXIT_ERROR)
    cfg = settings(config)
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
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with progress(*columns, TimeElapsedColumn(), hidden=as_json) as bar:
        task = bar.add_task(f"reading {path.name}", total=100)
        report = run(
            cfg,
            req,
            on_phase=lambda d: bar.update(task, description=d, completed=0),
            on_file_progress=lambda pct: bar.update(task, completed=pct),
        )
    if as_json:
        echo_json(report.as_json(), indent=2)
    else:
        print_report(report.as_json())
    raise typer.Exit(code=report.exit_code)


def _v(value: object) -> str:
    return "NULL" if value is None else repr(value)


def print_report(data: Doc) -> None:
    """The human form of the report (the same document as --json)."""
    _print_counts(data)
    _print_columns(data)
    _print_differences(data["differences"], data["differences_truncated"])
    for ex in data["file"]["bad_key_examples"]:
        say(f"  file row with an unusable key: {ex}")
    if isinstance(data["backfill"], dict):
        _print_backfill(data["backfill"], data["dry_run"])
    e = data["export"]
    if isinstance(e, dict):
        say(f"exported {e['rows']} table-only rows to {e['path']}")


def _print_counts(data: Doc) -> None:
    # Imported here, not at the top: file_diff pulls in SQLAlchemy and duckdb, which every other
    # cdcr command (lag above all) must not pay for at start-up.
    from cdc_reconciler.reconcile.file_diff import KINDS

    f, t, c = data["file"], data["table"], data["counts"]
    title = "reconcile-file (dry run: nothing written)" if data["dry_run"] else "reconcile-file"
    tbl = Table(title=title)
    for col in ("file rows", "table rows", *(_LABELS[k] for k in KINDS), "bad key"):
        tbl.add_column(col)
    tbl.add_row(str(f["rows"]), str(t["rows"]), *(str(c[k]) for k in KINDS), str(f["bad_key_rows"]))
    out_console.print(tbl)


def _print_columns(data: Doc) -> None:
    f, t, cols = data["file"], data["table"], data["columns"]
    say(f"{f['path']} ({f['format']}) vs {t['name']}: compared {', '.join(cols['compared'])}")
    if cols["ignored_file_columns"]:
        say(f"file columns not in the table (ignored): {', '.join(cols['ignored_file_columns'])}")
    if cols["not_compared_table_columns"]:
        say(
            "table columns not in the file (not compared): "
            f"{', '.join(cols['not_compared_table_columns'])}"
        )


def _difference_detail(d: Doc) -> str:
    if d["kind"] in ("duplicate_in_file", "duplicate_in_table"):
        return f" ({d['occurrences']} rows)"
    if d.get("columns"):
        return " " + "; ".join(
            f"{n}: file {_v(d['file_row'][n])} table {_v(d['table_row'][n])}" for n in d["columns"]
        )
    return ""


def _print_differences(diffs: list[Doc], truncated: bool) -> None:
    for d in diffs:
        key = ", ".join(f"{k}={v}" for k, v in d["key"].items())
        say(f"  {d['kind']} {key}{_difference_detail(d)}")
    if truncated:
        say("  … more differences not listed (raise --limit)")


def _print_backfill(b: Doc, dry_run: bool) -> None:
    verb = "would insert" if dry_run else "inserted"
    n = b["planned"] if dry_run else b["inserted"]
    say(f"backfill: {verb} {n} rows at position 0")
    if b["backup"]:
        say(f"backup of the affected key ranges: {b['backup']}")
    if b["inserted_keys_file"]:
        say(f"inserted keys: {b['inserted_keys_file']}")
    for s in b["skipped"]:
        say(f"  skipped key={s['key']}: {s['reason']}")
