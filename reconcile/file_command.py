"""``cdcr reconcile-file``: a data file against a table of the target database, both ways.

One public function, :func:`reconcile_file`, after the other commands in reconcile/command.py:
it takes the settings, builds its clients here, and raises CdcrError for anything the user can
act on (missing file, unknown column, bad key, a table without the engine columns when asked to
backfill, …).

Writes, only when asked and never with ``dry_run``:

- ``backfill``: rows in the file and not in the table are inserted through the versioned writer
  (:func:`cdc_reconciler.connectors.postgres.write.write_batch`) at **position 0**. Real changes carry
  positions above 0, so any real change — a live event, a replay, a repair — beats a backfilled
  row, and the writer's guard ``t._cdc_pos < EXCLUDED._cdc_pos`` can never hold against an
  existing row (positions are never negative): a backfill never updates and never deletes. A key
  with a tombstone (deleted in the source) is not brought back. A key whose row appeared since
  the diff is left as it is. Each such key is reported as skipped, with the reason. Before the
  insert, the table's current rows in the affected key ranges are written to a CSV backup
  (``COPY … CSV HEADER``; restore with ``\\copy``), and after it the inserted keys are written
  beside it, so the backfill can be undone.
- an audit row in ``cdcr.reconcile_runs`` (status ``file_clean``, ``file_differences``,
  ``file_backfilled`` or ``failed``; the counts as JSON; window_end = the run's start).

``export_missing`` writes the rows found only in the table to a file (``.csv``, ``.jsonl`` or
``.parquet``); it reads only, so it runs under ``dry_run`` too.
"""

from __future__ import annotations

import csv
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from cdc_reconciler import wiring
from cdc_reconciler.config import Settings
from cdc_reconciler.connectors import files
from cdc_reconciler.connectors.postgres import catalog
from cdc_reconciler.connectors.postgres.reflect import reflect_table
from cdc_reconciler.connectors.postgres.sql import quote_ident
from cdc_reconciler.connectors.postgres.table import TargetTable
from cdc_reconciler.connectors.postgres.write import RowWrite, write_batch
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.reconcile.checksum import split_name
from cdc_reconciler.reconcile.file_diff import (
    DUPLICATE_IN_FILE,
    KINDS,
    MISSING_IN_FILE,
    MISSING_IN_TABLE,
    FileDifference,
    FileDiffOptions,
    FileDiffResult,
    Leaf,
    Mapping,
    diff_file,
    start_snapshot,
)
from cdc_reconciler.reconcile.file_normalize import (
    PG_SESSION,
    ColumnType,
    Kind,
    hash60,
    joined,
    pg_canonical,
)
from cdc_reconciler.store import runs
from cdc_reconciler.store.runs import RunStatus

BACKFILL_POSITION = 0
ENGINE_PREFIX = "_cdc_"
EXPORT_FORMATS = (".csv", ".jsonl", ".parquet")
_KEYS_PER_QUERY = 1000


@dataclass(frozen=True, slots=True)
class FileRequest:
    path: Path
    table: str
    key: tuple[str, ...]
    maps: tuple[str, ...] = ()
    format: str | None = None
    where: str | None = None
    db_where: str | None = None
    dry_run: bool = False
    backfill: bool = False
    export_missing: Path | None = None
    backup_dir: Path | None = None
    limit: int = 1000  # differences listed in the report (counts are always exact)


@dataclass(slots=True)
class BackfillOutcome:
    planned: int = 0
    inserted: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    backup: str | None = None
    inserted_keys_file: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "inserted": self.inserted,
            "skipped": self.skipped,
            "backup": self.backup,
            "inserted_keys_file": self.inserted_keys_file,
            "position": str(BACKFILL_POSITION),
        }


