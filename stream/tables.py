"""Which target table an event goes to, and with which columns.

Topic ``<prefix>.<schema>.<table>`` (or the event's ``source.schema``/``source.table``) maps to the
target ``<schema>.<table>`` unless the YAML mapping says otherwise. Target tables are reflected once
and cached. With ``create_missing`` a missing target table is created by mirroring the source
table (read from its catalog, connectors/postgres/catalog.py) plus the engine columns; a column
that appears in events but not in the target is added (its type read from the source) and
logged. Values whose Debezium shape the target's COPY input does not read are reshaped by the
route's adapters (connectors/postgres/adapters.py).

Failures to map an event are :class:`ApplyError` with a stable ``kind``; the engine dead-letters
them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.config import PartitionBy, TableMapping, column_selected, interval_seconds
from cdc_reconciler.connectors.debezium import ChangeEvent
from cdc_reconciler.connectors.postgres import catalog
from cdc_reconciler.connectors.postgres.adapters import value_adapters
from cdc_reconciler.connectors.postgres.catalog import INTERVAL_COMMENT
from cdc_reconciler.connectors.postgres.partitions import bucket_start, partition_ddl
from cdc_reconciler.connectors.postgres.reflect import reflect_table
from cdc_reconciler.connectors.postgres.sql import qualified_ident, quote_ident
from cdc_reconciler.connectors.postgres.table import ENGINE_COLUMNS, TargetTable, engine_column_ddl
from cdc_reconciler.errors import CdcrError

log = logging.getLogger(__name__)

# A table whose target DDL failed is retried this often (its events are dead-lettered meanwhile).
BLOCKED_RETRY_S = 60.0


class ApplyError(CdcrError):
    """An event that cannot be applied. ``kind`` is stable and documented (the engine
    dead-letters it with that reason; outside the engine, e.g. `cdcr tables sync`, it is a
    user-facing CdcrError):

    - ``unknown_table``: no source schema/table in the event or the topic name;
    - ``no_target_table``: the target table does not exist (create it, or run with
      ``--create-missing``);
    - ``missing_key``: the key columns are not in the Kafka key nor in the row;
    - ``unknown_column``: the event has a column the target lacks and it could not be added;
    - ``bad_value``: a value cannot be turned into the target column's text form;
    - ``target_ddl_failed``: the target table (or a type or extension it needs) could not be
      created; the message carries the statement's error. The table is retried every
      ``BLOCKED_RETRY_S`` seconds; other tables keep flowing.
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
            blocked = self._blocked.get(name)
            if blocked is not None and time.monotonic() < blocked[1]:
                raise blocked[0]
            try:
                found = self._routes[name] = self._load(name)
            except ApplyError as exc:
                if exc.kind == "target_ddl_failed":
                    # Every event of the table would retry the DDL; retry once a while instead.
                    self._blocked[name] = (exc, time.monotonic() + BLOCKED_RETRY_S)
                    log.error("table %s.%s is blocked: %s", *name, exc.message)
                raise
            self._blocked.pop(name, None)
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
            if _transient(exc):
                raise
            raise ApplyError(
                "target_ddl_failed",
                f"creating target table {target[0]}.{target[1]} failed: {_db_message(exc)}",
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
        types = {c.name: c.type for c in source_columns(self._source, src)}
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


def mirror_ddl(
    source: sa.Engine, src: tuple[str, str], tgt: tuple[str, str], mapping: TableMapping
) -> str:
    """CREATE TABLE for the target from the source table's definition: the carried columns
    (:func:`~cdc_reconciler.config.column_selected`), the engine columns, the key (the source's
    or the configured one; none when the source has none: the engine then applies the table by
    its keyless rules, docs/apply.md) and, for a time-partitioned target, the partition column
    in the key and the PARTITION BY clause. Non-key columns are nullable in the target (an
    unchanged TOASTed value may arrive before its row). Raises ApplyError."""
    cols, keys = _source_definition(source, src, mapping)
    carried = [
        c
        for c in cols
        if c.name not in ENGINE_COLUMNS
        and column_selected(c.name, mapping.include_columns, mapping.exclude_columns, keys)
    ]
    not_null = set(keys)
    part = mapping.partition_column
    if part is not None:
        _check_partition_column(src, part, cols)
        # PostgreSQL (and TimescaleDB) require every unique key to include the partitioning
        # column: the target's key is the source key plus it (docs/partitioning.md).
        not_null.add(part)
        if keys and part not in keys:
            keys = [*keys, part]
    return _create_table(tgt, carried, not_null, keys, mapping.partition_by)


def _source_definition(
    source: sa.Engine, src: tuple[str, str], mapping: TableMapping
) -> tuple[list[catalog.Column], list[str]]:
    """The source table's columns and its key (the configured one, else its primary key).
    Raises ApplyError(no_target_table) when the source table does not exist."""
    if not catalog.exists(source, *src):
        raise ApplyError("no_target_table", f"source table {src[0]}.{src[1]} does not exist")
    return source_columns(source, src), list(
        mapping.key_columns or catalog.primary_key(source, *src)
    )


def _create_table(
    tgt: tuple[str, str],
    columns: list[catalog.Column],
    not_null: set[str],
    keys: list[str],
    partition_by: PartitionBy | None,
) -> str:
    parts = [
        f"{quote_ident(c.name)} {c.type}{' NOT NULL' if c.name in not_null else ''}"
        for c in columns
    ]
    parts.extend(engine_column_ddl())
    if keys:
        parts.append(f"PRIMARY KEY ({', '.join(quote_ident(k) for k in keys)})")
    ddl = f"CREATE TABLE IF NOT EXISTS {qualified_ident(*tgt)} ({', '.join(parts)})"
    if partition_by is not None:
        ddl += f" PARTITION BY RANGE ({quote_ident(partition_by.column)})"
    return ddl


def _check_partition_column(src: tuple[str, str], part: str, cols: list[catalog.Column]) -> None:
    """Raise ApplyError(target_ddl_failed) unless ``part`` is a timestamp, timestamptz or date
    column of the source table."""
    typ = next((c.type for c in cols if c.name == part), None)
    if typ is None or (typ != "date" and not typ.startswith("timestamp")):
        what = "not a column of the source table" if typ is None else f"of type {typ}"
        raise ApplyError(
            "target_ddl_failed",
            f"table {src[0]}.{src[1]}: the partition column {part!r} is {what}; it must "
            "be a timestamp, timestamptz or date column",
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


def require_timescaledb(target: sa.Engine, tgt: tuple[str, str]) -> None:
    """Raise ApplyError(target_ddl_failed) naming the extension unless the target database has
    TimescaleDB installed (``CREATE EXTENSION timescaledb``); never installs it (it needs
    ``shared_preload_libraries`` and a server restart, an operator's decision)."""
    with target.connect() as conn:
        if conn.execute(
            sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
        ).first():
            return
        available = conn.execute(
            sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
        ).first()
    how = (
        "it is available on the server: run CREATE EXTENSION timescaledb in the target database "
        "(with timescaledb in shared_preload_libraries)"
        if available
        else "the target database server does not have it: install TimescaleDB there (e.g. the "
        "timescale/timescaledb image, see docker-compose.yml) or use partition_by instead"
    )
    raise ApplyError(
        "target_ddl_failed",
        f"target table {tgt[0]}.{tgt[1]} is configured as a hypertable, which needs the "
        f"extension timescaledb; {how}",
    )


# --------------------------------------------------------------------------- source types


def source_columns(source: sa.Engine, src: tuple[str, str]) -> list[catalog.Column]:
    """The source table's columns in order (:func:`catalog.columns`). Types are written by
    ``format_type`` with an empty search_path, so every user or extension type comes
    schema-qualified (``s.mood``, ``public.hstore[]``) and means the same in the target."""
    with source.connect() as conn:
        conn.execute(sa.text("SELECT set_config('search_path', '', true)"))
        rows = catalog.columns(conn, *src)
        conn.rollback()
    return rows


@dataclass(frozen=True, slots=True)
class _TypeInfo:
    oid: int
    schema: str
    name: str
    typtype: str
    category: str
    elem: int
    base: int
    relid: int
    extension: str | None
    extension_schema: str | None

    @property
    def qualified(self) -> str:
        return str(qualified_ident(self.schema, self.name))


_TYPE_INFO = sa.text(
    "SELECT t.oid, n.nspname AS schema, t.typname AS name, t.typtype, t.typcategory AS category, "
    "t.typelem AS elem, t.typbasetype AS base, t.typrelid AS relid, e.extname AS extension, "
    "en.nspname AS extension_schema "
    "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
    "LEFT JOIN pg_depend d ON d.classid = 'pg_type'::regclass AND d.objid = t.oid "
    "AND d.deptype = 'e' AND d.refclassid = 'pg_extension'::regclass "
    "LEFT JOIN pg_extension e ON e.oid = d.refobjid "
    "LEFT JOIN pg_namespace en ON en.oid = e.extnamespace WHERE t.oid = :oid"
)


def mirror_types(
    source: sa.Engine,
    target: sa.Engine,
    src: tuple[str, str],
    only: Sequence[str] | None = None,
) -> list[str]:
    """Create in the target what the source table's columns (or ``only`` those) need beyond the
    built-in types: extensions (``CREATE EXTENSION IF NOT EXISTS`` when the target has them
    available), enums (same labels, same order), domains (base type, default and CHECKs; not
    NOT NULL, as target columns stay nullable) and composite types, recursively, arrays of them
    too. A type that already exists is kept (an enum gets its missing labels). Returns the
    statements run. Raises ApplyError(target_ddl_failed) naming the type or extension."""
    cols = [c for c in source_columns(source, src) if only is None or c.name in only]
    plan: list[tuple[str, _TypeInfo]] = []
    seen: set[int] = set()
    with source.connect() as sconn:
        sconn.execute(sa.text("SELECT set_config('search_path', '', true)"))
        for c in cols:
            _plan_type(sconn, c.oid, plan, seen, f"column {c.name}")
        statements = [(what, info, _type_ddl(sconn, info)) for what, info in plan]
        sconn.rollback()
    done: list[str] = []
    for what, info, ddl in statements:
        done.extend(_ensure_in_target(target, what, info, ddl))
    return done


def _plan_type(
    conn: sa.Connection, oid: int, plan: list[tuple[str, _TypeInfo]], seen: set[int], what: str
) -> None:
    if oid in seen or oid == 0:
        return
    seen.add(oid)
    row = conn.execute(_TYPE_INFO, {"oid": oid}).first()
    if row is None:
        return
    info = _TypeInfo(**row._mapping)
    if info.schema == "pg_catalog" or info.schema == "information_schema":
        return
    if info.extension is not None:
        plan.append((what, info))
        return
    if info.category == "A" and info.elem:
        _plan_type(conn, info.elem, plan, seen, what)
        return
    if info.typtype == "d":
        _plan_type(conn, info.base, plan, seen, what)
    elif info.typtype == "c":
        attrs = conn.execute(
            sa.text(
                "SELECT atttypid FROM pg_attribute WHERE attrelid = :r AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum"
            ),
            {"r": info.relid},
        )
        for (a,) in attrs.all():
            _plan_type(conn, int(a), plan, seen, what)
    elif info.typtype != "e":
        kind = {"b": "base", "r": "range", "m": "multirange", "p": "pseudo"}.get(info.typtype)
        raise ApplyError(
            "target_ddl_failed",
            f"{what}: type {info.schema}.{info.name} is a user-defined {kind or info.typtype} "
            "type cdcr cannot mirror; create it in the target first",
        )
    plan.append((what, info))


def _type_ddl(conn: sa.Connection, info: _TypeInfo) -> str:
    """The CREATE statement for one user type, built from the source catalog: names quoted,
    labels and defaults rendered by the source (quote_literal, pg_get_constraintdef)."""
    if info.extension is not None:
        return (
            f"CREATE EXTENSION IF NOT EXISTS {quote_ident(info.extension)} "
            f"WITH SCHEMA {quote_ident(info.extension_schema or 'public')}"
        )
    if info.typtype == "e":
        labels = conn.execute(
            sa.text(
                "SELECT quote_literal(enumlabel) FROM pg_enum WHERE enumtypid = :o "
                "ORDER BY enumsortorder"
            ),
            {"o": info.oid},
        ).scalars()
        return f"CREATE TYPE {info.qualified} AS ENUM ({', '.join(labels)})"
    if info.typtype == "d":
        d = conn.execute(
            sa.text(
                "SELECT format_type(t.typbasetype, t.typtypmod) AS base, t.typdefault AS dflt, "
                "(SELECT string_agg(pg_get_constraintdef(c.oid), ' ' ORDER BY c.conname) "
                " FROM pg_constraint c WHERE c.contypid = t.oid AND c.contype = 'c') AS checks "
                "FROM pg_type t WHERE t.oid = :o"
            ),
            {"o": info.oid},
        ).one()
        ddl = f"CREATE DOMAIN {info.qualified} AS {d.base}"
        if d.dflt is not None:
            ddl += f" DEFAULT {d.dflt}"
        return ddl + (f" {d.checks}" if d.checks else "")
    attrs = conn.execute(
        sa.text(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = :r AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ),
        {"r": info.relid},
    ).all()
    body = ", ".join(f"{quote_ident(a)} {t}" for a, t in attrs)
    return f"CREATE TYPE {info.qualified} AS ({body})"


_AVAILABLE = sa.text("SELECT 1 FROM pg_available_extensions WHERE name = :e")


def _ensure_in_target(target: sa.Engine, what: str, info: _TypeInfo, ddl: str) -> list[str]:
    try:
        with target.begin() as conn:
            if info.extension is not None:
                if conn.execute(
                    sa.text("SELECT 1 FROM pg_extension WHERE extname = :e"), {"e": info.extension}
                ).first():
                    return []
                if not conn.execute(_AVAILABLE, {"e": info.extension}).first():
                    raise ApplyError(
                        "target_ddl_failed",
                        f"{what} needs the extension {info.extension} (type {info.name}), which "
                        "the target database server does not have: install it there (for "
                        f"hstore, citext, ltree: the postgresql-contrib package) or run "
                        f"CREATE EXTENSION {info.extension} in the target",
                    )
            else:
                found = conn.execute(
                    sa.text("SELECT to_regtype(:t)::oid"), {"t": f"{info.qualified}"}
                ).scalar()
                if found is not None:
                    return _add_enum_labels(conn, info, ddl, int(found))
            schema = info.extension_schema if info.extension else info.schema
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema or 'public')}"))
            conn.execute(sa.text(ddl))
    except sa.exc.DBAPIError as exc:
        if _transient(exc):
            raise
        # Another consumer may have created it at the same moment: fine if it is there now.
        with target.connect() as conn:
            name = info.extension if info.extension else info.qualified
            check = (
                "SELECT 1 FROM pg_extension WHERE extname = :t"
                if info.extension
                else "SELECT to_regtype(:t)"
            )
            if conn.execute(sa.text(check), {"t": name}).scalar() is not None:
                return []
        raise ApplyError(
            "target_ddl_failed", f"{what}: {ddl.split(' AS ')[0]} failed: {_db_message(exc)}"
        ) from exc
    log.warning("created in the target for %s: %s", what, ddl)
    return [ddl]


