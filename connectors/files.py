"""Data files (CSV, Parquet, JSON lines) read through DuckDB, streaming, in bounded memory.

Contract
--------
:func:`open_file` checks the file, opens an in-process DuckDB database and defines the view
``file_rows`` over the file with **every column as VARCHAR** (CSV is read as text, so no type
sniffing can reject a late row; Parquet and JSON values are cast to text), narrowed by the
user's ``--where`` (DuckDB SQL on the file's columns, as the file types them). Nothing is loaded:
each query scans the file again, and DuckDB spills to a temporary directory beyond
``memory_limit``. Any DuckDB error (unreadable file, bad ``--where``) is raised as CdcrError
naming the file.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from cdc_reconciler.errors import CdcrError, first_line

FORMATS = ("csv", "parquet", "jsonl")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}

# DuckDB's own memory cap; beyond it DuckDB spills to its temporary directory. Small on purpose:
# the scans here are streaming aggregates, and the machine is shared.
MEMORY_LIMIT = "512MB"
# Threads DuckDB may use: the database scan runs beside it on a 2-core machine.
THREADS = 2


def duckdb_ident(name: str) -> str:
    """Quote a DuckDB identifier (a file's column name). DuckDB's rule, not PostgreSQL's
    (``connectors.postgres.sql.quote_ident``), though both double the quote: DuckDB matches
    quoted names case-insensitively."""
    return '"' + name.replace('"', '""') + '"'


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def detect_format(path: Path, given: str | None) -> str:
    """``given`` when set, else from the file name; CdcrError when neither tells."""
    if given is not None:
        if given not in FORMATS:
            raise CdcrError(f"--format must be one of {', '.join(FORMATS)}, not {given!r}")
        return given
    name = path.name.lower()
    for suffix in (".gz", ".zst"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    fmt = _SUFFIXES.get(Path(name).suffix)
    if fmt is None:
        raise CdcrError(
            f"cannot tell the format of {path} from its name: pass --format csv|parquet|jsonl"
        )
    return fmt


def _reader(path: Path, fmt: str) -> str:
    p = sql_str(str(path))
    if fmt == "csv":
        # header + all text: the file's own spelling reaches the normalisation untouched.
        return f"read_csv({p}, header = true, all_varchar = true, auto_detect = true)"
    if fmt == "parquet":
        return f"read_parquet({p})"
    return f"read_json({p}, format = 'newline_delimited')"


def _as_text(col: str, duck_type: str) -> str:
    """A file column as text: nested values (JSON objects and arrays, Parquet structs, lists,
    maps) as JSON, everything else as DuckDB spells it."""
    t = duck_type.upper()
    if t.startswith(("STRUCT", "MAP", "UNION")) or t.endswith("[]") or t == "JSON":
        return f"CAST(to_json({col}) AS VARCHAR)"
    return f"CAST({col} AS VARCHAR)"


@dataclass
class DataFile:
    """An open data file: ``columns`` in file order; queries go through :meth:`query`."""

    path: Path
    format: str
    columns: tuple[str, ...]
    con: duckdb.DuckDBPyConnection

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run ``sql`` (DuckDB) and return every row; errors as CdcrError."""
        try:
            return self.con.execute(sql, params or []).fetchall()
        except duckdb.Error as exc:
            raise CdcrError(f"reading {self.path}: {first_line(exc)}") from exc

    def stream(
        self, sql: str, params: Sequence[Any] | None = None, batch: int = 10_000
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``sql`` in batches, without holding the whole result."""
        try:
            cur = self.con.execute(sql, params or [])
            while rows := cur.fetchmany(batch):
                yield from rows
        except duckdb.Error as exc:
            raise CdcrError(f"reading {self.path}: {first_line(exc)}") from exc

    def progress(self) -> float:
        """Percent done of the running query (-1 when unknown)."""
        try:
            return float(self.con.query_progress())
        except (duckdb.Error, AttributeError):
            return -1.0


@contextmanager
def open_file(path: Path, fmt: str | None = None, where: str | None = None) -> Iterator[DataFile]:
    """Open ``path`` (format ``fmt`` or from its name) with optional ``where`` filter.

    Raises CdcrError when the file is missing, is not a readable file of that format, has no
    columns, or ``where`` does not apply to it."""
    if not path.exists():
        raise CdcrError(f"file not found: {path}")
    if not path.is_file():
        raise CdcrError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise CdcrError(f"{path} is empty (not even a header row)")
    fmt = detect_format(path, fmt)
    with tempfile.TemporaryDirectory(prefix="cdcr-duckdb-") as spill:
        con = duckdb.connect(
            ":memory:",
            config={
                "memory_limit": MEMORY_LIMIT,
                "threads": THREADS,
                "temp_directory": spill,
            },
        )
        try:
            # Naive file timestamps are read as UTC (file_normalize.py); set after connect, once
            # the built-in ICU extension is loaded.
            con.execute("SET TimeZone = 'UTC'")
            # query_progress() (the CLI's progress bar) reports only with the progress bar on;
            # DuckDB's own printing of it stays off.
            con.execute("SET enable_progress_bar = true")
            con.execute("SET enable_progress_bar_print = false")
            try:
                cols = con.execute(f"DESCRIBE SELECT * FROM {_reader(path, fmt)}").fetchall()
            except duckdb.Error as exc:
                raise CdcrError(f"cannot read {path} as {fmt}: {first_line(exc)}") from exc
            names = tuple(str(c[0]) for c in cols)
            if not names:
                raise CdcrError(f"{path} has no columns")
            text_cols = ", ".join(
                f"{_as_text(duckdb_ident(str(c[0])), str(c[1]))} AS {duckdb_ident(str(c[0]))}"
                for c in cols
            )
            cond = f"WHERE {where}" if where else ""
            try:
                con.execute(
                    f"CREATE TEMP VIEW file_rows AS SELECT {text_cols} "
                    f"FROM {_reader(path, fmt)} {cond}"
                )
                con.execute("SELECT * FROM file_rows LIMIT 0").fetchall()
            except duckdb.Error as exc:
                raise CdcrError(f"--where does not apply to {path}: {first_line(exc)}") from exc
            yield DataFile(path, fmt, names, con)
        finally:
            con.close()


@contextmanager
def watch_progress(df: DataFile, report: Callable[[float], None]) -> Iterator[None]:
    """Call ``report(percent)`` about 4 times a second while the block runs DuckDB queries."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.25):
            pct = df.progress()
            if pct >= 0:
                report(pct)

    t = threading.Thread(target=loop, name="cdcr-file-progress", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