@dataclass(slots=True)
class FileReport:
    run_id: uuid.UUID
    request: FileRequest
    mapping: Mapping
    format: str
    result: FileDiffResult
    ignored_file_columns: list[str]
    not_compared_table_columns: list[str]
    started: datetime
    finished: datetime | None = None
    backfill: BackfillOutcome | None = None
    exported: int | None = None

    @property
    def status(self) -> str:
        if self.result.clean:
            return "clean"
        return "differences"

    @property
    def exit_code(self) -> int:
        """diff's convention: 0 the file and the table agree, 1 differences found (errors: 2)."""
        return 0 if self.result.clean else 1

    def counts(self) -> dict[str, int]:
        return {k: self.result.count(k) for k in KINDS}

    def as_json(self) -> dict[str, Any]:
        r, req, m = self.result, self.request, self.mapping
        listed = r.differences[: req.limit]
        return {
            "run_id": str(self.run_id),
            "dry_run": req.dry_run,
            "status": self.status,
            "exit_code": self.exit_code,
            "file": {
                "path": str(req.path),
                "format": self.format,
                "where": req.where,
                "rows": r.stats.file_rows + r.stats.file_bad_key,
                "bad_key_rows": r.stats.file_bad_key,
                "bad_key_examples": list(r.bad_key_examples),
            },
            "table": {"name": m.qualified, "where": req.db_where, "rows": r.stats.table_rows},
            "key": list(m.key_names),
            "columns": {
                "compared": list(m.column_names),
                "map": {c: m.file_column[c] for c in m.column_names},
                "ignored_file_columns": self.ignored_file_columns,
                "not_compared_table_columns": self.not_compared_table_columns,
            },
            "counts": self.counts(),
            "differences": [d.as_json(m) for d in listed],
            "differences_truncated": len(r.differences) > len(listed),
            "backfill": None if self.backfill is None else self.backfill.as_json(),
            "export": None
            if req.export_missing is None
            else {"path": str(req.export_missing), "rows": self.exported},
            "stats": r.stats.as_dict(),
            "started": self.started.isoformat(),
            "finished": None if self.finished is None else self.finished.isoformat(),
        }


# --- mapping --------------------------------------------------------------------------------


def parse_maps(maps: Sequence[str]) -> dict[str, str]:
    """``file_col=db_col`` items as {file_col: db_col}; CdcrError on a malformed item."""
    out: dict[str, str] = {}
    for item in maps:
        f, eq, d = item.partition("=")
        if not eq or not f.strip() or not d.strip():
            raise CdcrError(f"--map {item!r}: write it as FILE_COLUMN=TABLE_COLUMN")
        out[f.strip()] = d.strip()
    return out


def build_mapping(
    table: str,
    types: dict[str, str],
    file_columns: Sequence[str],
    key: Sequence[str],
    maps: dict[str, str],
    db_where: str | None,
) -> tuple[Mapping, list[str], list[str]]:
    """Which file column feeds which table column. Explicit ``maps`` first, then equal names,
    then names equal ignoring case. Returns the mapping, the file columns ignored and the table
    columns not compared. CdcrError for an unknown column on either side, a column mapped twice,
    or a key column that is not in the table or not in the file."""
    schema, name = split_name(table)
    data_cols = [c for c in types if not c.startswith(ENGINE_PREFIX)]
    _check_key(table, types, key, data_cols)
    db_to_file = _explicit_maps(table, types, file_columns, maps, data_cols)
    _match_names(types, data_cols, file_columns, maps, db_to_file)
    _check_key_in_file(key, db_to_file, file_columns)
    mapped_files = set(db_to_file.values())
    ignored = [f for f in file_columns if f not in mapped_files]
    compared = [*key, *(c for c in data_cols if c in db_to_file and c not in key)]
    not_compared = [c for c in data_cols if c not in db_to_file]
    m = Mapping(
        schema,
        name,
        tuple(ColumnType(k, types[k]) for k in key),
        tuple(ColumnType(c, types[c]) for c in compared),
        {c: db_to_file[c] for c in compared},
        db_where,
    )
    return m, ignored, not_compared


def _check_key(table: str, types: dict[str, str], key: Sequence[str], data_cols: list[str]) -> None:
    """CdcrError unless ``key`` names at least one column, each a column of the table."""
    if not key:
        raise CdcrError("--key: name at least one key column of the table")
    for k in key:
        if k not in types:
            raise CdcrError(
                f"--key {k!r}: table {table} has no such column (columns: {', '.join(data_cols)})"
            )