def _add_enum_labels(conn: sa.Connection, info: _TypeInfo, ddl: str, oid: int) -> list[str]:
    """An enum that exists in the target gets the source's labels it lacks (added at the end:
    PostgreSQL cannot reorder labels)."""
    if info.typtype != "e":
        return []
    have = set(
        conn.execute(
            sa.text("SELECT quote_literal(enumlabel) FROM pg_enum WHERE enumtypid = :o"), {"o": oid}
        ).scalars()
    )
    inner = ddl[ddl.index("ENUM (") + 6 : -1]
    wanted = [x.strip() for x in _split_literals(inner)]
    added = []
    for label in wanted:
        if label not in have:
            stmt = f"ALTER TYPE {info.qualified} ADD VALUE IF NOT EXISTS {label}"
            conn.execute(sa.text(stmt))
            added.append(stmt)
    return added


def _split_literals(inner: str) -> list[str]:
    """Split ``'a', 'b''c'`` (quote_literal output joined by ', ') into its literals."""
    out: list[str] = []
    i = 0
    while i < len(inner):
        if inner[i] in " ,":
            i += 1
            continue
        start = i
        if inner[i] == "E":
            i += 1
        i += 1  # opening quote
        while i < len(inner):
            if inner[i] == "'" and i + 1 < len(inner) and inner[i + 1] == "'":
                i += 2
            elif inner[i] == "\\" and inner[start] == "E":
                i += 2
            elif inner[i] == "'":
                i += 1
                break
            else:
                i += 1
        out.append(inner[start:i])
    return out


def _transient(exc: sa.exc.DBAPIError) -> bool:
    """The target is unreachable or the transaction was cancelled: not the statement's fault, so
    not a dead letter; the caller's retry policy decides (the engine retries with backoff)."""
    code = str(getattr(exc.orig, "pgcode", None) or "")
    return (
        exc.connection_invalidated
        or code[:2] in ("08", "57", "40")
        or (not code and isinstance(exc, sa.exc.OperationalError))
    )


def _db_message(exc: sa.exc.DBAPIError) -> str:
    return " ".join(str(exc.orig).split()) if exc.orig is not None else str(exc)


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
