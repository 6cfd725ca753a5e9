"""``cdcr doctor``: which source columns the Debezium connectors' current settings cannot carry
exactly, and the option that fixes each.

Reads every Debezium PostgreSQL connector's configuration from Kafka Connect's REST API
(``CDCR_KAFKA__CONNECT_URL``) and the column types of the tables it captures from the source
database's catalog (``CDCR_SOURCE__URL``), then applies the rules below. The rules follow what
Debezium 3.6.1's PostgresValueConverter does and what tests/stream/test_types_e2e.py measured;
docs/fidelity.md is the same list for people.

Contract: :func:`diagnose` returns a :class:`Report` (``lossy`` is true when any finding exists)
and raises CdcrError when Kafka Connect or the source database cannot be read, or there is no
Debezium PostgreSQL connector to check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from cdc_reconciler import wiring
from cdc_reconciler.config import Settings
from cdc_reconciler.connectors.postgres import catalog
from cdc_reconciler.connectors.postgres.catalog import DatabaseColumn
from cdc_reconciler.errors import CdcrError

PG_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"
# Kafka Connect answers its REST API at once; a longer wait means it is not there.
CONNECT_TIMEOUT_S = 10.0

# Debezium's defaults for the options the rules read.
DEFAULTS = {
    "decimal.handling.mode": "precise",
    "interval.handling.mode": "numeric",
    "time.precision.mode": "adaptive",
    "hstore.handling.mode": "json",
    "binary.handling.mode": "bytes",
    "include.unknown.datatypes": "false",
    # Debezium drops TRUNCATE events unless told otherwise.
    "skipped.operations": "t",
}
# What docs/fidelity.md recommends: every value Debezium can carry arrives exactly.
RECOMMENDED = {
    "decimal.handling.mode": "string",
    "interval.handling.mode": "string",
    "time.precision.mode": "adaptive_time_microseconds",
    "hstore.handling.mode": "json",
    "binary.handling.mode": "bytes",
    "include.unknown.datatypes": "true",
    "skipped.operations": "none",
}
# Types Debezium 3.6.1 has no schema for: left out of the event unless include.unknown.datatypes
# is true (then they arrive as the bytes of their text, which cdcr writes back exactly).
_UNKNOWN_TO_DEBEZIUM = frozenset({"line", "lseg", "box", "path", "polygon", "circle"})
_KNOWN_USER_TYPES = frozenset({"hstore", "citext", "ltree", "geometry", "geography", "isbn"})


@dataclass(frozen=True)
class Finding:
    table: str
    column: str
    type: str
    problem: str
    fix: str | None  # the connector option that avoids it, None when no setting does


@dataclass
class ConnectorReport:
    name: str
    database: str | None
    settings: dict[str, str]
    tables: int = 0
    findings: list[Finding] = field(default_factory=list)
    skipped: str | None = None


@dataclass
class Report:
    connectors: list[ConnectorReport]

    @property
    def lossy(self) -> bool:
        return any(c.findings for c in self.connectors)

    def as_dict(self) -> dict[str, Any]:
        return {"lossy": self.lossy, "connectors": [asdict(c) for c in self.connectors]}


def fetch_connectors(connect_url: str) -> dict[str, dict[str, str]]:
    """name -> config of every connector Kafka Connect runs. Raises CdcrError."""
    try:
        with httpx.Client(base_url=connect_url, timeout=CONNECT_TIMEOUT_S) as client:
            resp = client.get("/connectors", params={"expand": "info"})
            resp.raise_for_status()
            body = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CdcrError(
            f"cannot read the connectors from Kafka Connect at {connect_url}: {exc}"
        ) from exc
    out: dict[str, dict[str, str]] = {}
    for name, entry in body.items():
        cfg = (entry or {}).get("info", {}).get("config", {})
        out[str(name)] = {str(k): str(v) for k, v in cfg.items()}
    return out


def _patterns(value: str | None) -> list[re.Pattern[str]] | None:
    if not value:
        return None
    return [re.compile(p.strip()) for p in value.split(",") if p.strip()]


def captured(config: dict[str, str], table: str) -> bool:
    """Whether the connector's include/exclude lists capture ``schema.table`` (Debezium matches
    each comma-separated regex against the whole name)."""
    schema = table.split(".", 1)[0]
    for key, name, include in (
        ("schema.include.list", schema, True),
        ("schema.exclude.list", schema, False),
        ("table.include.list", table, True),
        ("table.exclude.list", table, False),
    ):
        pats = _patterns(config.get(key))
        if pats is None:
            continue
        hit = any(p.fullmatch(name) for p in pats)
        if hit != include:
            return False
    return True


# One rule: when it applies to a column under the settings ``s`` (defaults filled in), what is
# lost, and the connector option that avoids it (None when no setting does).
_When = Callable[[DatabaseColumn, dict[str, str]], bool]


@dataclass(frozen=True)
class _Rule:
    when: _When
    problem: str
    fix: str | None


def _precise_numeric(c: DatabaseColumn, s: dict[str, str]) -> bool:
    return c.base == "numeric" and s["decimal.handling.mode"] == "precise"


def _unconstrained(c: DatabaseColumn) -> bool:
    return c.typmod < 0


def _cut_to_millis(c: DatabaseColumn, s: dict[str, str]) -> bool:
    precision = c.typmod if c.typmod >= 0 else 6
    return (
        c.base in ("time", "timestamp", "timestamptz")
        and s["time.precision.mode"] == "connect"
        and precision > 3
    )


def _unknown_to_debezium(c: DatabaseColumn, s: dict[str, str]) -> bool:
    unknown = (
        c.base in _UNKNOWN_TO_DEBEZIUM
        or c.typtype in ("c", "m")
        or (c.typtype in ("b", "r") and not c.builtin and c.base not in _KNOWN_USER_TYPES)
    )
    return unknown and s["include.unknown.datatypes"] != "true"


_DECODED_TIME_MODES = ("adaptive", "adaptive_time_microseconds", "connect", "microseconds")
_TIME_TYPES = ("date", "time", "timetz", "timestamp", "timestamptz")
_TO_STRING = "decimal.handling.mode=string"

# The rules, in the order their findings are listed.
_RULES: tuple[_Rule, ...] = (
    _Rule(
        lambda c, s: c.is_array and c.dims >= 2,
        "multi-dimensional arrays arrive flattened, their elements NULL",
        None,
    ),
    _Rule(
        lambda c, s: c.base == "numeric" and c.is_array,
        "an array holding NaN or ±Infinity arrives as NULL",
        None,
    ),
    _Rule(
        lambda c, s: c.base in ("numeric", "money") and s["decimal.handling.mode"] == "double",
        "values are rounded through a double",
        _TO_STRING,
    ),
    _Rule(
        lambda c, s: _precise_numeric(c, s) and not _unconstrained(c),
        "NaN arrives as NULL",
        _TO_STRING,
    ),
    _Rule(
        lambda c, s: _precise_numeric(c, s) and _unconstrained(c) and c.is_array,
        "NaN and ±Infinity arrive as NULL",
        _TO_STRING,
    ),
    _Rule(
        lambda c, s: _precise_numeric(c, s) and _unconstrained(c) and not c.is_array,
        "NaN and ±Infinity arrive as NULL; trailing zeros are dropped (1.50 arrives as 1.5)",
        _TO_STRING,
    ),
    _Rule(
        lambda c, s: c.base == "interval" and s["interval.handling.mode"] != "string",
        "months become 30.4375 days and microseconds can be off by one "
        "(io.debezium.time.MicroDuration)",
        "interval.handling.mode=string",
    ),
    _Rule(
        _cut_to_millis,
        "fractions of a millisecond are cut",
        "time.precision.mode=adaptive_time_microseconds",
    ),
    _Rule(
        lambda c, s: c.base == "timetz",
        "arrives converted to UTC: the offset is lost (the instant is kept)",
        None,
    ),
    _Rule(
        lambda c, s: c.base == "varbit",
        "leading zero bits are lost (B'0101' arrives as 101)",
        None,
    ),
    _Rule(
        lambda c, s: c.base == "bytea" and s["binary.handling.mode"] != "bytes",
        "arrives as text cdcr does not decode",
        "binary.handling.mode=bytes",
    ),
    _Rule(
        lambda c, s: c.base == "hstore" and s["hstore.handling.mode"] not in ("json", "map"),
        "unknown hstore.handling.mode",
        "hstore.handling.mode=json",
    ),
    _Rule(
        lambda c, s: c.is_array and c.typtype == "e",
        "an array with a NULL element arrives as NULL",
        None,
    ),
    _Rule(
        _unknown_to_debezium,
        "Debezium leaves the column out of its events: the target keeps NULL",
        "include.unknown.datatypes=true",
    ),
)


def column_findings(col: DatabaseColumn, s: dict[str, str]) -> list[Finding]:
    """The rules: what the settings ``s`` (defaults filled in) lose for one column."""
    out = [
        Finding(col.table, col.name, col.type, rule.problem, rule.fix)
        for rule in _RULES
        if rule.when(col, s)
    ]
    mode = s["time.precision.mode"]
    if mode not in _DECODED_TIME_MODES and col.base in _TIME_TYPES:
        out.append(
            Finding(
                col.table,
                col.name,
                col.type,
                f"time.precision.mode={mode} is not decoded by cdcr",
                "time.precision.mode=adaptive_time_microseconds",
            )
        )
    return out


# The table of a finding about the connector's settings as a whole, not one column.
CONNECTOR_WIDE = "(every table)"


def connector_findings(s: dict[str, str]) -> list[Finding]:
    """What the settings ``s`` lose for every captured table at once (not per column)."""
    skipped = {op.strip() for op in s["skipped.operations"].split(",")}
    if "t" in skipped:
        return [
            Finding(
                CONNECTOR_WIDE,
                "-",
                "TRUNCATE",
                "source TRUNCATEs never reach Kafka: the target keeps the truncated rows",
                "skipped.operations=none",
            )
        ]
    return []


def _pg_connectors(connect_url: str, only: list[str] | None) -> dict[str, dict[str, str]]:
    """The Debezium PostgreSQL connectors to check (the ``only`` named ones when given)."""
    configs = {
        n: c
        for n, c in fetch_connectors(connect_url).items()
        if c.get("connector.class") == PG_CONNECTOR and (not only or n in only)
    }
    if not configs:
        raise CdcrError(
            f"no Debezium PostgreSQL connector{' named ' + ', '.join(only) if only else ''} in "
            f"Kafka Connect at {connect_url}: "
            "register one first (docs/fidelity.md lists the settings to use)"
        )
    return configs


def _check_connector(
    name: str, cfg: dict[str, str], columns: list[DatabaseColumn], dbname: str | None
) -> ConnectorReport:
    """One connector's report against the source database ``dbname``'s ``columns``."""
    effective = {k: cfg.get(k, v) for k, v in DEFAULTS.items()}
    rep = ConnectorReport(name, cfg.get("database.dbname"), effective)
    if rep.database and dbname and rep.database != dbname:
        rep.skipped = f"reads database {rep.database}; CDCR_SOURCE__URL is {dbname}"
        return rep
    tables = {c.table for c in columns if captured(cfg, c.table)}
    rep.tables = len(tables)
    rep.findings.extend(connector_findings(effective))
    for col in columns:
        if col.table in tables:
            rep.findings.extend(column_findings(col, effective))
    return rep


def diagnose(settings: Settings, only: list[str] | None = None) -> Report:
    """Check every Debezium PostgreSQL connector Kafka Connect runs (or the ``only`` named ones).
    Raises CdcrError."""
    engine = wiring.source_engine(settings)  # doctor reads the source tables' column types
    configs = _pg_connectors(settings.kafka.connect_url, only)
    try:
        columns = catalog.database_columns(engine)
        dbname = engine.url.database
    finally:
        engine.dispose()
    return Report([_check_connector(n, cfg, columns, dbname) for n, cfg in sorted(configs.items())])


def print_report(report: Report, console: Any) -> None:
    """One block per finding (readable at any terminal width; the fix stays on one line)."""
    for c in report.connectors:
        if c.skipped:
            console.print(f"connector {c.name}: not checked ({c.skipped})", highlight=False)
            continue
        off = {k: v for k, v in c.settings.items() if RECOMMENDED.get(k) != v}
        columns = [f for f in c.findings if f.table != CONNECTOR_WIDE]
        console.print(
            f"connector {c.name}: {c.tables} tables, {len(columns)} lossy columns"
            + (f"; settings differing from docs/fidelity.md: {off}" if off else ""),
            highlight=False,
        )
        for f in c.findings:
            where = f"every table: {f.type}" if f.table == CONNECTOR_WIDE else None
            where = where or f"{f.table}.{f.column} ({f.type})"
            console.print(f"  {where}", highlight=False)
            console.print(f"    lost: {f.problem}", highlight=False)
            console.print(f"    fix:  {f.fix or 'none: Debezium cannot carry it'}", highlight=False)
    console.print("LOSSY: see above" if report.lossy else "every captured column arrives exactly")