def _check_key_in_file(
    key: Sequence[str], db_to_file: dict[str, str], file_columns: Sequence[str]
) -> None:
    """CdcrError for a key column no file column feeds."""
    for k in key:
        if k not in db_to_file:
            raise CdcrError(
                f"key column {k!r} is not in the file (file columns: {', '.join(file_columns)}); "
                f"name its file column with --map FILE_COLUMN={k}"
            )


def _explicit_maps(
    table: str,
    types: dict[str, str],
    file_columns: Sequence[str],
    maps: dict[str, str],
    data_cols: list[str],
) -> dict[str, str]:
    """The ``--map`` items as {table column: file column}; CdcrError for a column unknown on
    either side or a table column mapped twice."""
    db_to_file: dict[str, str] = {}
    for f, d in maps.items():
        if f not in file_columns:
            raise CdcrError(
                f"--map {f}={d}: the file has no column {f!r} "
                f"(file columns: {', '.join(file_columns)})"
            )
        if d not in types:
            raise CdcrError(
                f"--map {f}={d}: table {table} has no column {d!r} "
                f"(columns: {', '.join(data_cols)})"
            )
        if d in db_to_file:
            raise CdcrError(f"--map: table column {d!r} is mapped from two file columns")
        db_to_file[d] = f
    return db_to_file


def _match_names(
    types: dict[str, str],
    data_cols: list[str],
    file_columns: Sequence[str],
    maps: dict[str, str],
    db_to_file: dict[str, str],
) -> None:
    """Add to ``db_to_file`` each file column not in ``maps``: to the table column of the same
    name, else to the one table column still free whose name is equal ignoring case."""
    lower: dict[str, list[str]] = {}
    for c in data_cols:
        lower.setdefault(c.lower(), []).append(c)
    for f in file_columns:
        if f in maps:
            continue
        if f in types and f not in db_to_file and not f.startswith(ENGINE_PREFIX):
            db_to_file[f] = f
            continue
        cands = [c for c in lower.get(f.lower(), []) if c not in db_to_file]
        if len(cands) == 1:
            db_to_file[cands[0]] = f


# --- the command ----------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def reconcile_file(
    settings: Settings,
    req: FileRequest,
    *,
    options: FileDiffOptions | None = None,
    on_phase: Callable[[str], None] = lambda _: None,
    on_file_progress: Callable[[float], None] | None = None,
    now_getter: Callable[[], datetime] = _now,
) -> FileReport:
    """Compare ``req.path`` with ``req.table`` (target database) both ways; then backfill,
    export and audit as asked (module docstring). Raises CdcrError on anything the user can act
    on; a database error is raised as CdcrError too, after the audit row (if any) is marked
    ``failed``."""
    if req.export_missing is not None and req.export_missing.suffix.lower() not in EXPORT_FORMATS:
        raise CdcrError(
            f"--export-missing {req.export_missing}: name a .csv, .jsonl or .parquet file"
        )
    maps = parse_maps(req.maps)
    engine = wiring.target_engine(settings)
    try:
        return _run(engine, req, maps, options, on_phase, on_file_progress, now_getter)
    except SQLAlchemyError as exc:
        raise CdcrError(f"database error: {_db_message(exc)}") from exc
    finally:
        engine.dispose()


