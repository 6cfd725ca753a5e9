"""``cdcr reconcile-file`` against real PostgreSQL: files made in tmp dirs, each test its own
table (with the engine's ``_cdc_*`` columns), audit rows and tombstones removed afterwards."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from cdc_reconciler.config import Settings
from cdc_reconciler.reconcile.file_command import FileRequest, reconcile_file
from cdc_reconciler.reconcile.file_diff import FileDiffOptions

from .helpers import CDC_DDL, cli, run

pytestmark = pytest.mark.services

COLS = "id int PRIMARY KEY, name text, amount numeric(12,2), ok boolean, at timestamptz"
POS = 7 << 64  # what "the apply engine" wrote


@pytest.fixture()
def make_table(
    target_engine: sa.Engine,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    services: Any,
) -> Iterator[Callable[..., str]]:
    monkeypatch.setenv("CDCR_TARGET__URL", services.target_url)
    made: list[str] = []

    def make(cols: str = COLS, fill: str | None = None) -> str:
        name = f"public.{unique_name('f')}"
        run(target_engine, f"CREATE TABLE {name} ({cols}{CDC_DDL})")
        made.append(name)
        if fill:
            run(target_engine, fill.format(t=name))
            run(target_engine, f"UPDATE {name} SET _cdc_pos = {POS}")
        return name

    yield make
    with target_engine.begin() as c:
        for name in made:
            c.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
            for stmt in (
                "DELETE FROM cdcr.reconcile_runs WHERE table_name = :t",
                "DELETE FROM cdcr.tombstones WHERE table_name = :t",
            ):
                c.execute(sa.text(stmt), {"t": name})


STD_FILL = (
    "INSERT INTO {t} (id, name, amount, ok, at) SELECT g, 'n' || g, g * 1.25, g % 2 = 0, "
    "timestamptz '2026-01-01 00:00Z' + g * interval '1 minute' FROM generate_series(1, 300) g"
)


def std_rows() -> dict[int, dict[str, Any]]:
    """The table's rows as a file would spell them (different but equal spellings)."""
    rows = {}
    for g in range(1, 301):
        minutes = g
        rows[g] = {
            "id": str(g),
            "name": f"n{g}",
            "amount": f"{g * 1.25:.4f}",  # 1.2500 == 1.25
            "ok": "true" if g % 2 == 0 else "0",
            "at": f"2026-01-01T{minutes // 60:02d}:{minutes % 60:02d}:00Z",
        }
    return rows


def plant(rows: dict[int, dict[str, Any]]) -> None:
    """File-only 1001..1003; table-only 10, 20, 30; mismatched 40 (name), 50 (amount, ok),
    60 (at: one second later)."""
    for k in (10, 20, 30):
        del rows[k]
    for k in (1001, 1002, 1003):
        rows[k] = {
            "id": str(k),
            "name": f"new{k}",
            "amount": "1",
            "ok": "t",
            "at": "2026-02-01 00:00:00",
        }
    rows[40]["name"] = "changed"
    rows[50]["amount"] = "62.51"
    rows[50]["ok"] = "no"
    rows[60]["at"] = "2026-01-01T01:00:01Z"


