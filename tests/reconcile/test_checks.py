"""Per-table checks (sum with tolerance, business-rule SQL) run per window against real
PostgreSQL; a failed check holds the watermark and makes the exit status 1."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from cdc_reconciler.errors import ConfigError
from cdc_reconciler.reconcile.checks import parse_checks

from .helpers import T0, Case, applied, cli, run


def configure(c: Case, **mapping: Any) -> None:
    c.config.write_text(
        yaml.safe_dump({"tables": {c.table: {"change_time_column": "updated_at", **mapping}}})
    )


def window_sql(table: str, cond: str) -> str:
    return (
        f"SELECT count(*) FROM {table} WHERE {cond} AND updated_at >= "
        "coalesce(CAST(:window_start AS timestamptz), '-infinity') "
        "AND updated_at < :window_end"
    )


def runs(target: sa.Engine, table: str) -> list[Any]:
    with target.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT window_end, status, checks FROM cdcr.reconcile_runs WHERE table_name = :t "
                    "ORDER BY window_end"
                ),
                {"t": table},
            )
        )


def mark(target: sa.Engine, table: str) -> datetime | None:
    with target.connect() as conn:
        v: datetime | None = conn.execute(
            sa.text("SELECT reconciled_through FROM cdcr.watermarks WHERE table_name = :t"),
            {"t": table},
        ).scalar()
    return v


def test_parse_checks_validates() -> None:
    ok = parse_checks(
        "s.t",
        [
            {"name": "a", "kind": "sum", "column": "amount", "tolerance": "0.01"},
            {"name": "b", "kind": "sql", "target_sql": "SELECT 1", "expected": 1},
            {"name": "c", "kind": "sql", "source_sql": "SELECT 1", "target_sql": "SELECT 1"},
            {"name": "d", "kind": "sql", "target_sql": "SELECT NULL", "expected": None},
        ],
    )
    assert [c.kind for c in ok] == ["sum", "sql", "sql", "sql"]
    for bad in (
        [{"name": "x", "kind": "avg", "column": "a"}],
        [{"name": "x", "kind": "sum"}],
        [{"name": "x", "kind": "sum", "column": "a", "tolerance": -1}],
        [{"name": "x", "kind": "sql", "target_sql": "SELECT 1"}],  # no expected
        [{"name": "x", "kind": "sql"}],
        [
            {
                "name": "x",
                "kind": "sql",
                "source_sql": "SELECT 1",
                "target_sql": "SELECT 1",
                "typo": 1,
            }
        ],
        [{"name": "x", "kind": "sum", "column": "a"}, {"name": "x", "kind": "sum", "column": "b"}],
    ):
        with pytest.raises(ConfigError, match="s.t"):
            parse_checks("s.t", bad)


def test_checks_pass_and_are_recorded_per_window(target_engine: sa.Engine, case: Case) -> None:
    applied(target_engine, case, datetime.now(UTC) + timedelta(hours=1))
    configure(
        case,
        checks=[
            {"name": "amount_total", "kind": "sum", "column": "amount", "tolerance": 0},
            {
                "name": "rows_per_window",
                "kind": "sql",
                "source_sql": window_sql(case.table, "true"),
                "target_sql": window_sql(case.table, "true"),
            },
            {
                "name": "no_negative",
                "kind": "sql",
                "expected": 0,
                "target_sql": window_sql(case.table, "amount < 0"),
            },
        ],
    )
    code, out = cli(
        "reconcile", "--table", case.table, "--once", "--json", "--config", str(case.config)
    )
    assert code == 0, out
    windows = json.loads(out)["tables"][0]["windows"]
    assert {w["status"] for w in windows} == {"clean"}
    first = windows[0]["checks"]
    assert [c["check"] for c in first] == [
        "count_checksum",
        "amount_total",
        "rows_per_window",
        "no_negative",
        "schema_drift",
        "foreign_keys",
    ]
    assert [c["result"] for c in first[4:]] == ["pass", "pass"]  # reconcile/integrity.py
    # Window [-inf, 00:05): ids 1..100, amounts 0.25 * id.
    assert first[1] == {
        "check": "amount_total",
        "kind": "sum",
        "column": "amount",
        "tolerance": "0",
        "source": "1262.50",
        "target": "1262.50",
        "difference": "0.00",
        "result": "pass",
    }
    assert (first[2]["source"], first[2]["target"], first[2]["result"]) == (100, 100, "pass")
    assert (first[3]["target"], first[3]["expected"], first[3]["result"]) == (0, 0, "pass")
    recorded = runs(target_engine, case.table)
    assert len(recorded) == len(windows)
    assert all([c["result"] for c in r.checks[1:]] == ["pass"] * 5 for r in recorded)


def test_failed_checks_hold_the_watermark(
    source_engine: sa.Engine, target_engine: sa.Engine, case: Case
) -> None:
    applied(target_engine, case, datetime.now(UTC) + timedelta(hours=1))
    # amount is not compared row by row here, so only the sum check sees it drift.
    configure(
        case,
        exclude_columns=["amount"],
        checks=[
            {"name": "amount_total", "kind": "sum", "column": "amount", "tolerance": "0.01"},
            {
                "name": "no_negative",
                "kind": "sql",
                "expected": 0,
                "target_sql": window_sql(case.table, "amount < 0"),
            },
            {"name": "constant", "kind": "sql", "source_sql": "SELECT 1", "target_sql": "SELECT 1"},
        ],
    )
    run(target_engine, f"UPDATE {case.table} SET amount = amount + 0.005 WHERE id = 130")
    run(target_engine, f"UPDATE {case.table} SET amount = amount + 5 WHERE id = 480")  # window 4
    # A business rule broken on both sides: rows agree, the rule does not (window 2).
    for e in (source_engine, target_engine):
        run(e, f"UPDATE {case.table} SET amount = -1 WHERE id = 250")

    code, out = cli(
        "reconcile",
        "--table",
        case.table,
        "--once",
        "--dry-run",
        "--json",
        "--config",
        str(case.config),
    )
    assert code == 1, out
    dry = json.loads(out)["tables"][0]["windows"]
    assert [w["status"] for w in dry[:6]] == [
        "clean",
        "clean",
        "check_failed",
        "clean",
        "check_failed",
        "clean",
    ]
    assert runs(target_engine, case.table) == []

    code, out = cli(
        "reconcile", "--table", case.table, "--once", "--json", "--config", str(case.config)
    )
    assert code == 1, out
    windows = json.loads(out)["tables"][0]["windows"]
    assert [w["status"] for w in windows] == ["clean", "clean", "check_failed"]
    assert mark(target_engine, case.table) == T0 + timedelta(minutes=10)
    by_name = {c["check"]: c for c in windows[2]["checks"]}
    assert by_name["no_negative"]["result"] == "fail" and by_name["no_negative"]["target"] == 1
    assert by_name["amount_total"]["result"] == "pass"
    w1 = {c["check"]: c for c in windows[1]["checks"]}
    assert w1["amount_total"]["difference"] == "0.005"  # within tolerance
    with target_engine.connect() as conn:
        state = conn.execute(
            sa.text("SELECT state FROM cdcr.watermarks WHERE table_name = :t"), {"t": case.table}
        ).scalar()
    assert state == "check_failed"
    recorded = runs(target_engine, case.table)
    assert [r.status for r in recorded] == ["clean", "clean", "check_failed"]
    assert {c["check"]: c["result"] for c in recorded[2].checks}["no_negative"] == "fail"

    # Fix the rule; the sum drift in window 4 now stops the watermark there.
    for e in (source_engine, target_engine):
        run(e, f"UPDATE {case.table} SET amount = 62.5 WHERE id = 250")
    code, out = cli(
        "reconcile", "--table", case.table, "--once", "--json", "--config", str(case.config)
    )
    assert code == 1, out
    windows = json.loads(out)["tables"][0]["windows"]
    assert [w["status"] for w in windows] == ["clean", "clean", "check_failed"]
    failed = {c["check"]: c for c in windows[2]["checks"]}["amount_total"]
    assert (failed["result"], failed["difference"]) == ("fail", "5.00")
    assert mark(target_engine, case.table) == T0 + timedelta(minutes=20)


def test_check_errors_count_as_failures(target_engine: sa.Engine, case: Case) -> None:
    applied(target_engine, case, datetime.now(UTC) + timedelta(hours=1))
    configure(
        case,
        checks=[
            {
                "name": "bad_sql",
                "kind": "sql",
                "target_sql": "SELECT nope FROM nowhere",
                "expected": 1,
            },
            {
                "name": "two_rows",
                "kind": "sql",
                "target_sql": "SELECT 1 UNION ALL SELECT 2",
                "expected": 1,
            },
            {
                "name": "writes",
                "kind": "sql",
                "target_sql": f"DELETE FROM {case.table} RETURNING 1",
                "expected": 1,
            },
        ],
    )
    code, out = cli(
        "reconcile",
        "--table",
        case.table,
        "--once",
        "--json",
        "--to",
        "2026-01-01T00:05:00Z",
        "--config",
        str(case.config),
    )
    assert code == 1, out
    [w] = json.loads(out)["tables"][0]["windows"]
    assert w["status"] == "check_failed"
    results = {c["check"]: c for c in w["checks"]}
    assert {results[n]["result"] for n in ("bad_sql", "two_rows", "writes")} == {"error"}
    assert "read-only" in results["writes"]["error"]
    with target_engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {case.table}")).scalar() == 600

    configure(case, checks=[{"name": "x", "kind": "sum"}])
    code, out = cli("reconcile", "--table", case.table, "--once", "--config", str(case.config))
    assert code == 1 and "invalid checks" in out