def _db_message(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _run(
    engine: sa.Engine,
    req: FileRequest,
    maps: dict[str, str],
    options: FileDiffOptions | None,
    on_phase: Callable[[str], None],
    on_file_progress: Callable[[float], None] | None,
    now_getter: Callable[[], datetime],
) -> FileReport:
    types, audit_ok, target_table = _read_target(engine, req)
    backup_dir = req.backup_dir or req.path.parent
    _check_request(req, types, audit_ok, backup_dir)
    with files.open_file(req.path, req.format, req.where) as df:
        mapping, ignored, not_compared = build_mapping(
            req.table, types, df.columns, req.key, maps, req.db_where
        )
        if target_table is not None:
            _check_backfill_key(mapping, target_table)
        run_id = uuid.uuid4()
        started = now_getter()
        if not req.dry_run:
            _audit_start(engine, run_id, mapping.qualified, started, req)
        try:
            result = _diff(engine, df, mapping, options, on_phase, on_file_progress)
            report = FileReport(
                run_id, req, mapping, df.format, result, ignored, not_compared, started
            )
            _repair(engine, report, target_table, backup_dir, on_phase, now_getter)
            report.finished = now_getter()
        except BaseException as exc:
            if not req.dry_run:
                _audit_failed(engine, run_id, now_getter(), exc)
            raise
    if not req.dry_run:
        _audit_finish(engine, report)
    return report


def _read_target(
    engine: sa.Engine, req: FileRequest
) -> tuple[dict[str, str], bool, TargetTable | None]:
    """The table's column types (empty when there is no such table), whether the service
    tables exist, and the table's layout when ``req`` backfills."""
    schema, name = split_name(req.table)
    with engine.connect() as conn:
        types = catalog.column_types(conn, schema, name)
        audit_ok = runs.exists(conn)
        target_table = None
        if req.backfill:
            target_table = reflect_table(conn, schema, name, None) if types else None
        conn.rollback()
    return types, audit_ok, target_table


def _check_request(
    req: FileRequest, types: dict[str, str], audit_ok: bool, backup_dir: Path
) -> None:
    """CdcrError when the table is missing, the service tables are (unless a dry run), or the
    backup directory cannot be written (when backfilling for real)."""
    if not types:
        raise CdcrError(f"table {req.table} not found in the target database")
    if not req.dry_run and not audit_ok:
        raise CdcrError(
            "the service tables are missing (cdcr.reconcile_runs): run `cdcr migrate`, "
            "or pass --dry-run"
        )
    if req.backfill and not req.dry_run and not os.access(backup_dir, os.W_OK):
        raise CdcrError(f"cannot write the backup to {backup_dir}: pass --backup-dir")


def _check_backfill_key(mapping: Mapping, target_table: TargetTable) -> None:
    """CdcrError unless --key is the table's primary key (versioned inserts need it)."""
    missing = [k for k in mapping.key_names if k not in target_table.key_columns]
    if missing or len(target_table.key_columns) != len(mapping.key_names):
        raise CdcrError(
            f"--backfill-db: --key must be the table's primary key "
            f"({', '.join(target_table.key_columns)}) for versioned inserts"
        )


def _diff(
    engine: sa.Engine,
    df: files.DataFile,
    mapping: Mapping,
    options: FileDiffOptions | None,
    on_phase: Callable[[str], None],
    on_file_progress: Callable[[float], None] | None,
) -> FileDiffResult:
    """The comparison, on one snapshot of the table; the file's progress reported when asked."""
    with engine.connect() as conn:
        start_snapshot(conn)
        if on_file_progress is not None:
            with files.watch_progress(df, on_file_progress):
                result = diff_file(conn, df, mapping, options, on_phase)
        else:
            result = diff_file(conn, df, mapping, options, on_phase)
        conn.rollback()
    return result


def _repair(
    engine: sa.Engine,
    report: FileReport,
    target_table: TargetTable | None,
    backup_dir: Path,
    on_phase: Callable[[str], None],
    now_getter: Callable[[], datetime],
) -> None:
    """Export the table-only rows and backfill the file-only ones, as ``report.request`` asks;
    their outcomes go into ``report``."""
    req, mapping, result = report.request, report.mapping, report.result
    if req.export_missing is not None:
        on_phase(f"exporting table-only rows to {req.export_missing}")
        report.exported = export_missing(engine, mapping, result, req.export_missing)
    if req.backfill:
        report.backfill = backfill(
            engine,
            mapping,
            result,
            target_table,
            report.run_id,
            backup_dir,
            dry_run=req.dry_run,
            now=now_getter(),
            on_phase=on_phase,
        )


# --- audit ----------------------------------------------------------------------------------


def _audit_start(
    engine: sa.Engine, run_id: uuid.UUID, table: str, started: datetime, req: FileRequest
) -> None:
    counts = {"kind": "file", "file": str(req.path), "where": req.where, "db_where": req.db_where}
    with engine.begin() as c:
        runs.start(c, run_id, table, None, started, started, counts)


def _audit_failed(engine: sa.Engine, run_id: uuid.UUID, when: datetime, exc: BaseException) -> None:
    try:
        with engine.begin() as c:
            runs.fail(c, run_id, when, str(exc))
    except SQLAlchemyError:
        pass  # the original error is what the user needs to see


def audit_status(report: FileReport) -> RunStatus:
    if report.result.clean:
        return RunStatus.FILE_CLEAN
    if report.backfill is not None and report.backfill.inserted:
        return RunStatus.FILE_BACKFILLED
    return RunStatus.FILE_DIFFERENCES


def _audit_finish(engine: sa.Engine, report: FileReport) -> None:
    counts: dict[str, Any] = {
        "kind": "file",
        "file": str(report.request.path),
        "format": report.format,
        "where": report.request.where,
        "db_where": report.request.db_where,
        "key": list(report.mapping.key_names),
        **report.counts(),
        **report.result.stats.as_dict(),
        "first_keys": {
            k: [list(d.key) for d in report.result.differences if d.kind == k][:20] for k in KINDS
        },
    }
    if report.backfill is not None:
        counts["backfill"] = report.backfill.as_json()
        counts["backfill"]["skipped"] = report.backfill.skipped[:20]
    if report.exported is not None:
        counts["export"] = {"path": str(report.request.export_missing), "rows": report.exported}
    with engine.begin() as c:
        runs.finish(c, report.run_id, audit_status(report), report.finished, counts)


# --- export ---------------------------------------------------------------------------------


def _data_columns(m: Mapping, engine: sa.Engine) -> list[str]:
    with engine.connect() as c:
        cols = catalog.column_types(c, m.schema, m.name)
    return [x for x in cols if not x.startswith(ENGINE_PREFIX)]


def _key_chunks(
    diffs: Sequence[FileDifference],
) -> list[list[tuple[Any, ...]]]:
    keys = [d.table_key for d in diffs if d.table_key is not None]
    return [keys[i : i + _KEYS_PER_QUERY] for i in range(0, len(keys), _KEYS_PER_QUERY)]


def _key_match(m: Mapping, cur: Any, keys: list[tuple[Any, ...]]) -> str:
    """``(k1, k2) IN (…)`` with the values bound by psycopg2 (never spliced from file text)."""
    cols = ", ".join(quote_ident(k) for k in m.key_names)
    if len(m.key) == 1:
        return str(cur.mogrify(f"{cols} IN %s", (tuple(k[0] for k in keys),)).decode())
    return str(cur.mogrify(f"({cols}) IN %s", (tuple(keys),)).decode())


def export_missing(engine: sa.Engine, m: Mapping, result: FileDiffResult, path: Path) -> int:
    """Write the table-only rows (every data column, PostgreSQL's text, UTC) to ``path``:
    CSV with a header, JSON lines, or Parquet (text columns). Returns rows written. CdcrError
    when the file cannot be written."""
    diffs = [d for d in result.differences if d.kind == MISSING_IN_FILE]
    cols = _data_columns(m, engine)
    sel = ", ".join(quote_ident(c) for c in cols)
    suffix = path.suffix.lower()
    out_csv = path.with_suffix(".csv.tmp") if suffix == ".parquet" else path
    written = 0
    try:
        with engine.connect() as conn, open(out_csv, "w", encoding="utf-8", newline="") as fh:
            conn.exec_driver_sql(PG_SESSION)
            raw: Any = conn.connection.dbapi_connection
            with raw.cursor() as cur:
                if suffix != ".jsonl":
                    csv.writer(fh).writerow(cols)
                for chunk in _key_chunks(diffs):
                    where = _key_match(m, cur, chunk)
                    q = f"SELECT {sel} FROM {m.sql_name} WHERE {where}"
                    if suffix == ".jsonl":
                        cur.execute(f"SELECT row_to_json(x)::text FROM ({q}) x")
                        for (line,) in cur.fetchall():
                            fh.write(line + "\n")
                            written += 1
                    else:
                        cur.execute(
                            f"SELECT {', '.join(f'{quote_ident(c)}::text' for c in cols)} "
                            f"FROM ({q}) x"
                        )
                        rows = cur.fetchall()
                        csv.writer(fh).writerows(rows)
                        written += len(rows)
            conn.rollback()
        if suffix == ".parquet":
            _csv_to_parquet(out_csv, path)
    except OSError as exc:
        raise CdcrError(f"cannot write {path}: {exc}") from exc
    finally:
        if suffix == ".parquet" and out_csv.exists():
            out_csv.unlink()
    return written


def _csv_to_parquet(src: Path, dst: Path) -> None:
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.execute(
            f"COPY (SELECT * FROM read_csv({files.sql_str(str(src))}, header = true, "
            f"all_varchar = true)) TO {files.sql_str(str(dst))} (FORMAT parquet)"
        )
    except duckdb.Error as exc:
        raise CdcrError(f"cannot write {dst}: {exc}") from exc
    finally:
        con.close()


# --- backfill -------------------------------------------------------------------------------


def _insert_values(m: Mapping, d: FileDifference) -> tuple[dict[str, Any] | None, str | None]:
    """The values to insert for a file-only row, from its canonical text (which PostgreSQL
    reads back as the same value), or None and why not."""
    assert d.file_row is not None
    vals: dict[str, Any] = {}
    for col in m.columns:
        v = d.file_row[col.name]
        if v is not None and col.kind not in (Kind.TEXT, Kind.CHAR, Kind.OTHER) and v[:1] == "!":
            return None, f"column {col.name}: {v[1:]!r} is not a valid {col.pg_type}"
        vals[col.name] = v
    return vals, None


def _typed_key(col: ColumnType, text: str | None) -> Any:
    """A canonical key value as the Python value psycopg2 reads for the column's type, so its
    tombstone key text (``connectors.postgres.table.key_text``) is the one the engine and repair
    write."""
    if text is None:
        return None
    k = col.kind
    if k is Kind.NUMBER:
        return int(text) if col.pg_type in ("smallint", "integer", "bigint") else Decimal(text)
    if k is Kind.BOOLEAN:
        return text == "t"
    if k is Kind.DATE:
        return date.fromisoformat(text)
    if k is Kind.TIMESTAMPTZ:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    if k is Kind.TIMESTAMP:
        return datetime.fromisoformat(text)
    return text


def _backup(cur: Any, m: Mapping, leaves: Sequence[Leaf], path: Path) -> None:
    """The table's current rows (all columns) in the leaves' key (or key-hash) ranges, as CSV."""
    if m.integer_key:  # key ranges, through the primary-key index
        k = quote_ident(m.key_names[0])
        conds = [
            cur.mogrify(
                f"{k} BETWEEN %s AND %s",
                (
                    max(x.prefix << x.shift, -(2**63)),
                    min(((x.prefix + 1) << x.shift) - 1, 2**63 - 1),
                ),
            ).decode()
            for x in leaves
        ]
    else:
        kh = hash60(joined([(pg_canonical(k), k) for k in m.key], duck=False), duck=False)
        by_shift: dict[int, list[int]] = {}
        for leaf in leaves:
            by_shift.setdefault(leaf.shift, []).append(leaf.prefix)
        conds = [
            cur.mogrify(f"(({kh}) >> %s) = ANY(%s)", (shift, ids)).decode()
            for shift, ids in sorted(by_shift.items())
        ]
    where = " OR ".join(conds) if conds else "FALSE"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        cur.copy_expert(
            f"COPY (SELECT * FROM {m.sql_name} WHERE {where}) TO STDOUT WITH (FORMAT csv, HEADER)",
            fh,
        )
        fh.flush()
        os.fsync(fh.fileno())


def backfill(
    engine: sa.Engine,
    m: Mapping,
    result: FileDiffResult,
    target_table: Any,
    run_id: uuid.UUID,
    backup_dir: Path,
    *,
    dry_run: bool,
    now: datetime,
    on_phase: Callable[[str], None] = lambda _: None,
) -> BackfillOutcome:
    """Insert the file-only rows (module docstring: position 0, never an update). With
    ``dry_run`` only plan and report. The backup is written (and fsynced) before the insert, in
    the same transaction; the insert commits as a whole or not at all."""
    out = BackfillOutcome()
    ts_us = int(now.timestamp() * 1_000_000)
    writes, planned = _plan_backfill(m, result, ts_us, out)
    out.planned = len(writes)
    if dry_run or not writes:
        return out
    assert target_table is not None
    leaves = [
        leaf for leaf in result.leaves if any(_in_leaf(d, leaf) for d in planned.values())
    ] or list(result.leaves)
    tag = f"{m.schema}.{m.name}.{run_id.hex[:8]}"
    backup = backup_dir / f"{tag}.backup.csv"
    on_phase(f"backing up the affected key ranges to {backup}")
    with engine.connect() as conn:
        with conn.begin():
            _write_backup(conn, m, leaves, backup)
            out.backup = str(backup)
            on_phase(f"inserting {len(writes)} rows")
            write_batch(conn, target_table, writes)
            landed = _landed_keys(conn, m, ts_us)
    inserted = [k for k in planned if k in landed]
    out.inserted = len(inserted)
    out.skipped.extend(
        {
            "key": list(k),
            "reason": "not inserted: the key has a tombstone (deleted in the source) "
            "or a row appeared since the comparison; the versioned writer keeps it",
        }
        for k in planned
        if k not in landed
    )
    out.inserted_keys_file = _write_inserted_keys(
        backup_dir / f"{tag}.inserted-keys.csv", m, inserted
    )
    return out


def _plan_backfill(
    m: Mapping, result: FileDiffResult, ts_us: int, out: BackfillOutcome
) -> tuple[list[RowWrite], dict[tuple[str | None, ...], FileDifference]]:
    """The inserts of the file-only rows, and those rows by canonical key; the rows that cannot
    be inserted (a key on several file rows, a value the table cannot take) go to
    ``out.skipped``."""
    writes: list[RowWrite] = []
    planned: dict[tuple[str | None, ...], FileDifference] = {}
    for d in result.differences:
        if d.kind == DUPLICATE_IN_FILE and d.table_key is None:
            out.skipped.append(
                {"key": list(d.key), "reason": f"key is on {d.occurrences} rows of the file"}
            )
        if d.kind != MISSING_IN_TABLE:
            continue
        vals, why = _insert_values(m, d)
        if vals is None:
            out.skipped.append({"key": list(d.key), "reason": why})
            continue
        key = tuple(_typed_key(k, vals[k.name]) for k in m.key)
        writes.append(RowWrite(key, vals, BACKFILL_POSITION, ts_us))
        planned[d.key] = d
    return writes, planned


def _write_backup(conn: sa.Connection, m: Mapping, leaves: list[Leaf], backup: Path) -> None:
    """The table's rows in ``leaves`` into the CSV ``backup`` (fsynced), inside the caller's
    transaction."""
    conn.exec_driver_sql(PG_SESSION)
    raw: Any = conn.connection.dbapi_connection
    with raw.cursor() as cur:
        try:
            _backup(cur, m, leaves, backup)
        except OSError as exc:
            raise CdcrError(f"cannot write the backup {backup}: {exc}") from exc


def _landed_keys(conn: sa.Connection, m: Mapping, ts_us: int) -> set[tuple[Any, ...]]:
    """Canonical keys of the rows this backfill wrote (its position and time stamp)."""
    canon_keys = ", ".join(pg_canonical(k) for k in m.key)
    return {
        tuple(r)
        for r in conn.execute(
            sa.text(
                f"SELECT {canon_keys} FROM {m.sql_name} WHERE _cdc_pos = :p "
                "AND _cdc_ts = timestamptz 'epoch' + :us * interval '1 microsecond'"
            ),
            {"p": BACKFILL_POSITION, "us": ts_us},
        )
    }


def _write_inserted_keys(keys_file: Path, m: Mapping, inserted: list[tuple[Any, ...]]) -> str:
    """The inserted keys as CSV into ``keys_file``; its path. CdcrError when it cannot be
    written."""
    try:
        with open(keys_file, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(m.key_names)
            w.writerows(inserted)
    except OSError as exc:
        raise CdcrError(f"rows inserted, but cannot write {keys_file}: {exc}") from exc
    return str(keys_file)


def _in_leaf(d: FileDifference, leaf: Leaf) -> bool:
    return d.leaf == (leaf.prefix, leaf.shift) if d.leaf is not None else False
