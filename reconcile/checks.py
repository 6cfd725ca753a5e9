"""Optional per-table checks, run for each window after the diff (and after repair).

Configured in the YAML table mapping (``tables.<schema>.<table>.checks``), never taken from
events::

    checks:
      - {name: amount_total, kind: sum, column: amount, tolerance: 0.01}
      - name: no_negative_amounts
        kind: sql
        target_sql: "SELECT count(*) FROM public.orders WHERE amount < 0
                     AND updated_at < :window_end"
        expected: 0
      - name: paid_orders
        kind: sql
        source_sql: "SELECT count(*) FROM public.orders WHERE status = 'paid'"
        target_sql: "SELECT count(*) FROM public.orders WHERE status = 'paid'"

- ``sum``: ``sum(column)`` over the window's rows (change time in the window for windowed tables,
  the whole table otherwise) on each side; passes when ``|source − target| <= tolerance``
  (default 0; exact decimal arithmetic).
- ``sql``: a query returning one value, run on the source (``source_sql``) and/or the target
  (``target_sql``) inside a READ ONLY transaction with a statement timeout. With ``expected``
  every given side must equal it; without, both queries are required and must agree. Numbers
  compare as decimals within ``tolerance`` (default 0), other values by their text. The queries
  may use the bind parameters ``:window_start`` (NULL for a table's first window: write
  ``coalesce(CAST(:window_start AS timestamptz), '-infinity')``) and ``:window_end``; a literal
  colon followed by a letter must be written ``\\:``.

Each check yields a record ``{check, kind, result: pass|fail|error, source, target, ...}``; an
error (bad SQL, timeout, not exactly one value) counts as a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from sqlalchemy.exc import SQLAlchemyError

from cdc_reconciler.connectors.postgres.sql import quote_ident
from cdc_reconciler.errors import ConfigError
from cdc_reconciler.reconcile import checksum as ck
from cdc_reconciler.reconcile.checksum import TablePair
from cdc_reconciler.reconcile.segments import Segment, Window

STATEMENT_TIMEOUT_MS = 60_000


class _Check(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    tolerance: Decimal = Field(default=Decimal(0), ge=0)


class SumCheck(_Check):
    kind: Literal["sum"]
    column: str = Field(min_length=1)


class SqlCheck(_Check):
    kind: Literal["sql"]
    source_sql: str | None = None
    target_sql: str | None = None
    expected: Any = None

    @property
    def has_expected(self) -> bool:
        return "expected" in self.model_fields_set

    @model_validator(mode="after")
    def _sides(self) -> SqlCheck:
        if not self.source_sql and not self.target_sql:
            raise ValueError("needs source_sql, target_sql or both")
        if not (self.source_sql and self.target_sql) and not self.has_expected:
            raise ValueError("with only one of source_sql/target_sql, expected is required")
        return self


class ForeignKeysCheck(_Check):
    """Fail the window when orphan child rows are confirmed (reconcile/integrity.py); without
    it they are reported as a warning."""

    kind: Literal["foreign_keys"]


class SchemaDriftCheck(_Check):
    """Fail the table's windows while source and target columns drift apart
    (reconcile/integrity.py); without it drift is reported as a warning."""

    kind: Literal["schema_drift"]


AnyCheck = SumCheck | SqlCheck | ForeignKeysCheck | SchemaDriftCheck
Check = Annotated[AnyCheck, Field(discriminator="kind")]
_CHECKS: TypeAdapter[list[AnyCheck]] = TypeAdapter(list[Check])


def fails_on(checks: Sequence[AnyCheck], kind: str) -> bool:
    """Whether the table is configured to fail on the integrity check ``kind``."""
    return any(c.kind == kind for c in checks)


def parse_checks(table: str, raw: Sequence[dict[str, Any]]) -> list[AnyCheck]:
    """Validate a table's ``checks``; ConfigError names the table and the offending entry."""
    try:
        checks = _CHECKS.validate_python(list(raw))
    except ValidationError as exc:
        raise ConfigError(f"invalid checks for table {table}:\n{exc}") from exc
    names = [c.name for c in checks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"table {table}: duplicate check names {dupes}")
    return checks


