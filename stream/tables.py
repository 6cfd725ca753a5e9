"""Which target table an event goes to, and with which columns.

Topic ``<prefix>.<schema>.<table>`` (or the event's ``source.schema``/``source.table``) maps to the
target ``<schema>.<table>`` unless the YAML mapping says otherwise. Target tables are reflected once
and cached. With ``create_missing`` a missing target table is created by mirroring the source
table (SQLAlchemy reflection) plus the engine columns; a column that appears in events but not in
the target is added (its type read from the source) and logged.

Failures to map an event are :class:`ApplyError` with a stable ``kind``; the engine dead-letters
them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.config import TableMapping
from cdc_reconciler.connectors.debezium import ChangeEvent
from cdc_reconciler.connectors.target import (
    ENGINE_COLUMNS,
    TargetTable,
    engine_column_ddl,
    qualified_ident,
    quote_ident,
    reflect_table,
)
from cdc_reconciler.errors import CdcrError

log = logging.getLogger(__name__)


class ApplyError(Exception):
    """An event that cannot be applied. ``kind`` is stable and documented:

    - ``unknown_table``: no source schema/table in the event or the topic name;
    - ``no_target_table``: the target table does not exist (create it, or run with
      ``--create-missing``);
    - ``missing_key``: the key columns are not in the Kafka key nor in the row;
    - ``unknown_column``: the event has a column the target lacks and it could not be added;
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Route:
    table: TargetTable
    mapping: TableMapping
    columns: frozenset[str] = frozenset()

    @classmethod
    def of(cls, table: TargetTable, mapping: TableMapping) -> Route:
        return cls(table, mapping, frozenset(table.columns))


class TableResolver:
    def __init__(
        self,
        target: sa.Engine,
        mappings: dict[str, TableMapping],
        *,
        source: sa.Engine | None = None,
        create_missing: bool = False,
    ) -> None:
        self._target = target
        self._source = source
        self._mappings = mappings
        self._create_missing = create_missing
        self._routes: dict[tuple[str, str], Route] = {}

    def source_name(self, topic: str, event: ChangeEvent) -> tuple[str, str]:
        if event.source_schema and event.source_table:
            return event.source_schema, event.source_table
        parts = topic.split(".")
        if len(parts) >= 3:
            return parts[-2], parts[-1]
        raise ApplyError("unknown_table", f"no source table in the event nor in topic {topic!r}")

    def route(self, topic: str, event: ChangeEvent) -> Route:
        name = self.source_name(topic, event)
        found = self._routes.get(name)
        if found is None:
            found = self._routes[name] = self._load(name)
        return found

    def _load(self, name: tuple[str, str]) -> Route:
        mapping = self._mappings.get(f"{name[0]}.{name[1]}", TableMapping())
        schema, table = mapping.target.split(".", 1) if mapping.target else name
        try:
            found = reflect_table(
                self._target, schema, table, mapping.key_columns, allow_keyless=True
            )
        except CdcrError as exc:
            raise ApplyError("no_target_table", str(exc)) from exc
        if found is None:
            if not self._create_missing:
                raise ApplyError(
                    "no_target_table",
                    f"target table {schema}.{table} does not exist; create it with "
                    "`cdcr tables sync` or run with --create-missing",
                )
            found = self.create_table(name, (schema, table), mapping)
        return Route.of(found, mapping)

    def create_table(
        self, source: tuple[str, str], target: tuple[str, str], mapping: TableMapping
    ) -> TargetTable:
        """Create the target table by mirroring the source definition. Raises ApplyError."""
        if self._source is None:
            raise ApplyError(
                "no_target_table", "cannot create target tables: CDCR_SOURCE__URL unset"
            )
        ddl = mirror_ddl(self._source, source, target, mapping)
        with self._target.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(target[0])}"))
            conn.execute(sa.text(ddl))
        log.warning("created target table %s.%s mirroring %s.%s", *target, *source)
        created = reflect_table(
            self._target, target[0], target[1], mapping.key_columns, allow_keyless=True
        )
        assert created is not None
        return created

    def row_values(self, route: Route, values: dict[str, Any]) -> tuple[Route, dict[str, Any]]:
        """The event's columns that go to the target, adding new columns when allowed (the
        returned route then describes the widened table). Raises ApplyError."""
        m = route.mapping
        if m.include_columns is None and not m.exclude_columns:
            # Hot path: no column filter; one set comparison decides whether all are known.
            if values.keys() <= route.columns:
                return route, values
            out = values
        else:
            out = {
                k: v
                for k, v in values.items()
                if k not in m.exclude_columns
                and (m.include_columns is None or k in m.include_columns)
            }
            if out.keys() <= route.columns:
                return route, out
        unknown = [k for k in out if k not in route.columns]
        return self._add_columns(route, unknown), out

    def _add_columns(self, route: Route, names: Sequence[str]) -> Route:
        table = route.table
        if self._source is None:
            raise ApplyError(
                "unknown_column",
                f"columns {sorted(names)} are not in target {table.qualified} and cannot be "
                "added without CDCR_SOURCE__URL",
            )
        src = self._source_for(table)
        insp = sa.inspect(self._source)
        types = {c["name"]: c["type"] for c in insp.get_columns(src[1], schema=src[0])}
        with self._target.begin() as conn:
            for n in names:
                if n not in types:
                    raise ApplyError("unknown_column", f"column {n!r} is not in source {src}")
                typ = types[n].compile(dialect=self._target.dialect)
                conn.execute(
                    sa.text(
                        f"ALTER TABLE {qualified_ident(table.schema, table.name)} "
                        f"ADD COLUMN IF NOT EXISTS {quote_ident(n)} {typ}"
                    )
                )
                log.warning("added column %s %s to target %s", n, typ, table.qualified)
        refreshed = reflect_table(
            self._target, table.schema, table.name, route.mapping.key_columns, allow_keyless=True
        )
        assert refreshed is not None
        new = Route.of(refreshed, route.mapping)
        for k, r in list(self._routes.items()):
            if r.table.qualified == table.qualified:
                self._routes[k] = new
        return new

    def _source_for(self, table: TargetTable) -> tuple[str, str]:
        for k, r in self._routes.items():
            if r.table.qualified == table.qualified:
                return k
        return (table.schema, table.name)


