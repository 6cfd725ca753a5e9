"""Creating target tables (and the types and extensions they need) by mirroring the source
table's definition, read from the source catalog (connectors/postgres/catalog.py): the DDL of
`cdcr tables sync` and of ``--create-missing``. Failures are :class:`ApplyError`
(``no_target_table``, ``target_ddl_failed``); a target that is unreachable (:func:`transient`)
propagates as the database error, for the caller's retry policy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from cdc_reconciler.config import PartitionBy, TableMapping, column_selected
from cdc_reconciler.connectors.postgres import catalog
from cdc_reconciler.connectors.postgres.sql import qualified_ident, quote_ident
from cdc_reconciler.connectors.postgres.table import ENGINE_COLUMNS, engine_column_ddl
from cdc_reconciler.stream.errors import ApplyError

log = logging.getLogger(__name__)


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
    return catalog.qualified_columns(source, *src), list(
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
    cols = [c for c in catalog.qualified_columns(source, *src) if only is None or c.name in only]
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
        if transient(exc):
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
            "target_ddl_failed", f"{what}: {ddl.split(' AS ')[0]} failed: {db_message(exc)}"
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


def transient(exc: sa.exc.DBAPIError) -> bool:
    """The target is unreachable or the transaction was cancelled: not the statement's fault, so
    not a dead letter; the caller's retry policy decides (the engine retries with backoff)."""
    code = str(getattr(exc.orig, "pgcode", None) or "")
    return (
        exc.connection_invalidated
        or code[:2] in ("08", "57", "40")
        or (not code and isinstance(exc, sa.exc.OperationalError))
    )


def db_message(exc: sa.exc.DBAPIError) -> str:
    return " ".join(str(exc.orig).split()) if exc.orig is not None else str(exc)
