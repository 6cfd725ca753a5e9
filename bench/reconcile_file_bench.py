"""``cdcr reconcile-file`` against a plain pandas approach (read_csv + read_sql + merge).

A 1,000,000-row table in the target database and a 1,000,000-row CSV of it with planted
differences: 100 rows only in the file, 100 only in the table, 100 with one column changed. Each
approach runs in its own child process (wall time including interpreter start, peak RSS from
wait4), ``--repeat`` rounds that alternate the approaches; the median and the spread (min–max)
are printed, with whether it found exactly the planted keys.

    eval "$(scripts/stack env)"; .venv/bin/python -m bench.reconcile_file_bench [--rows N]

pandas is not a dependency of the product: ``pip install pandas`` into the venv to run the peer.
The table and the CSV are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
PLANTED = 100

PANDAS_PEER = r"""
import json, sys
import pandas as pd
import sqlalchemy as sa
path, url, table = sys.argv[1:4]
f = pd.read_csv(path, dtype={"name": str})
f["at"] = pd.to_datetime(f["at"], utc=True, format="ISO8601")
t = pd.read_sql(f"SELECT id, name, amount, ok, at, qty FROM {table}", sa.create_engine(url))
t["amount"] = t["amount"].astype(float)
t["at"] = pd.to_datetime(t["at"], utc=True)
m = f.merge(t, on="id", how="outer", suffixes=("_f", "_t"), indicator=True)
only_f = m.loc[m["_merge"] == "left_only", "id"].astype(int).tolist()
only_t = m.loc[m["_merge"] == "right_only", "id"].astype(int).tolist()
both = m[m["_merge"] == "both"]
diff = None
for c in ("name", "amount", "ok", "at", "qty"):
    d = both[c + "_f"] != both[c + "_t"]
    diff = d if diff is None else (diff | d)
mism = both.loc[diff, "id"].astype(int).tolist()
print(json.dumps({"missing_in_table": only_f, "missing_in_file": only_t, "mismatched": mism}))
"""


def child(cmd: list[str]) -> tuple[float, int, str]:
    """Run ``cmd``; wall seconds, peak RSS in MiB (wait4), stdout."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=os.environ)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode() if p.stderr else ""
        out.seek(0)
        text = out.read().decode()
    if p.returncode not in (0, 1):
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss // 1024, text


