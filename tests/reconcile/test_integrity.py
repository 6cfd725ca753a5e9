"""Referential integrity and schema drift against real PostgreSQL: an orphan child row (its
parent deleted in the target only) and a column dropped from the target are reported in the
run's result, ``--json`` and ``cdcr status``, enter the review queue (orphans), and fail the
window — keeping the watermark — only when the table's mapping asks for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from .helpers import CDC_DDL, cli, run


@pytest.fixture()
def family(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    unique_name: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[dict[str, str]]:
    parent, child = f"public.{unique_name('par')}", f"public.{unique_name('chi')}"
    group, prefix = unique_name("g"), unique_name("p")
    run(source_engine, f"CREATE TABLE {parent} (id int PRIMARY KEY, name text)")
    run(
        source_engine,
        f"CREATE TABLE {child} (id int PRIMARY KEY, parent_id int "
        f"REFERENCES {parent} (id), note text, qty int)",
    )
    run(target_engine, f"CREATE TABLE {parent} (id int PRIMARY KEY, name text{CDC_DDL})")
    run(
        target_engine,
        f"CREATE TABLE {child} (id int PRIMARY KEY, parent_id int, note text, qty int{CDC_DDL})",
    )
    for e in (source_engine, target_engine):
        run(e, f"INSERT INTO {parent} (id, name) SELECT g, 'p' || g FROM generate_series(1, 20) g")
        run(
            e,
            f"INSERT INTO {child} (id, parent_id, note, qty) SELECT g, 1 + g % 20, 'c' || g, g "
            "FROM generate_series(1, 200) g",
        )
    with target_engine.begin() as c:
        for t in (parent, child):
            c.execute(
                sa.text(
                    "INSERT INTO cdcr.applied_offsets (consumer_group, topic, partition, next_offset, "
                    "last_event_time) VALUES (:g, :t, 0, 10, :l)"
                ),
                {"g": group, "t": f"{prefix}.{t}", "l": datetime.now(UTC) + timedelta(hours=1)},
            )
    monkeypatch.setenv("CDCR_KAFKA__GROUP_ID", group)
    monkeypatch.setenv("CDCR_RECONCILE__CONFIRM_WAIT_S", "5")
    config = tmp_path / "cdcr.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tables": {
                    child: {
                        "checks": [
                            {"name": "fk", "kind": "foreign_keys"},
                            {"name": "drift", "kind": "schema_drift"},
                        ]
                    }
                }
            }
        )
    )
    yield {"parent": parent, "child": child, "group": group, "config": str(config)}
    for e in (source_engine, target_engine):
        run(e, f"DROP TABLE IF EXISTS {child}, {parent}")
    with target_engine.begin() as c:
        for t in (parent, child):
            for stmt in (
                "DELETE FROM cdcr.discrepancies WHERE table_name = :t",
                "DELETE FROM cdcr.reconcile_runs WHERE table_name = :t",
                "DELETE FROM cdcr.watermarks WHERE table_name = :t",
                "DELETE FROM cdcr.deferred_keys WHERE table_name = :t",
            ):
                c.execute(sa.text(stmt), {"t": t})
        c.execute(
            sa.text("DELETE FROM cdcr.applied_offsets WHERE consumer_group = :g"), {"g": group}
        )


def checks_of(data: dict[str, Any], table: str, name: str) -> list[dict[str, Any]]:
    return [
        c
        for t in data["tables"]
        if t["table"] == table
        for w in t["windows"]
        for c in w["checks"]
        if c["check"] == name
    ]


def test_orphan_and_dropped_column_are_reported(
    family: dict[str, str], target_engine: sa.Engine
) -> None:
    parent, child = family["parent"], family["child"]
    # Parent 7 is gone from the target only: its children (6, 26, ..., 186) are orphans.
    run(target_engine, f"DELETE FROM {parent} WHERE id = 7")
    run(target_engine, f"ALTER TABLE {child} DROP COLUMN qty")
    orphans = {(k,) for k in range(6, 201, 20)}

    # The human output names both too, not only --json (found by a new-user trial).
    code, out = cli("reconcile", "--once", "--dry-run", "--table", child)
    assert "schema drift: column qty missing" in out, out
    assert f"{len(orphans)} orphan row(s)" in out, out

    # Configured to fail: the window fails its checks and the watermark stays where it was
    # (nothing reconciled).
    code, out = cli("reconcile", "--once", "--json", "--table", child, "--config", family["config"])
    assert code == 1, out
    data = json.loads(out)
    [w] = data["tables"][0]["windows"]
    assert w["status"] == "check_failed"
    assert {
        c["check"]: c["result"]
        for c in w["checks"]
        if c["check"] in ("foreign_keys", "schema_drift")
    } == {"foreign_keys": "fail", "schema_drift": "fail"}
    assert data["tables"][0]["reconciled_through"] is None

    # Zero configuration: reported as warnings, the watermark moves.
    code, out = cli("reconcile", "--once", "--json")
    assert code == 0, out
    data = json.loads(out)
    [drift_table] = [t for t in data["tables"] if t["table"] == child]
    assert drift_table["schema_drift"] == [
        {"column": "qty", "problem": "missing", "source": "integer", "target": None}
    ]
    [fk] = checks_of(data, child, "foreign_keys")
    assert fk["result"] == "warn" and fk["orphan_count"] == len(orphans)
    assert {tuple(o["key"]) for o in fk["orphans"]} == orphans
    assert {o["parent"] for o in fk["orphans"]} == {parent}
    [dr] = checks_of(data, child, "schema_drift")
    assert dr["result"] == "warn"
    # The parent's own missing row is a plain difference, repaired from the source.
    assert {
        (d["kind"], d["key"][0])
        for t in data["tables"]
        if t["table"] == parent
        for w in t["windows"]
        for d in w["differences"]
    } == {("missing", 7)}
    assert all(t["reconciled_through"] is not None for t in data["tables"])

    code, out = cli("review", "list", "--json", "--table", child, "--kind", "orphan")
    assert code == 0, out
    assert {tuple(json.loads(i["key"])) for i in json.loads(out)["items"]} == orphans

    code, out = cli("status", "--json")
    assert code == 0, out
    integ = {x["table"]: x for x in json.loads(out)["integrity"]}
    assert integ[child]["schema_drift"][0]["column"] == "qty"
    assert integ[child]["orphans"] == len(orphans)

    # Status at 80 columns names the drift and the orphans in one line per table.
    code, out = cli("status")
    assert code == 0, out
    line = next(x for x in out.splitlines() if "qty" in x)
    assert "drift" in line


def test_status_reads_well_at_80_columns(
    family: dict[str, str], target_engine: sa.Engine, services: Any
) -> None:
    import os
    import subprocess
    import sys

    child = family["child"]
    run(target_engine, f"DELETE FROM {family['parent']} WHERE id = 7")
    run(target_engine, f"ALTER TABLE {child} DROP COLUMN qty")
    code, out = cli("reconcile", "--once", "--table", child)
    assert code == 0, out
    env = {**os.environ, "COLUMNS": "80"}
    cdcr = [sys.executable, "-m", "cdc_reconciler"]
    out = subprocess.run(
        [*cdcr, "status"], env=env, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    lines = out.splitlines()
    # Names stand alone on their line; every other line fits in 80 columns.
    assert all(len(x) <= 80 for x in lines if x.strip() and " " in x.strip()), out
    i = lines.index(child)
    assert (
        lines[i + 1].startswith("  verified through 20") and "10 open (10 orphan)" in lines[i + 1]
    )
    assert lines[i + 2] == "  drift: qty (missing); 10 orphan rows"
    assert family["group"] in lines
    wide = subprocess.run(
        [*cdcr, "status", "--wide"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "applied offsets" in wide and "watermarks" in wide
    data = json.loads(
        subprocess.run(
            [*cdcr, "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
    )
    assert {"watermarks", "gaps", "applied_offsets", "recent_runs", "open_discrepancies"} <= set(
        data
    )  # the JSON keeps its meaning, with added fields
    assert {"review", "integrity"} <= set(data)