def key_of(route: Route, event: ChangeEvent) -> tuple[Any, ...]:
    """The event's key values in the target's key-column order (from the Kafka key, else the
    row). Raises ApplyError(missing_key)."""
    cols = route.table.key_columns
    for src in (event.key, event.after, event.before):
        if not src:
            continue
        try:
            return tuple([src[c] for c in cols])
        except KeyError:
            continue
    raise ApplyError("missing_key", f"key columns {list(cols)} not found in the event")


def mirror_ddl(
    source: sa.Engine, src: tuple[str, str], tgt: tuple[str, str], mapping: TableMapping
) -> str:
    """CREATE TABLE for the target from the source table's definition. Non-key columns are
    nullable in the target (an unchanged TOASTed value may arrive before its row)."""
    insp = sa.inspect(source)
    if not insp.has_table(src[1], schema=src[0]):
        raise ApplyError("no_target_table", f"source table {src[0]}.{src[1]} does not exist")
    cols = insp.get_columns(src[1], schema=src[0])
    keys = list(
        mapping.key_columns
        or insp.get_pk_constraint(src[1], schema=src[0]).get("constrained_columns")
        or []
    )
    # No key: the target has none either; the engine applies it by its keyless rules
    # (docs/apply.md: REPLICA IDENTITY FULL, or ``mode: append``), else dead-letters ``no_key``.
    parts = []
    for c in cols:
        n = c["name"]
        if n in ENGINE_COLUMNS or n in mapping.exclude_columns:
            continue
        if (
            mapping.include_columns is not None
            and n not in mapping.include_columns
            and n not in keys
        ):
            continue
        typ = c["type"].compile(dialect=source.dialect)
        parts.append(f"{quote_ident(n)} {typ}{' NOT NULL' if n in keys else ''}")
    parts.extend(engine_column_ddl())
    if keys:
        parts.append(f"PRIMARY KEY ({', '.join(quote_ident(k) for k in keys)})")
    return f"CREATE TABLE IF NOT EXISTS {qualified_ident(*tgt)} ({', '.join(parts)})"
