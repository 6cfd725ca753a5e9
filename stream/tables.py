"""Which target table an event goes to, and with which columns.

Topic ``<prefix>.<schema>.<table>`` (or the event's ``source.schema``/``source.table``) maps to the
target ``<schema>.<table>`` unless the YAML mapping says otherwise. Target tables are reflected once
and cached. With ``create_missing`` a missing target table is created by mirroring the source
table (stream/mirror.py) plus the engine columns; a column
that appears in events but not in the target is added (its type read from the source) and
logged. Values whose Debezium shape the target's COPY input does not read are reshaped by the
route's adapters (connectors/postgres/adapters.py).

Failures to map an event are :class:`~cdc_reconciler.stream.errors.ApplyError` with a stable
``kind``; the engine dead-letters them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.config import TableMapping, column_selected
from cdc_reconciler.connectors.debezium import ChangeEvent
from cdc_reconciler.connectors.postgres import catalog
from cdc_reconciler.connectors.postgres.adapters import value_adapters
from cdc_reconciler.connectors.postgres.partitions import partition_setup
from cdc_reconciler.connectors.postgres.reflect import reflect_table
from cdc_reconciler.connectors.postgres.sql import qualified_ident, quote_ident
from cdc_reconciler.connectors.postgres.table import TargetTable
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.errors import ApplyError
from cdc_reconciler.stream.mirror import (
    db_message,
    mirror_ddl,
    mirror_types,
    require_timescaledb,
    transient,
)

log = logging.getLogger(__name__)

# A table whose target DDL failed is retried this often (its events are dead-lettered meanwhile).
BLOCKED_RETRY_S = 60.0
# A missing target table (no --create-missing) is looked up again at most this often: its events
# are dead-lettered without a catalog read each, and a table created meanwhile is used within it.
MISSING_RECHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class Route:
    table: TargetTable
    mapping: TableMapping
    columns: frozenset[str] = frozenset()
    # (column, adapter) for the target columns whose Debezium encoding needs reshaping before
    # COPY (see value_adapters); empty for most tables, so the hot path pays nothing.
    adapters: tuple[tuple[str, Callable[[Any], Any]], ...] = ()

    @classmethod
    def of(cls, table: TargetTable, mapping: TableMapping) -> Route:
        return cls(table, mapping, frozenset(table.columns), value_adapters(table))


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
        self._blocked: dict[tuple[str, str], tuple[ApplyError, float]] = {}
        # Target tables found missing, until when that answer holds (see MISSING_RECHECK_S).
        self._missing: dict[tuple[str, str], tuple[ApplyError, float]] = {}

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
            now = time.monotonic()
            for known in (self._blocked.get(name), self._missing.get(name)):
                if known is not None and now < known[1]:
                    raise known[0]
            try:
                found = self._routes[name] = self._load(name)
            except ApplyError as exc:
                if exc.kind == "no_target_table":
                    # Every event of the topic would read the catalog again before its dead
                    # letter; a table created meanwhile is found within MISSING_RECHECK_S.
                    self._missing[name] = (exc, now + MISSING_RECHECK_S)
                if exc.kind == "target_ddl_failed":
                    # Every event of the table would retry the DDL; retry once a while instead.
                    self._blocked[name] = (exc, time.monotonic() + BLOCKED_RETRY_S)
                    log.error("table %s.%s is blocked: %s", *name, exc.message)
                raise
            self._blocked.pop(name, None)
            self._missing.pop(name, None)
        return found

    def blocked(self) -> dict[str, str]:
        """Source tables whose target table cannot be created, with the reason."""
        return {f"{k[0]}.{k[1]}": v[0].message for k, v in self._blocked.items()}

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
        if mapping.hypertable is not None:
            require_timescaledb(self._target, target)
        mirror_types(self._source, self._target, source)
        try:
            with self._target.begin() as conn:
                conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(target[0])}"))
                conn.execute(sa.text(ddl))
                for stmt in partition_setup(conn, target, mapping):
                    conn.execute(sa.text(stmt))
        except sa.exc.DBAPIError as exc:
            if transient(exc):
                raise
            raise ApplyError(
                "target_ddl_failed",
                f"creating target table {target[0]}.{target[1]} failed: {db_message(exc)}",
            ) from exc
        log.warning("created target table %s.%s mirroring %s.%s", *target, *source)
        created = reflect_table(
            self._target, target[0], target[1], mapping.key_columns, allow_keyless=True
        )
        assert created is not None
        return created

    def row_values(self, route: Route, values: dict[str, Any]) -> tuple[Route, dict[str, Any]]:
        """The event's columns that go to the target, adding new columns when allowed (the
        returned route then describes the widened table). Raises ApplyError."""
        if route.adapters:
            _adapt(route.adapters, values)
        m = route.mapping
        if m.include_columns is None and not m.exclude_columns:
            # Hot path: no column filter; one set comparison decides whether all are known.
            if values.keys() <= route.columns:
                return route, values
            out = values
        else:
            inc, exc, keys = m.include_columns, m.exclude_columns, route.table.key_columns
            out = {k: v for k, v in values.items() if column_selected(k, inc, exc, keys)}
            if out.keys() <= route.columns:
                return route, out
        unknown = [k for k in out if k not in route.columns]
        widened = self._add_columns(route, unknown)
        if widened.adapters:
            _adapt(widened.adapters, out)
        return widened, out

    def _add_columns(self, route: Route, names: Sequence[str]) -> Route:
        table = route.table
        if self._source is None:
            raise ApplyError(
                "unknown_column",
                f"columns {sorted(names)} are not in target {table.qualified} and cannot be "
                "added without CDCR_SOURCE__URL",
            )
        src = self._source_for(table)
        types = {c.name: c.type for c in catalog.qualified_columns(self._source, *src)}
        mirror_types(self._source, self._target, src, names)
        with self._target.begin() as conn:
            for n in names:
                if n not in types:
                    raise ApplyError("unknown_column", f"column {n!r} is not in source {src}")
                typ = types[n]
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


def _adapt(adapters: tuple[tuple[str, Callable[[Any], Any]], ...], values: dict[str, Any]) -> None:
    """Reshape ``values`` in place by the route's adapters; ApplyError(bad_value) naming the
    column when one cannot."""
    get = values.get
    name = ""
    try:
        for name, fn in adapters:
            v = get(name)
            if v is not None:
                values[name] = fn(v)
    except (ValueError, TypeError) as exc:
        raise ApplyError(
            "bad_value", f"column {name!r}: cannot write the event's value: {exc}"
        ) from exc
