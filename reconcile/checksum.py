"""Which rows and columns of a table pair are reconciled (describe_pair), over the SQL of
``cdc_reconciler.connectors.postgres`` (``sides``, ``rows`` and ``checksum``, re-exported here
for the reconcile modules).

What is compared and how values are normalized and hashed is described in
``cdc_reconciler.connectors.postgres.sides``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa

from cdc_reconciler.connectors.postgres import catalog
from cdc_reconciler.connectors.postgres.checksum import SegmentStats as SegmentStats
from cdc_reconciler.connectors.postgres.checksum import bucket_stats as bucket_stats
from cdc_reconciler.connectors.postgres.checksum import (
    integer_bucket_stats as integer_bucket_stats,
)
from cdc_reconciler.connectors.postgres.checksum import key_bounds as key_bounds
from cdc_reconciler.connectors.postgres.checksum import quantile_keys as quantile_keys
from cdc_reconciler.connectors.postgres.checksum import segment_stats as segment_stats
from cdc_reconciler.connectors.postgres.rows import _keys_condition as _keys_condition
from cdc_reconciler.connectors.postgres.rows import fetch_json_by_keys as fetch_json_by_keys
from cdc_reconciler.connectors.postgres.rows import fetch_normalized as fetch_normalized
from cdc_reconciler.connectors.postgres.rows import (
    fetch_normalized_by_keys as fetch_normalized_by_keys,
)
from cdc_reconciler.connectors.postgres.rows import (
    fetch_normalized_many as fetch_normalized_many,
)
from cdc_reconciler.connectors.postgres.rows import fetch_raw_by_keys as fetch_raw_by_keys
from cdc_reconciler.connectors.postgres.rows import fetch_text_by_keys as fetch_text_by_keys
from cdc_reconciler.connectors.postgres.sides import Normalized as Normalized
from cdc_reconciler.connectors.postgres.sides import Side as Side
from cdc_reconciler.connectors.postgres.sides import TablePair as TablePair
from cdc_reconciler.connectors.postgres.sides import database_collation, native_hash_columns
from cdc_reconciler.connectors.postgres.sides import row_hash_sql as row_hash_sql
from cdc_reconciler.connectors.postgres.sides import segment_where as segment_where
from cdc_reconciler.connectors.postgres.sides import stable_output as stable_output
from cdc_reconciler.connectors.postgres.sql import quote_ident as quote_ident
from cdc_reconciler.errors import CdcrError

CDC_COLUMN_PREFIX = "_cdc_"


def split_name(qualified: str) -> tuple[str, str]:
    schema, dot, name = qualified.partition(".")
    if not dot or not schema or not name:
        raise CdcrError(f"table {qualified!r} must be written <schema>.<table>")
    return schema, name


def describe_pair(
    source: sa.Connection,
    target: sa.Connection,
    source_table: str,
    *,
    target_table: str | None = None,
    key_columns: Sequence[str] | None = None,
    include_columns: Sequence[str] | None = None,
    exclude_columns: Sequence[str] = (),
    change_time_column: str | None = None,
) -> TablePair:
    """Introspect both tables. Compared columns: the source's columns (narrowed by include and
    exclude) that the target has too, never ``_cdc_*``. Raises CdcrError when a table, its key
    or the change-time column is missing, or when text keys would order differently."""
    s_schema, s_name = split_name(source_table)
    t_schema, t_name = split_name(target_table or source_table)
    s_types, t_types = _table_types(source, target, (s_schema, s_name), (t_schema, t_name))
    keys = tuple(key_columns or catalog.primary_key(source, s_schema, s_name))
    if not keys:
        raise CdcrError(
            f"{source_table} has no primary key: reconcile compares rows by key; configure "
            "tables[...].key_columns with columns unique in both databases (docs/reconcile.md, "
            "key-less tables)"
        )
    cols = _compared_columns(s_types, t_types, keys, include_columns, exclude_columns)
    _check_keys_and_change_time(source_table, keys, cols, s_types, t_types, change_time_column)
    native = native_hash_columns(cols, s_types, t_types)
    pair = TablePair(
        name=source_table,
        source=Side(
            s_schema, s_name, keys, cols, {c: s_types[c] for c in cols}, change_time_column, native
        ),
        target=Side(
            t_schema, t_name, keys, cols, {c: t_types[c] for c in cols}, change_time_column, native
        ),
    )
    _check_text_key_collation(source, target, pair)
    return pair


def _table_types(
    source: sa.Connection,
    target: sa.Connection,
    source_name: tuple[str, str],
    target_name: tuple[str, str],
) -> tuple[dict[str, str], dict[str, str]]:
    """Column types of both tables; raises CdcrError when either table is missing."""
    s_types = catalog.column_types(source, *source_name)
    t_types = catalog.column_types(target, *target_name)
    if not s_types:
        raise CdcrError(f"source table {source_name[0]}.{source_name[1]} not found")
    if not t_types:
        raise CdcrError(f"target table {target_name[0]}.{target_name[1]} not found")
    return s_types, t_types


def _compared_columns(
    s_types: Mapping[str, str],
    t_types: Mapping[str, str],
    keys: tuple[str, ...],
    include_columns: Sequence[str] | None,
    exclude_columns: Sequence[str],
) -> tuple[str, ...]:
    """The source's columns, in source order, that are compared: never ``_cdc_*``, only the
    included ones (keys always) when include is given, not the excluded ones, present on the
    target."""
    wanted = [c for c in s_types if not c.startswith(CDC_COLUMN_PREFIX)]
    if include_columns:
        wanted = [c for c in wanted if c in include_columns or c in keys]
    return tuple(c for c in wanted if c not in exclude_columns and c in t_types)


def _check_keys_and_change_time(
    source_table: str,
    keys: tuple[str, ...],
    cols: tuple[str, ...],
    s_types: Mapping[str, str],
    t_types: Mapping[str, str],
    change_time_column: str | None,
) -> None:
    for k in keys:
        if k not in s_types or k not in t_types:
            raise CdcrError(f"key column {k!r} of {source_table} missing on one side")
    if change_time_column and change_time_column not in cols:
        raise CdcrError(f"change-time column {change_time_column!r} of {source_table} missing")


def _check_text_key_collation(
    source: sa.Connection, target: sa.Connection, pair: TablePair
) -> None:
    """Text keys are ranged by collation order: both databases must use the same one."""
    if pair.text_key() and database_collation(source) != database_collation(target):
        raise CdcrError(
            f"{pair.name}: text keys but source and target databases use "
            "different collations, so key ranges would not match"
        )
