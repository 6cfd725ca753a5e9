"""A target table as the engine sees it, read from the catalog (:func:`reflect_table`)."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from cdc_reconciler.connectors.postgres import catalog
from cdc_reconciler.connectors.postgres.table import ENGINE_COLUMNS, TargetTable
from cdc_reconciler.errors import CdcrError


def reflect_table(
    bind: sa.Engine | sa.Connection,
    schema: str,
    name: str,
    key_columns: Sequence[str] | None = None,
    *,
    allow_keyless: bool = False,
) -> TargetTable | None:
    """Read a target table's columns and key from the catalog; None when it does not exist.
    A table without a key raises unless ``allow_keyless`` (the apply engine's keyless modes);
    so does one without the engine columns."""
    if isinstance(bind, sa.Engine):
        with bind.connect() as conn:
            return reflect_table(conn, schema, name, key_columns, allow_keyless=allow_keyless)
    if not catalog.exists(bind, schema, name):
        return None
    data = _data_columns(schema, name, catalog.columns(bind, schema, name))
    part_col, part_interval = catalog.partitioning(bind, schema, name)
    keys = _identity(bind, schema, name, key_columns, part_col)
    if not keys and not allow_keyless:
        raise CdcrError(f"target table {schema}.{name} has no primary key and none is configured")
    return TargetTable(
        schema,
        name,
        keys,
        tuple(c.name for c in data),
        tuple(c.type for c in data),
        tuple(c.kind for c in data),
        part_col or "",
        part_interval or "",
    )


def _data_columns(schema: str, name: str, cols: list[catalog.Column]) -> list[catalog.Column]:
    """The columns other than the engine's; raises CdcrError when the engine columns lack."""
    present = {c.name for c in cols}
    missing_engine = [c for c in ENGINE_COLUMNS if c not in present]
    if missing_engine:
        raise CdcrError(
            f"target table {schema}.{name} lacks the engine columns {missing_engine}; "
            "create it with `cdcr tables sync` or add them (see README, target tables)"
        )
    return [c for c in cols if c.name not in ENGINE_COLUMNS]


def _identity(
    conn: sa.Connection,
    schema: str,
    name: str,
    configured: Sequence[str] | None,
    partition_column: str | None,
) -> tuple[str, ...]:
    """The row's identity: the configured key columns, else the primary key without the
    partition column (which is in the key only because PostgreSQL requires it)."""
    if configured is not None:
        return tuple(configured)
    keys = catalog.primary_key(conn, schema, name)
    if partition_column and partition_column in keys and len(keys) > 1:
        keys = tuple(k for k in keys if k != partition_column)
    return keys
