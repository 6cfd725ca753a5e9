"""``cdcr doctor`` (issue 9 item 5c) against real Kafka Connect and PostgreSQL: a connector with
Debezium's default settings is reported column by column with the option that fixes each, exit
1; the same table under the settings of docs/fidelity.md leaves only what no setting fixes; a
table of exactly-carried types is clean, exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from cdc_reconciler.connectors.doctor import (
    DEFAULTS,
    RECOMMENDED,
    captured,
    column_findings,
    connector_findings,
)
from cdc_reconciler.connectors.postgres.catalog import DatabaseColumn
from tests.conftest import Connector
from tests.stream.test_types_e2e import LOSSLESS


def _doctor(connector: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "cdc_reconciler", "doctor", "--json", "--connector", connector],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _findings(report: dict[str, Any], table: str) -> dict[str, tuple[str, str | None]]:
    (conn,) = report["connectors"]
    return {f["column"]: (f["problem"], f["fix"]) for f in conn["findings"] if f["table"] == table}


@pytest.fixture()
def lossy_table(source_engine: sa.Engine, unique_name: Callable[[str], str]) -> Iterator[str]:
    name = unique_name("doc")
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"create table public.{name} (id int primary key, n numeric, n2 numeric(10,2), "
                "iv interval, tz timetz, ln line, a2 integer[][], ok text, ts timestamp(6))"
            )
        )
    yield f"public.{name}"
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists public.{name}"))


@pytest.mark.services
def test_default_settings_are_reported_with_their_fix(
    debezium: Callable[..., Connector], lossy_table: str
) -> None:
    connector = debezium([lossy_table])  # Debezium's defaults
    rc, report = _doctor(connector.name)
    assert rc == 1
    assert report["lossy"] is True
    got = _findings(report, lossy_table)
    assert got["n"][1] == "decimal.handling.mode=string"
    assert "trailing zeros" in got["n"][0]
    assert got["n2"] == ("NaN arrives as NULL", "decimal.handling.mode=string")
    assert got["iv"][1] == "interval.handling.mode=string"
    assert got["tz"][1] is None and "UTC" in got["tz"][0]
    assert got["ln"][1] == "include.unknown.datatypes=true"
    assert got["a2"][1] is None
    assert "ok" not in got and "id" not in got and "ts" not in got
    # Debezium's default drops TRUNCATE events: said once for the connector, with the fix.
    assert _findings(report, "(every table)") == {
        "-": (
            "source TRUNCATEs never reach Kafka: the target keeps the truncated rows",
            "skipped.operations=none",
        )
    }


@pytest.mark.services
def test_recommended_settings_leave_only_what_debezium_cannot_carry(
    debezium: Callable[..., Connector], lossy_table: str
) -> None:
    connector = debezium([lossy_table], extra=LOSSLESS)
    rc, report = _doctor(connector.name)
    assert rc == 1
    assert set(_findings(report, lossy_table)) == {"tz", "a2"}
    (conn,) = report["connectors"]
    assert {k: conn["settings"][k] for k in RECOMMENDED} == RECOMMENDED


@pytest.mark.services
def test_exact_table_is_clean_and_exits_0(
    debezium: Callable[..., Connector], source_engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("clean")
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"create table public.{name} (id int primary key, t text, n numeric(12,2), "
                "ts timestamptz, j jsonb, b bytea, d date, iv interval)"
            )
        )
    try:
        connector = debezium([f"public.{name}"], extra=LOSSLESS)
        rc, report = _doctor(connector.name)
        assert report["connectors"][0]["tables"] == 1
        assert report["connectors"][0]["findings"] == []
        assert rc == 0
    finally:
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"drop table if exists public.{name}"))


@pytest.mark.services
def test_unknown_connector_is_a_failed_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cdc_reconciler", "doctor", "--connector", "no-such-connector"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        "FAILED: no Debezium PostgreSQL connector named no-such-connector"
    )


@pytest.mark.parametrize(
    ("config", "table", "want"),
    [
        ({}, "s.t", True),
        ({"table.include.list": "s\\.t,x\\.y"}, "s.t", True),
        ({"table.include.list": "s\\.t"}, "s.tt", False),
        ({"schema.include.list": "s"}, "s.t", True),
        ({"schema.exclude.list": "s"}, "s.t", False),
        ({"table.exclude.list": "s\\..*"}, "s.t", False),
    ],
)
def test_include_and_exclude_lists_match_whole_names(
    config: dict[str, str], table: str, want: bool
) -> None:
    assert captured(config, table) is want


def test_rules_for_each_setting() -> None:
    def col(
        type_: str,
        base: str,
        typtype: str = "b",
        *,
        is_array: bool = False,
        dims: int = 0,
        typmod: int = -1,
        builtin: bool = True,
    ) -> DatabaseColumn:
        return DatabaseColumn(
            table="s.t",
            name="c",
            type=type_,
            base=base,
            typtype=typtype,
            is_array=is_array,
            dims=dims,
            typmod=typmod,
            builtin=builtin,
        )

    ok = dict(RECOMMENDED)
    assert column_findings(col("numeric", "numeric"), ok) == []
    assert column_findings(col("money", "money"), {**ok, "decimal.handling.mode": "double"})
    ms = {**ok, "time.precision.mode": "connect"}
    assert column_findings(col("time(6)", "time", typmod=6), ms)[0].fix == (
        "time.precision.mode=adaptive_time_microseconds"
    )
    assert column_findings(col("time(3)", "time", typmod=3), ms) == []
    assert column_findings(col("s.mood[]", "mood", "e", is_array=True, dims=1), ok)[0].fix is None
    assert column_findings(col("numeric[]", "numeric", is_array=True, dims=1), ok)[0].fix is None
    assert column_findings(col("bit varying(8)", "varbit"), ok)[0].fix is None
    assert column_findings(col("bytea", "bytea"), {**ok, "binary.handling.mode": "base64"})
    assert column_findings(
        col("s.pair", "pair", "c", builtin=False), {**ok, "include.unknown.datatypes": "false"}
    )
    assert column_findings(col("public.hstore", "hstore", builtin=False), ok) == []
    assert column_findings(col("public.citext", "citext", builtin=False), ok) == []


def test_truncates_dropped_by_the_connector_are_a_finding() -> None:
    assert [f.fix for f in connector_findings(dict(DEFAULTS))] == ["skipped.operations=none"]
    assert connector_findings({**DEFAULTS, "skipped.operations": "none"}) == []
    assert connector_findings({**DEFAULTS, "skipped.operations": "u, t"})
    assert connector_findings({**DEFAULTS, "skipped.operations": "u"}) == []