def setup(engine: sa.Engine, table: str, rows: int, csv_path: Path) -> dict[str, set[int]]:
    rnd = random.Random(15)
    picks = rnd.sample(range(1, rows + 1), 2 * PLANTED)
    table_only, changed = set(picks[:PLANTED]), set(picks[PLANTED:])
    file_only = set(range(rows + 1, rows + 1 + PLANTED))
    with engine.begin() as c:
        c.execute(
            sa.text(
                f"CREATE TABLE {table} (id bigint PRIMARY KEY, name text, amount numeric(12,2), "
                "ok boolean, at timestamptz, qty int, _cdc_pos numeric(40,0) NOT NULL DEFAULT 1, "
                "_cdc_ts timestamptz NOT NULL DEFAULT now())"
            )
        )
        c.execute(
            sa.text(
                f"INSERT INTO {table} (id, name, amount, ok, at, qty) SELECT g, 'name ' || g, "
                "(g % 100000) / 100.0, g % 3 = 0, timestamptz '2026-01-01 00:00Z' + g * "
                "interval '1 second', g % 1000 FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
        c.execute(sa.text(f"ANALYZE {table}"))
    raw: Any = engine.raw_connection()
    try:
        with raw.cursor() as cur, open(csv_path, "w", encoding="utf-8") as fh:
            # The file spells values its own way: amounts with 4 decimals, booleans true/false,
            # times in ISO-8601 with Z.
            cur.copy_expert(
                "COPY (SELECT id, CASE WHEN id = ANY(%s) THEN name || ' changed' ELSE name END "
                "AS name, to_char(amount, 'FM9999999990.0000') AS amount, "
                "CASE WHEN ok THEN 'true' ELSE 'false' END AS ok, "
                "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS at, qty "
                f"FROM {table} WHERE NOT (id = ANY(%s)) ORDER BY id) TO STDOUT WITH CSV HEADER".replace(
                    "%s", "'{" + ",".join(map(str, sorted(changed))) + "}'::bigint[]", 1
                ).replace("%s", "'{" + ",".join(map(str, sorted(table_only))) + "}'::bigint[]", 1),
                fh,
            )
            for k in sorted(file_only):
                fh.write(f"{k},new {k},1.0000,true,2026-06-01T00:00:00Z,1\n")
    finally:
        raw.close()
    return {"missing_in_table": file_only, "missing_in_file": table_only, "mismatched": changed}


# One run: wall seconds, peak RSS (MiB), the keys found per kind.
Measured = tuple[float, int, dict[str, set[int]]]


def run_cdcr(csv_path: Path, table: str) -> Measured:
    cdcr = str(Path(sys.executable).parent / "cdcr")
    wall, rss, out = child(
        [
            cdcr,
            "reconcile-file",
            str(csv_path),
            "--table",
            table,
            "--key",
            "id",
            "--dry-run",
            "--json",
            "--limit",
            "100000",
        ]
    )
    data = json.loads(out)
    found: dict[str, set[int]] = {
        k: set() for k in ("missing_in_table", "missing_in_file", "mismatched")
    }
    for d in data["differences"]:
        found.setdefault(d["kind"], set()).add(int(d["key"]["id"]))
    return wall, rss, found


def run_pandas(csv_path: Path, table: str, url: str) -> Measured:
    wall, rss, out = child([sys.executable, "-c", PANDAS_PEER, str(csv_path), url, table])
    data = json.loads(out)
    return wall, rss, {k: set(v) for k, v in data.items()}


def summary(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-pandas", action="store_true")
    args = ap.parse_args()
    url = os.environ.get("CDCR_TARGET__URL")
    if not url:
        raise SystemExit('CDCR_TARGET__URL is not set: eval "$(scripts/stack env)"')
    engine = sa.create_engine(url)
    table = f"public.bench_rf_{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="cdcr-rf-bench-"))
    csv_path = work / "data.csv"
    try:
        t0 = time.perf_counter()
        planted = setup(engine, table, args.rows, csv_path)
        print(
            f"setup {time.perf_counter() - t0:.1f}s: {args.rows} rows, "
            f"{csv_path.stat().st_size / 1e6:.0f} MB CSV",
            file=sys.stderr,
        )
        results: dict[str, dict[str, Any]] = {}
        runners: list[tuple[str, Callable[[], Measured]]] = [
            ("cdcr reconcile-file", lambda: run_cdcr(csv_path, table))
        ]
        if not args.no_pandas:
            runners.append(
                ("pandas read_csv + read_sql + merge", lambda: run_pandas(csv_path, table, url))
            )
        for name, _ in runners:
            results[name] = {"wall_s": [], "peak_rss_mib": [], "exact": []}
        # Rounds alternate the approaches, so load from other users of the machine falls on
        # both alike.
        for i in range(args.repeat):
            for name, fn in runners:
                wall, rss, found = fn()
                ok = all(found.get(k, set()) == v for k, v in planted.items())
                results[name]["wall_s"].append(wall)
                results[name]["peak_rss_mib"].append(float(rss))
                results[name]["exact"].append(ok)
                print(
                    f"{name} #{i + 1}: {wall:.2f}s, peak RSS {rss} MiB, exact={ok}, "
                    f"load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                )
        print(
            json.dumps({"rows": args.rows, "planted_each": PLANTED, "results": results}, indent=2)
        )
        print("\n| approach | exact | time s, median (min–max) | peak RSS MiB, median (min–max) |")
        print("|---|---|---|---|")
        for name, r in results.items():
            print(
                f"| {name} | {'yes' if all(r['exact']) else 'NO'} | {summary(r['wall_s'])} | "
                f"{summary(r['peak_rss_mib'])} |"
            )
    finally:
        with engine.begin() as c:
            c.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
        engine.dispose()


if __name__ == "__main__":
    main()