def passed(results: Sequence[dict[str, Any]]) -> bool:
    return all(r.get("result") not in ("fail", "error") for r in results)


def run_checks(
    source: sa.Engine,
    target: sa.Engine,
    pair: TablePair,
    window: Window | None,
    checks: Sequence[AnyCheck],
) -> list[dict[str, Any]]:
    """Run every sum and SQL check for ``window`` and return one record per check, in order
    (foreign-key and drift checks are run by reconcile/integrity.py). Never raises for a check's
    own failure (a database error becomes ``result: error``)."""
    return [
        _run(source, target, pair, window, c) for c in checks if isinstance(c, (SumCheck, SqlCheck))
    ]


def _run(
    source: sa.Engine,
    target: sa.Engine,
    pair: TablePair,
    window: Window | None,
    check: SumCheck | SqlCheck,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "check": check.name,
        "kind": check.kind,
        "tolerance": str(check.tolerance),
    }
    try:
        if isinstance(check, SumCheck):
            rec["column"] = check.column
            seg = Segment(pair.name, window=window if pair.windowed else None)
            s = _sum(source, pair.source, seg, check.column)
            t = _sum(target, pair.target, seg, check.column)
            rec.update(source=_jsonable(s), target=_jsonable(t), difference=str(abs(s - t)))
            ok = abs(s - t) <= check.tolerance
        else:
            params = {
                "window_start": None if window is None else window.start,
                "window_end": None if window is None else window.end,
            }
            values: dict[str, Any] = {}
            if check.source_sql:
                values["source"] = _scalar(source, check.source_sql, params)
            if check.target_sql:
                values["target"] = _scalar(target, check.target_sql, params)
            rec.update({k: _jsonable(v) for k, v in values.items()})
            if check.has_expected:
                rec["expected"] = _jsonable(check.expected)
                ok = all(_same(v, check.expected, check.tolerance) for v in values.values())
            else:
                ok = _same(values["source"], values["target"], check.tolerance)
        rec["result"] = "pass" if ok else "fail"
    except (SQLAlchemyError, _NotScalar) as exc:
        rec["result"] = "error"
        rec["error"] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:500]}"
    return rec


class _NotScalar(Exception):
    pass


def _read_only(conn: sa.Connection) -> None:
    conn.execute(sa.text("SET TRANSACTION READ ONLY"))
    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(STATEMENT_TIMEOUT_MS)}")
    ck.stable_output(conn)


def _sum(engine: sa.Engine, side: ck.Side, seg: Segment, column: str) -> Decimal:
    params: dict[str, Any] = {}
    with engine.connect() as conn, conn.begin():
        _read_only(conn)
        v = conn.execute(
            sa.text(
                f"SELECT coalesce(sum({quote_ident(column)}), 0)::numeric::text "
                f"FROM {side.sql_name} WHERE {ck.segment_where(side, seg, params)}"
            ),
            params,
        ).scalar_one()
    return Decimal(v)


def _scalar(engine: sa.Engine, sql: str, params: dict[str, Any]) -> Any:
    with engine.connect() as conn, conn.begin():
        _read_only(conn)
        rows = conn.execute(sa.text(sql), params).all()
    if len(rows) != 1 or len(rows[0]) != 1:
        raise _NotScalar(f"the query must return one row of one column, got {len(rows)} row(s)")
    return rows[0][0]


def _number(v: Any) -> Decimal | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float, Decimal)):
        return Decimal(str(v))
    return None


def _same(a: Any, b: Any, tolerance: Decimal) -> bool:
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        try:
            return abs(na - nb) <= tolerance
        except InvalidOperation:  # NaN / infinities
            return str(na) == str(nb)
    if a is None or b is None:
        return a is None and b is None
    return _text(a) == _text(b)


def _text(v: Any) -> str:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, (Decimal, float)):
        return str(v)
    return _text(v)
