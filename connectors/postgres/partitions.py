"""Partitions of time-partitioned targets (docs/partitioning.md): which partition a time falls
in, its name and DDL, creating the missing ones inside the writer's transaction, and what a
write into a compressed TimescaleDB chunk does."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.config import TableMapping, interval_seconds
from cdc_reconciler.connectors.postgres import catalog
from cdc_reconciler.connectors.postgres.catalog import INTERVAL_COMMENT
from cdc_reconciler.connectors.postgres.sql import qualified_ident
from cdc_reconciler.connectors.postgres.table import TargetTable

# Partitions are cut at multiples of the interval counted from this instant (as date_bin does).
PARTITION_ORIGIN = datetime(2000, 1, 1)  # noqa: DTZ001 - a UTC wall time, compared as such


def utc_timestamp_sql(expr: str, typ: str) -> str:
    """SQL turning a partition column value into a timestamp without zone, in UTC."""
    if "with time zone" in typ:
        return f"({expr} AT TIME ZONE 'UTC')"
    if typ == "date":
        return f"({expr})::timestamp"
    return str(expr)


def bucket_start(value: datetime, interval: str) -> datetime:
    """The start (UTC wall time, no zone) of the partition holding ``value``."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    step = interval_seconds(interval)
    n = int((value - PARTITION_ORIGIN).total_seconds() // step)
    return PARTITION_ORIGIN + timedelta(seconds=n * step)


def partition_name(table: TargetTable, start: datetime) -> str:
    """``<table>_p<start>``; shortened with a digest to PostgreSQL's 63 bytes when needed."""
    suffix = start.strftime("_p%Y%m%d") + (
        start.strftime("%H%M%S") if (start.hour, start.minute, start.second) != (0, 0, 0) else ""
    )
    name = table.name + suffix
    if len(name.encode()) > 63:
        digest = hashlib.blake2b(table.name.encode(), digest_size=3).hexdigest()
        name = table.name[: 63 - len(suffix) - 7] + "_" + digest + suffix
    return name


def partition_ddl(table: TargetTable, start: datetime) -> str:
    """CREATE TABLE for the partition of ``table`` starting at ``start`` (bounds are formatted
    from a datetime, never from event text)."""
    end = start + timedelta(seconds=interval_seconds(table.partition_interval))
    typ = table.type_of(table.partition_column)

    def bound(t: datetime) -> str:
        if typ == "date":
            return f"'{t:%Y-%m-%d}'"
        zone = "+00" if "with time zone" in typ else ""
        return f"'{t:%Y-%m-%d %H:%M:%S}{zone}'"

    return (
        f"CREATE TABLE IF NOT EXISTS {qualified_ident(table.schema, partition_name(table, start))} "
        f"PARTITION OF {qualified_ident(table.schema, table.name)} "
        f"FOR VALUES FROM ({bound(start)}) TO ({bound(end)})"
    )


# SQLSTATEs that mean "the partition is there already": duplicate_table (another consumer made
# it a moment ago), unique_violation (the same race caught in the catalog's own unique index)
# and invalid_object_definition (a partition made by someone else, under another name, overlaps
# the range: rows are routed there). Only ever matched on the CREATE statement itself.
_PARTITION_EXISTS = ("42P07", "23505", "42P17")


def ensure_partitions(cur: Any, table: TargetTable, starts: Iterable[datetime]) -> list[str]:
    """Create the partitions starting at ``starts`` that do not exist yet, each in a savepoint
    of the caller's transaction; one that exists (or overlaps one) is fine. Returns the names
    created. Other errors propagate (the caller's transaction is then aborted)."""
    made = []
    for start in starts:
        name = partition_name(table, start)
        cur.execute(
            "SELECT to_regclass(quote_ident(%(s)s) || '.' || quote_ident(%(n)s))",
            {"s": table.schema, "n": name},
        )
        if cur.fetchone()[0] is not None:
            continue
        cur.execute("SAVEPOINT cdcr_partition")
        try:
            cur.execute(partition_ddl(table, start))
        except Exception as exc:
            if getattr(exc, "pgcode", None) not in _PARTITION_EXISTS:
                raise
            cur.execute("ROLLBACK TO SAVEPOINT cdcr_partition")
            continue
        cur.execute("RELEASE SAVEPOINT cdcr_partition")
        made.append(name)
    return made


# TimescaleDB writes into compressed chunks (INSERT, UPDATE, DELETE, ON CONFLICT) from 2.11 on,
# decompressing only the segments a write touches; before that such a write fails.
COMPRESSED_DML_SINCE = (2, 11)


def compressed_chunk_action(timescaledb_version: str) -> tuple[str, str]:
    """What a write into a compressed hypertable chunk does, given the target's TimescaleDB
    version (``SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'``):
    ``("write", "")`` where TimescaleDB decompresses the touched segments itself (2.11+), else
    ``("dead_letter", reason)``: the event is dead-lettered ``compressed_chunk`` rather than
    retried forever; decompress the chunk (``decompress_chunk``) and replay it. An unreadable
    version is treated as old. docs/partitioning.md, compressed chunks."""
    try:
        major, minor = (int(x) for x in timescaledb_version.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if (major, minor) >= COMPRESSED_DML_SINCE:
        return "write", ""
    return "dead_letter", (
        f"compressed_chunk: TimescaleDB {timescaledb_version} rejects writes into compressed "
        "chunks (2.11+ accepts them); run decompress_chunk on the chunk and replay the event"
    )


def partition_setup(
    conn: sa.Connection, tgt: tuple[str, str], mapping: TableMapping, now: datetime | None = None
) -> list[str]:
    """What follows the CREATE TABLE of a time-partitioned target: for ``partition_by``, the
    comment recording the interval and the partitions from ``ahead`` intervals before now to
    ``ahead`` after it (others are made on demand by the writer); for ``hypertable``,
    ``create_hypertable``. Values in the statements are formatted from validated settings
    (intervals) or literals quoted by the server, never from event text."""
    rel = qualified_ident(*tgt)
    if mapping.hypertable is not None:
        h = mapping.hypertable
        col = conn.execute(sa.text("SELECT quote_literal(:c)"), {"c": h.time_column}).scalar()
        rel_lit = conn.execute(sa.text("SELECT quote_literal(:r)"), {"r": rel}).scalar()
        iv = conn.execute(sa.text("SELECT quote_literal(:i)"), {"i": h.chunk_interval}).scalar()
        return [
            f"SELECT create_hypertable({rel_lit}::regclass, {col}::name, "
            f"chunk_time_interval => {iv}::interval, if_not_exists => true)"
        ]
    if mapping.partition_by is None:
        return []
    p = mapping.partition_by
    comment = conn.execute(
        sa.text("SELECT quote_literal(:c)"), {"c": INTERVAL_COMMENT + p.interval}
    ).scalar()
    out = [f"COMMENT ON TABLE {rel} IS {comment}"]
    typ = catalog.column_types(conn, *tgt)[p.column]
    table = TargetTable(
        tgt[0],
        tgt[1],
        (),
        (p.column,),
        (typ,),
        partition_column=p.column,
        partition_interval=p.interval,
    )
    first = bucket_start(now or datetime.now(UTC), p.interval)
    step = timedelta(seconds=interval_seconds(p.interval))
    out.extend(partition_ddl(table, first + k * step) for k in range(-p.ahead, p.ahead + 1))
    return out