EXPECTED = {
    "missing_in_table": [["1001"], ["1002"], ["1003"]],
    "missing_in_file": [["10"], ["20"], ["30"]],
    "mismatched": [(["40"], ["name"]), (["50"], ["amount", "ok"]), (["60"], ["at"])],
    "duplicate_in_file": [],
    "duplicate_in_table": [],
}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Typed Parquet (int, decimal, boolean, timestamptz) from the text rows."""
    src = write_csv(path.with_suffix(".src.csv"), rows)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"COPY (SELECT CAST(id AS INTEGER) AS id, name, CAST(amount AS DECIMAL(12, 4)) AS amount, "
        f"CASE WHEN lower(ok) IN ('t', 'true', '1', 'yes') THEN true ELSE false END AS ok, "
        f'CAST("at" AS TIMESTAMPTZ) AS "at" FROM read_csv(\'{src}\', all_varchar = true)) '
        f"TO '{path}' (FORMAT parquet)"
    )
    con.close()
    src.unlink()
    return path


def run_json(*args: str) -> tuple[int, dict[str, Any]]:
    code, out = cli("reconcile-file", *args, "--json")
    start = out.index("{")
    return code, json.loads(out[start : out.rindex("}") + 1])


def kinds(data: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {k: [] for k in EXPECTED}
    for d in data["differences"]:
        key = list(d["key"].values())
        out[d["kind"]].append((key, d["columns"]) if d["kind"] == "mismatched" else key)
    return out


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_file_formats_find_exactly_the_planted_keys_both_ways(
    make_table: Callable[..., str], tmp_path: Path, fmt: str
) -> None:
    table = make_table(fill=STD_FILL)
    rows = std_rows()
    plant(rows)
    writer = {"csv": write_csv, "parquet": write_parquet, "jsonl": write_jsonl}[fmt]
    if fmt == "jsonl":  # JSON carries numbers and booleans typed
        typed = [
            {
                **r,
                "id": int(r["id"]),
                "amount": float(r["amount"]),
                "ok": r["ok"] in ("true", "t", "1"),
            }
            for r in rows.values()
        ]
        typed[0]["extra_field"] = "ignored"
        path = writer(tmp_path / f"data.{fmt}", typed)
    else:
        path = writer(tmp_path / f"data.{fmt}", list(rows.values()))
    code, data = run_json(str(path), "--table", table, "--key", "id", "--dry-run")
    assert code == 1, data
    assert kinds(data) == EXPECTED
    assert data["counts"] == {
        "missing_in_table": 3,
        "missing_in_file": 3,
        "mismatched": 3,
        "duplicate_in_file": 0,
        "duplicate_in_table": 0,
    }
    assert data["file"]["rows"] == 300 and data["table"]["rows"] == 300
    assert data["file"]["format"] == fmt
    m50 = next(d for d in data["differences"] if d["key"] == {"id": "50"})
    assert m50["file_row"]["amount"] == "62.51" and m50["table_row"]["amount"] == "62.5"
    assert m50["file_row"]["ok"] == "f" and m50["table_row"]["ok"] == "t"


def test_bisection_over_several_levels_finds_the_same_keys(
    make_table: Callable[..., str], tmp_path: Path, services: Any
) -> None:
    table = make_table(fill=STD_FILL)
    rows = std_rows()
    plant(rows)
    path = write_csv(tmp_path / "d.csv", list(rows.values()))
    settings = Settings(target={"url": services.target_url})  # type: ignore[arg-type]
    report = reconcile_file(
        settings,
        FileRequest(path, table, ("id",), dry_run=True),
        options=FileDiffOptions(threshold=4, max_bits=2),
    )
    data = report.as_json()
    assert kinds(data) == EXPECTED
    assert report.result.stats.levels >= 3  # 2 bits per level down to ≤ 4 rows per range
    assert report.result.stats.rows_downloaded < 150  # only the differing ranges' rows


def test_in_sync_file_exits_0_and_writes_one_audit_row(
    make_table: Callable[..., str], tmp_path: Path, target_engine: sa.Engine
) -> None:
    table = make_table(fill=STD_FILL)
    path = write_csv(tmp_path / "same.csv", list(std_rows().values()))
    code, data = run_json(str(path), "--table", table, "--key", "id")
    assert code == 0, data
    assert data["status"] == "clean" and data["differences"] == []
    with target_engine.connect() as c:
        runs = c.execute(
            sa.text(
                "SELECT status, counts, dry_run, window_start, finished FROM "
                "cdcr.reconcile_runs WHERE table_name = :t"
            ),
            {"t": table},
        ).all()
    assert len(runs) == 1
    status, counts, dry, wstart, finished = runs[0]
    assert status == "file_clean" and not dry and wstart is None and finished is not None
    assert counts["kind"] == "file" and counts["file_rows"] == 300
    assert counts["missing_in_table"] == 0


def test_normalisation_equal_spellings_agree_and_real_changes_do_not(
    make_table: Callable[..., str], tmp_path: Path
) -> None:
    table = make_table(
        "id bigint PRIMARY KEY, n numeric(12,4), i int, f float8, r real, b boolean, "
        "tz timestamptz, ts timestamp, d date, t text, u uuid",
        "INSERT INTO {t} VALUES "
        "(1, 1.5, 7, 0.1, 0.1, true, '2026-01-01 10:00:00Z', '2026-01-01 10:00:00', "
        "'2026-03-04', 'x', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'), "
        "(2, -0, 0, 1e20, 2.5, false, '2026-01-01 10:00:00.5Z', '2026-01-01 10:00:00', "
        "'2026-03-04', NULL, NULL), "
        "(3, 100, -3, 100, 1, NULL, NULL, NULL, NULL, '', NULL), "
        "(4, 2.25, 1, 0.30000000000000004, 0, true, '2026-06-01 00:00Z', "
        "'2026-06-01 00:00', '2026-06-01', 'same', NULL)",
    )
    same = [
        # numeric scale/sign/exponent, int "+7", float text, bool spellings, zones → UTC,
        # a naive time read as UTC, upper-case uuid
        {
            "id": "1",
            "n": "1.50000",
            "i": "+7",
            "f": "0.1",
            "r": "0.1",
            "b": "TRUE",
            "tz": "2026-01-01T12:00:00+02:00",
            "ts": "2026-01-01T11:00:00+01:00",
            "d": "2026-03-04",
            "t": "x",
            "u": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        },
        {
            "id": "2",
            "n": "-0.0",
            "i": "0",
            "f": "1e+20",
            "r": "2.5",
            "b": "no",
            "tz": "2026-01-01 10:00:00.500",
            "ts": "2026-01-01 10:00:00",
            "d": " 2026-03-04 ",
            "t": "",
            "u": "",
        },
        # empty strings = NULL on both sides ('' in a text column too)
        {
            "id": "3",
            "n": "1e2",
            "i": "-3",
            "f": "100.0",
            "r": "1",
            "b": "",
            "tz": "",
            "ts": "",
            "d": "",
            "t": "",
            "u": "",
        },
        # id 4: real differences in n, b, tz (one second); f equal at 15 digits
        {
            "id": "4",
            "n": "2.2501",
            "i": "1",
            "f": "0.3",
            "r": "0",
            "b": "0",
            "tz": "2026-06-01T00:00:01Z",
            "ts": "2026-06-01 00:00:00",
            "d": "2026-06-01",
            "t": "same",
            "u": "",
        },
    ]
    path = write_csv(tmp_path / "norm.csv", same)
    code, data = run_json(str(path), "--table", table, "--key", "id", "--dry-run")
    assert code == 1
    assert [(d["kind"], d["key"], d.get("columns")) for d in data["differences"]] == [
        ("mismatched", {"id": "4"}, ["n", "b", "tz"])
    ]
    d4 = data["differences"][0]
    assert d4["file_row"]["tz"] == "2026-06-01T00:00:01.000000"
    assert d4["table_row"]["tz"] == "2026-06-01T00:00:00.000000"
    # a value that does not parse is a difference, shown as the file spelt it
    same[3] = {**same[3], "n": "2.25", "b": "t", "tz": "2026-06-01T00:00:00Z", "i": "one"}
    write_csv(path, same)
    code, data = run_json(str(path), "--table", table, "--key", "id", "--dry-run")
    assert code == 1
    [d] = data["differences"]
    assert d["columns"] == ["i"] and d["file_row"]["i"] == "!one"


def test_backfill_inserts_only_missing_rows_after_a_backup_and_never_updates(
    make_table: Callable[..., str], tmp_path: Path, target_engine: sa.Engine
) -> None:
    table = make_table(fill=STD_FILL)
    rows = std_rows()
    plant(rows)
    # 1003 was deleted in the source: its tombstone must keep the file's row out.
    run(
        target_engine,
        "INSERT INTO cdcr.tombstones (table_name, key, position, deleted_at) "
        "VALUES (:t, '[1003]', :p, now())",
        t=table,
        p=POS,
    )
    # 150 and 151 lost from the table (inside the table's key range, so the backup of their
    # key range holds neighbours)
    run(target_engine, f"DELETE FROM {table} WHERE id IN (150, 151)")
    path = write_csv(tmp_path / "data.csv", list(rows.values()))
    with target_engine.connect() as c:
        before = {r[0]: tuple(r) for r in c.execute(sa.text(f"SELECT * FROM {table}"))}

    code, dry = run_json(str(path), "--table", table, "--key", "id", "--backfill-db", "--dry-run")
    assert code == 1 and dry["backfill"]["planned"] == 5 and dry["backfill"]["inserted"] == 0
    assert dry["backfill"]["backup"] is None
    with target_engine.connect() as c:
        assert c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 298
        assert (
            c.execute(
                sa.text("SELECT count(*) FROM cdcr.reconcile_runs WHERE table_name = :t"),
                {"t": table},
            ).scalar()
            == 0
        )

    code, data = run_json(str(path), "--table", table, "--key", "id", "--backfill-db")
    assert code == 1
    b = data["backfill"]
    assert b["inserted"] == 4 and b["position"] == "0"
    assert [s["key"] for s in b["skipped"]] == [["1003"]]
    assert "tombstone" in b["skipped"][0]["reason"]
    with target_engine.connect() as c:
        after = {r[0]: tuple(r) for r in c.execute(sa.text(f"SELECT * FROM {table}"))}
        new = c.execute(
            sa.text(
                f"SELECT id, name, amount, ok, at, _cdc_pos FROM {table} "
                "WHERE id > 1000 OR id IN (150, 151) ORDER BY id"
            )
        ).all()
        status = c.execute(
            sa.text("SELECT status FROM cdcr.reconcile_runs WHERE table_name = :t"), {"t": table}
        ).scalar()
    # only inserts: every row that was there is byte for byte unchanged (40, 50, 60 included)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {150, 151, 1001, 1002}
    assert [(r[0], r[1], str(r[2]), r[3], r[5]) for r in new] == [
        (150, "n150", "187.50", True, 0),
        (151, "n151", "188.75", False, 0),
        (1001, "new1001", "1.00", True, 0),
        (1002, "new1002", "1.00", True, 0),
    ]
    assert new[0][4].isoformat() == "2026-01-01T02:30:00+00:00"  # from 02:30:00Z
    assert new[2][4].isoformat() == "2026-02-01T00:00:00+00:00"  # naive file time read as UTC
    assert status == "file_backfilled"
    backup = Path(b["backup"])
    assert backup.exists() and backup.parent == tmp_path
    with open(backup, encoding="utf-8") as fh:
        backed = list(csv.DictReader(fh))
    assert backed, "the affected key ranges hold other rows; the backup keeps them"
    ids = {int(r["id"]) for r in backed}
    assert "_cdc_pos" in backed[0] and {149, 152} <= ids and not ids & {150, 151, 1001, 1002}
    keys_file = Path(b["inserted_keys_file"])
    assert keys_file.read_text().splitlines() == ["id", "150", "151", "1001", "1002"]

    # Run again: the backfilled rows now agree; mismatches stay reported, still not updated.
    code, again = run_json(str(path), "--table", table, "--key", "id", "--backfill-db")
    assert kinds(again)["missing_in_table"] == [["1003"]]
    assert again["backfill"]["inserted"] == 0
    assert [k for k, _ in kinds(again)["mismatched"]] == [["40"], ["50"], ["60"]]


def test_backfill_needs_the_engine_columns(
    make_table: Callable[..., str],
    tmp_path: Path,
    target_engine: sa.Engine,
    unique_name: Callable[[str], str],
) -> None:
    name = f"public.{unique_name('plain')}"
    run(target_engine, f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    try:
        path = write_csv(tmp_path / "p.csv", [{"id": "1", "v": "a"}])
        code, out = cli(
            "reconcile-file", str(path), "--table", name, "--key", "id", "--backfill-db"
        )
        assert code == 2 and "FAILED:" in out and "_cdc_pos" in out
        # reading alone works on any table
        code, data = run_json(str(path), "--table", name, "--key", "id", "--dry-run")
        assert code == 1 and kinds(data)["missing_in_table"] == [["1"]]
    finally:
        run(target_engine, f"DROP TABLE {name}")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_export_missing_writes_exactly_the_table_only_rows(
    make_table: Callable[..., str], tmp_path: Path, suffix: str
) -> None:
    table = make_table(fill=STD_FILL)
    rows = std_rows()
    plant(rows)
    path = write_csv(tmp_path / "data.csv", list(rows.values()))
    out = tmp_path / f"missing{suffix}"
    code, data = run_json(
        str(path), "--table", table, "--key", "id", "--export-missing", str(out), "--dry-run"
    )
    assert code == 1 and data["export"] == {"path": str(out), "rows": 3}
    if suffix == ".csv":
        with open(out, encoding="utf-8") as fh:
            got = list(csv.DictReader(fh))
        assert list(got[0]) == ["id", "name", "amount", "ok", "at"]
    elif suffix == ".jsonl":
        got = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        con = duckdb.connect()
        cur = con.execute(f"SELECT * FROM read_parquet('{out}')")
        names = [x[0] for x in cur.description]
        got = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        con.close()
    assert sorted(int(r["id"]) for r in got) == [10, 20, 30]
    r10 = next(r for r in got if int(r["id"]) == 10)
    assert r10["name"] == "n10" and Decimal(str(r10["amount"])) == Decimal("12.5")


def test_where_narrows_the_file_and_db_where_the_table(
    make_table: Callable[..., str], tmp_path: Path
) -> None:
    table = make_table(
        "id int PRIMARY KEY, region text, v int",
        "INSERT INTO {t} SELECT g, CASE WHEN g % 2 = 0 THEN 'EU' ELSE 'US' END, g "
        "FROM generate_series(1, 100) g",
    )
    rows = [
        {"id": str(g), "region": "EU" if g % 2 == 0 else "US", "v": str(g)} for g in range(1, 101)
    ]
    rows[1]["v"] = "999"  # id 2, EU
    rows[2]["v"] = "999"  # id 3, US
    path = write_csv(tmp_path / "r.csv", rows)
    code, data = run_json(
        str(path),
        "--table",
        table,
        "--key",
        "id",
        "--dry-run",
        "--where",
        "region = 'EU'",
        "--db-where",
        "region = 'EU'",
    )
    assert code == 1 and data["file"]["rows"] == 50 and data["table"]["rows"] == 50
    assert [(d["kind"], d["key"]) for d in data["differences"]] == [("mismatched", {"id": "2"})]
    # the file narrowed alone: the table's US rows are then missing from the file
    code, data = run_json(
        str(path),
        "--table",
        table,
        "--key",
        "id",
        "--dry-run",
        "--where",
        "region = 'EU' AND CAST(id AS INT) <= 10",
    )
    assert data["counts"]["missing_in_file"] == 95
    assert data["counts"]["mismatched"] == 1
    code, out = cli(
        "reconcile-file",
        str(path),
        "--table",
        table,
        "--key",
        "id",
        "--dry-run",
        "--where",
        "no_such_col = 1",
    )
    assert code == 2 and "FAILED:" in out and "--where" in out


def test_composite_keys_and_mapped_columns(make_table: Callable[..., str], tmp_path: Path) -> None:
    table = make_table(
        "tenant text, id int, amount numeric, PRIMARY KEY (tenant, id)",
        "INSERT INTO {t} SELECT t, g, g * 0.5 FROM generate_series(1, 50) g, "
        "unnest(ARRAY['acme', 'Beta', 'beta']) t",
    )
    rows = [
        {"Tenant": t, "ident": str(g), "amt": str(g * 0.5), "note": "x"}
        for t in ("acme", "Beta", "beta")
        for g in range(1, 51)
    ]
    rows = [r for r in rows if not (r["Tenant"] == "beta" and r["ident"] == "7")]
    rows.append({"Tenant": "gamma", "ident": "7", "amt": "1", "note": ""})
    next(r for r in rows if r["Tenant"] == "Beta" and r["ident"] == "7")["amt"] = "0"
    path = write_csv(tmp_path / "c.csv", rows)
    code, data = run_json(
        str(path),
        "--table",
        table,
        "--key",
        "tenant,id",
        "--map",
        "ident=id",
        "--map",
        "amt=amount",
        "--dry-run",
    )
    assert code == 1, data
    assert data["columns"]["map"] == {"tenant": "Tenant", "id": "ident", "amount": "amt"}
    assert data["columns"]["ignored_file_columns"] == ["note"]
    assert [(d["kind"], d["key"], d.get("columns")) for d in data["differences"]] == [
        ("missing_in_table", {"tenant": "gamma", "id": "7"}, None),
        ("missing_in_file", {"tenant": "beta", "id": "7"}, None),
        ("mismatched", {"tenant": "Beta", "id": "7"}, ["amount"]),
    ]


def test_duplicate_and_unusable_keys_in_the_file_are_reported(
    make_table: Callable[..., str], tmp_path: Path
) -> None:
    table = make_table(fill=STD_FILL)
    rows = list(std_rows().values())
    rows.append(dict(rows[4]))  # id 5 twice
    rows.append({**rows[0], "id": "abc"})
    rows.append({**rows[0], "id": ""})
    path = write_csv(tmp_path / "dup.csv", rows)
    code, data = run_json(str(path), "--table", table, "--key", "id", "--dry-run")
    assert code == 1
    assert [(d["kind"], d["key"], d.get("occurrences")) for d in data["differences"]] == [
        ("duplicate_in_file", {"id": "5"}, 2)
    ]
    assert data["file"]["bad_key_rows"] == 2
    assert [e["id"] for e in data["file"]["bad_key_examples"]] == ["abc", None]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--key", "nope"], "--key 'nope'"),
        (["--key", "id", "--map", "zz=id"], "the file has no column 'zz'"),
        (["--key", "id", "--map", "name=zz"], "has no column 'zz'"),
        (["--key", "id", "--map", "name"], "FILE_COLUMN=TABLE_COLUMN"),
        (["--key", "id", "--format", "xml"], "--format must be one of"),
    ],
)
def test_bad_options_fail_with_exit_2(
    make_table: Callable[..., str], tmp_path: Path, args: list[str], needle: str
) -> None:
    table = make_table(fill=STD_FILL)
    path = write_csv(tmp_path / "x.csv", list(std_rows().values()))
    code, out = cli("reconcile-file", str(path), "--table", table, *args, "--dry-run")
    assert code == 2 and "FAILED:" in out and needle in out, out
    assert "Traceback" not in out


def test_a_file_without_the_key_column_fails(
    make_table: Callable[..., str], tmp_path: Path
) -> None:
    table = make_table(fill=STD_FILL)
    rows = [{k: v for k, v in r.items() if k != "id"} for r in std_rows().values()]
    path = write_csv(tmp_path / "nokey.csv", rows)
    code, out = cli("reconcile-file", str(path), "--table", table, "--key", "id")
    assert code == 2
    assert "FAILED: key column 'id' is not in the file" in out


def test_missing_file_and_missing_table_fail(
    make_table: Callable[..., str], tmp_path: Path
) -> None:
    table = make_table(fill=STD_FILL)
    code, out = cli("reconcile-file", str(tmp_path / "none.csv"), "--table", table, "--key", "id")
    assert code == 2 and "FAILED: file not found" in out
    path = write_csv(tmp_path / "x.csv", [{"id": "1"}])
    code, out = cli("reconcile-file", str(path), "--table", "public.no_such_tbl_g", "--key", "id")
    assert code == 2 and "FAILED: table public.no_such_tbl_g not found" in out
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    code, out = cli("reconcile-file", str(bad), "--table", table, "--key", "id")
    assert code == 2 and "FAILED: cannot read" in out
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, out = cli("reconcile-file", str(empty), "--table", table, "--key", "id")
    assert code == 2 and "is empty" in out


def test_human_output_names_keys_and_columns(
    make_table: Callable[..., str], tmp_path: Path
) -> None:
    table = make_table(fill=STD_FILL)
    rows = std_rows()
    plant(rows)
    path = write_csv(tmp_path / "h.csv", list(rows.values()))
    code, out = cli("reconcile-file", str(path), "--table", table, "--key", "id", "--dry-run")
    assert code == 1
    assert "missing_in_table id=1001" in out and "missing_in_file id=10" in out
    assert "mismatched id=50 amount: file '62.51' table '62.5'; ok: file 'f' table 't'" in out


def test_backfill_with_a_composite_text_key_and_missing_columns(
    make_table: Callable[..., str], tmp_path: Path, target_engine: sa.Engine
) -> None:
    table = make_table(
        "tenant text, day date, n int NOT NULL DEFAULT 42, note text, PRIMARY KEY (tenant, day)",
        "INSERT INTO {t} (tenant, day, n, note) SELECT t, date '2026-01-01' + g, g, 'x' "
        "FROM generate_series(0, 59) g, unnest(ARRAY['acme', 'beta']) t",
    )
    run(target_engine, f"DELETE FROM {table} WHERE tenant = 'beta' AND day = '2026-01-05'")
    rows = [
        {"tenant": t, "day": f"2026-01-{d:02d}", "note": "x"}
        for t in ("acme", "beta")
        for d in range(1, 31)
    ]
    path = write_csv(tmp_path / "k.csv", rows)
    code, data = run_json(
        str(path),
        "--table",
        table,
        "--key",
        "tenant,day",
        "--backfill-db",
        "--db-where",
        "day < '2026-01-31'",
    )
    assert code == 1, data
    assert data["columns"]["not_compared_table_columns"] == ["n"]
    assert kinds(data)["missing_in_table"] == [["beta", "2026-01-05"]]
    assert data["counts"]["missing_in_file"] == 0 and data["counts"]["mismatched"] == 0
    assert data["backfill"]["inserted"] == 1
    with target_engine.connect() as c:
        row = c.execute(
            sa.text(
                f"SELECT n, note, _cdc_pos FROM {table} WHERE tenant = 'beta' AND day = '2026-01-05'"
            )
        ).one()
    assert tuple(row) == (42, "x", 0)  # n, not in the file, took the table's default
    backed = Path(data["backfill"]["backup"]).read_text().splitlines()
    assert backed[0].startswith("tenant,day,n,note,_cdc_pos")
    code, again = run_json(
        str(path),
        "--table",
        table,
        "--key",
        "tenant,day",
        "--dry-run",
        "--db-where",
        "day < '2026-01-31'",
    )
    assert code == 0 and again["status"] == "clean"


def test_a_database_error_fails_and_marks_the_audit_row_failed(
    make_table: Callable[..., str], tmp_path: Path, target_engine: sa.Engine
) -> None:
    table = make_table(fill=STD_FILL)
    path = write_csv(tmp_path / "x.csv", list(std_rows().values()))
    code, out = cli(
        "reconcile-file",
        str(path),
        "--table",
        table,
        "--key",
        "id",
        "--db-where",
        "no_such_column > 1",
    )
    assert code == 2 and "FAILED: database error" in out and "no_such_column" in out
    assert "Traceback" not in out
    with target_engine.connect() as c:
        status, counts = c.execute(
            sa.text("SELECT status, counts FROM cdcr.reconcile_runs WHERE table_name = :t"),
            {"t": table},
        ).one()
    assert status == "failed" and "no_such_column" in counts["error"]


def test_parquet_where_uses_the_files_types(make_table: Callable[..., str], tmp_path: Path) -> None:
    table = make_table(fill=STD_FILL)
    rows = std_rows()
    rows[7]["name"] = "changed"
    rows[250]["name"] = "changed"
    path = write_parquet(tmp_path / "w.parquet", list(rows.values()))
    code, data = run_json(
        str(path),
        "--table",
        table,
        "--key",
        "id",
        "--dry-run",
        "--where",
        "id <= 100 AND amount > 5",
        "--db-where",
        "id <= 100 AND amount > 5",
    )
    assert code == 1
    assert data["file"]["rows"] == 96 and data["table"]["rows"] == 96
    assert [(d["kind"], d["key"]) for d in data["differences"]] == [("mismatched", {"id": "7"})]


def test_a_key_that_is_not_unique_in_the_table_is_reported_not_guessed(
    make_table: Callable[..., str], tmp_path: Path
) -> None:
    table = make_table(
        "id int PRIMARY KEY, code text, v int",
        "INSERT INTO {t} SELECT g, 'c' || (g / 2), g FROM generate_series(1, 40) g",
    )
    # code is the file's key but not unique in the table: c1..c19 are on two ids each
    rows = [{"code": f"c{g}", "v": str(2 * g)} for g in range(0, 21)]
    path = write_csv(tmp_path / "codes.csv", rows)
    code, data = run_json(str(path), "--table", table, "--key", "code", "--dry-run")
    assert code == 1
    dups = [d for d in data["differences"] if d["kind"] == "duplicate_in_table"]
    assert (
        len(dups) == 19
        and {"key": {"code": "c1"}, "kind": "duplicate_in_table", "occurrences": 2} in dups
    )
    assert data["counts"]["mismatched"] == 1 and data["counts"]["missing_in_table"] == 0
    assert [d["key"] for d in data["differences"] if d["kind"] != "duplicate_in_table"] == [
        {"code": "c0"}
    ]  # c0 is on id 1 only: v 1 in the table, 0 in the file
