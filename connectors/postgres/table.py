"""A target table as the engine sees it, and the engine's own columns.

Contract
--------
Every target table carries the source columns plus two engine columns:

- ``_cdc_pos numeric(40,0) not null``: the source position of the change that wrote the row
  (PostgreSQL: ``(lastCommitLsn << 64) | lsn``);
- ``_cdc_ts timestamptz not null``: that change's event time.

Deletes remove the row and leave a tombstone in ``cdcr.tombstones`` (table, canonical key text,
position), so an older insert replayed later cannot bring the row back; a source TRUNCATE leaves
a table-wide tombstone with the key :data:`TRUNCATE_KEY`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cdc_reconciler.connectors.postgres.sql import quote_ident

POS = "_cdc_pos"
TS = "_cdc_ts"
ENGINE_COLUMNS = (POS, TS)
SERVICE_SCHEMA = "cdcr"
# The tombstone key of a source TRUNCATE: it covers every key of the table.
TRUNCATE_KEY = "*"


@dataclass(frozen=True, slots=True)
class TargetTable:
    """A target table as the engine sees it. ``columns`` are the data columns (no ``_cdc_*``)."""

    schema: str
    name: str
    key_columns: tuple[str, ...]
    columns: tuple[str, ...]
    column_types: tuple[str, ...] = ()  # PostgreSQL type names, parallel to ``columns``
    # Parallel to ``columns``: "<typtype><typcategory>:<typname>" of the column's type (a domain
    # resolved to its base type), e.g. "bN:numeric", "bU:hstore", "cC:pair", "bA:_int4".
    column_kinds: tuple[str, ...] = ()
    # A time-partitioned target (declarative RANGE partitioning or a TimescaleDB hypertable,
    # docs/partitioning.md): the partitioning column, which every unique key includes, so the
    # physical key is ``key_columns + (partition_column,)`` and a row can move between
    # partitions. ``partition_interval`` (e.g. "1 day") is set when cdcr makes the partitions
    # itself (native partitioning created by ``cdcr tables sync``); empty otherwise.
    partition_column: str = ""
    partition_interval: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def type_of(self, column: str) -> str:
        """The column's type name ("" when the types were not read); used for the partition
        column's bounds and bucket expression."""
        if not self.column_types:
            return ""
        return self.column_types[self.columns.index(column)]


def key_text(key: Sequence[Any]) -> str:
    """Canonical text of a key, as stored in ``cdcr.tombstones.key``."""
    return orjson.dumps(list(key), default=str).decode()


def engine_column_ddl() -> Iterable[str]:
    """The column definitions of the engine columns, for CREATE TABLE."""
    yield f"{quote_ident(POS)} numeric(40,0) NOT NULL"
    yield f"{quote_ident(TS)} timestamptz NOT NULL"
