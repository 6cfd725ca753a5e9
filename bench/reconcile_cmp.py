"""Reconcile comparison: cdcr's verify (reconcile.diff.diff_table, what `cdcr reconcile` runs per
window) against reladiff, on one table pair of N rows: first in sync, then with 100 scattered
differences (34 missing in the target, 33 extra in the target, 33 changed). Each contender runs
as its own process (interpreter start included), one at a time, after both tables were vacuumed,
analysed and read once.

    python -m bench.reconcile_cmp verify SOURCE_URL TARGET_URL TABLE   # the cdcr side, as JSON
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import Endpoints, drop_database, log, recreate_database

TABLE = "bench_rc"
# Both sides live in databases of their own, created and dropped by the run (the names can be
# changed with BENCH_RC_DB so that two runs on one cluster do not collide).
DB = os.environ.get("BENCH_RC_DB", "bench_rc")
SRC_DB = DB + "_src"
DDL = """id bigint primary key, a int not null, b numeric(12,2), c text, d timestamptz,
    e jsonb, f boolean, g date, h varchar(32), i bigint"""
COLS = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
FILL = f"""insert into public.{TABLE} select g, (g * 17) % 100000, (g % 100000) / 100.0,
    'row ' || g || ' ' || md5(g::text), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
    jsonb_build_object('k', g % 1000, 'v', 'x' || (g % 77)), g % 2 = 0,
    date '2020-01-01' + (g % 2000)::int, 'h' || (g % 9999), g * 31
    from generate_series(%s::bigint, %s::bigint) g""".replace(" % ", " %% ")
REPEATS = 3  # per contender and case, interleaved; the median is reported with the spread


def build_pair(ep: Endpoints, rows: int) -> None:
    recreate_database(ep, SRC_DB)
    recreate_database(ep, DB)
    for db in (SRC_DB, DB):
        conn = ep.connect_pg(db)
        with conn.cursor() as cur:
            cur.execute(f"drop table if exists public.{TABLE}")
            cur.execute(f"create table public.{TABLE} ({DDL})")
            step = 1_000_000
            for lo in range(1, rows + 1, step):
                cur.execute(FILL, (lo, min(rows, lo + step - 1)))
            cur.execute(f"vacuum analyze public.{TABLE}")
            cur.execute(f"select count(*), sum(hashtext(t::text)) from public.{TABLE} t")
        conn.close()


def plant(ep: Endpoints, rows: int, seed: int = 20261122) -> dict[str, list[int]]:
    rnd = random.Random(seed)
    keys = rnd.sample(range(1, rows + 1), 100)
    planted = {
        "missing": sorted(keys[:34]),
        "extra": sorted(keys[34:67]),
        "mismatched": sorted(keys[67:]),
    }
    src = ep.connect_pg(SRC_DB)
    tgt = ep.connect_pg(DB)
    with src.cursor() as s, tgt.cursor() as t:
        t.execute(f"delete from public.{TABLE} where id = any(%s)", (planted["missing"],))
        s.execute(f"delete from public.{TABLE} where id = any(%s)", (planted["extra"],))
        t.execute(
            f"update public.{TABLE} set h = 'changed', b = b + 1 where id = any(%s)",
            (planted["mismatched"],),
        )
        for c in (s, t):
            c.execute(f"vacuum analyze public.{TABLE}")
    src.close()
    tgt.close()
    log(f"planted {sum(map(len, planted.values()))} differences in {DB}.{TABLE}")
    return planted


def verify_main(src_url: str, tgt_url: str, table: str) -> None:
    import sqlalchemy as sa

    from cdc_reconciler.reconcile.checksum import describe_pair
    from cdc_reconciler.reconcile.diff import diff_table

    source, target = sa.create_engine(src_url), sa.create_engine(tgt_url)
    with source.connect() as s, target.connect() as t:
        pair = describe_pair(s, t, table)
    res = diff_table(source, target, pair)
    print(
        json.dumps(
            {
                "clean": res.clean,
                "stats": res.stats.as_dict(),
                "differences": [
                    {"kind": d.kind.value, "key": list(d.key)} for d in res.differences
                ],
            },
            default=str,
        )
    )


def run_cdcr(ep: Endpoints) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.reconcile_cmp",
        "verify",
        ep.sa_url(SRC_DB),
        ep.sa_url(DB),
        f"public.{TABLE}",
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"error": r.stderr[-2000:], "seconds": round(wall, 2)}
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    found: dict[str, list[int]] = {"missing": [], "extra": [], "mismatched": []}
    for d in doc["differences"]:
        found[d["kind"]].append(int(d["key"][0]))
    return {
        "seconds": round(wall, 2),
        "found": {k: sorted(v) for k, v in found.items()},
        "stats": doc["stats"],
    }


RELADIFF_OPTS = ["--bisection-factor", "32", "--bisection-threshold", "16384", "-j", "1"]


def reladiff_cmd(ep: Endpoints) -> list[str]:
    exe = str(Path(sys.executable).with_name("reladiff"))
    cmd = [
        exe,
        ep.pg_url(SRC_DB),
        f"public.{TABLE}",
        ep.pg_url(DB),
        f"public.{TABLE}",
        "-k",
        "id",
    ]
    for c in COLS:
        cmd += ["-c", c]
    return [*cmd, *RELADIFF_OPTS, "--json"]


def run_reladiff(ep: Endpoints) -> dict[str, Any]:
    cmd = reladiff_cmd(ep)
    t0 = time.perf_counter()
    # reladiff prints through rich, which wraps at the terminal width: make it wide, and parse
    # only the sign and the key of each JSONL line.
    env = {**os.environ, "COLUMNS": "100000"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"error": r.stderr[-2000:], "seconds": round(wall, 2)}
    minus: set[int] = set()
    plus: set[int] = set()
    for sign, key in re.findall(r'\[\s*"([+-])",\s*\[\s*"(\d+)"', r.stdout):
        (minus if sign == "-" else plus).add(int(key))
    found = {
        "missing": sorted(minus - plus),
        "extra": sorted(plus - minus),
        "mismatched": sorted(minus & plus),
    }
    return {"seconds": round(wall, 2), "found": found}


def exact(found: dict[str, list[int]] | None, planted: dict[str, list[int]]) -> bool:
    return bool(found) and all(found[k] == planted[k] for k in planted)  # type: ignore[index]


def _scan_s(ep: Endpoints, db: str, select: str) -> float:
    conn = ep.connect_pg(db)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TimeZone = 'UTC'")
            t0 = time.perf_counter()
            cur.execute(f"SELECT {select} FROM public.{TABLE} t")
            cur.fetchall()
            return time.perf_counter() - t0
    finally:
        conn.close()


def scan_ceiling(ep: Endpoints) -> dict[str, Any]:
    """What one full scan costs: one side alone and both sides at once (two connections), with
    cdcr's row hash and with the issue's reference ``sum(hashtext(t::text))``; median of 3."""
    import sqlalchemy as sa

    from cdc_reconciler.reconcile.checksum import describe_pair, row_hash_sql

    source, target = sa.create_engine(ep.sa_url(SRC_DB)), sa.create_engine(ep.sa_url(DB))
    with source.connect() as s, target.connect() as t:
        pair = describe_pair(s, t, f"public.{TABLE}")
    source.dispose()
    target.dispose()
    out: dict[str, Any] = {}
    for name, select in (
        ("cdcr_hash", f"count(*), bit_xor({row_hash_sql(pair.source)})"),
        ("hashtext_row_text", "count(*), sum(hashtext(t::text))"),
    ):
        one = [_scan_s(ep, SRC_DB, select) for _ in range(REPEATS)]
        both: list[float] = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(_scan_s, (ep, ep), (SRC_DB, DB), (select, select)))
            both.append(time.perf_counter() - t0)
        out[name] = {"one_side": _spread(one), "both_sides": _spread(both)}
        log(
            f"reconcile ceiling {name}: one side {out[name]['one_side']}, both {out[name]['both_sides']}"
        )
    return out


def _spread(xs: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(xs), 2),
        "min": round(min(xs), 2),
        "max": round(max(xs), 2),
    }


def _summary(runs: list[dict[str, Any]], planted: dict[str, list[int]]) -> dict[str, Any]:
    """Median of the runs, with the spread, each run's time and the load before it."""
    fastest: dict[str, Any] = min(runs, key=lambda r: float(r.get("seconds", 1e9)))
    best = dict(fastest)
    ok = [r for r in runs if "error" not in r]
    best["exact"] = (
        bool(ok) and len(ok) == len(runs) and all(exact(r.get("found"), planted) for r in runs)
    )
    if not best["exact"] and best.get("found"):
        best["found_counts"] = {k: len(v) for k, v in best["found"].items()}
    best.pop("found", None)
    if ok:
        secs = [r["seconds"] for r in ok]
        best.update(seconds=round(statistics.median(secs), 2), spread=_spread(secs))
    best["runs"] = [{"seconds": r.get("seconds"), "load1": r.get("load1")} for r in runs]
    return best


def run_reconcile(ep: Endpoints, rows: int, logs: Path) -> dict[str, Any]:
    log(f"reconcile: building a {rows:,}-row pair ({SRC_DB}.public.{TABLE} vs {DB}.public.{TABLE})")
    t0 = time.perf_counter()
    build_pair(ep, rows)
    out: dict[str, Any] = {
        "rows": rows,
        "databases": {"source": SRC_DB, "target": DB},
        "repeats": REPEATS,
        "build_s": round(time.perf_counter() - t0, 1),
        "reladiff_command": " ".join(reladiff_cmd(ep)).replace(ep.pg_password + "@", "***@"),
        "cdcr_command": "python -m bench.reconcile_cmp verify SRC TGT "
        f"public.{TABLE}  (reconcile.diff.diff_table, DiffOptions() defaults: one grouped "
        "scan per side over up to 65,536 key buckets, leaves of at most 512 rows)",
    }
    try:
        out["ceiling"] = scan_ceiling(ep)
        empty: dict[str, list[int]] = {"missing": [], "extra": [], "mismatched": []}
        for case, planted in (("in_sync", empty), ("diff100", None)):
            if planted is None:
                planted = plant(ep, rows)
                out["planted"] = planted
            runs: dict[str, list[dict[str, Any]]] = {"reladiff": [], "cdcr": []}
            for _ in range(REPEATS):  # interleaved, so both see the same machine
                for name, fn in (("reladiff", run_reladiff), ("cdcr", run_cdcr)):
                    load1 = os.getloadavg()[0]
                    runs[name].append({**fn(ep), "load1": round(load1, 2)})
            for name, rs in runs.items():
                out.setdefault(case, {})[name] = _summary(rs, planted)
                log(
                    f"reconcile {case}: {name} {out[case][name].get('spread')} exact={out[case][name]['exact']}"
                )
        both = out["ceiling"]["cdcr_hash"]["both_sides"]["median"]
        for case in ("in_sync", "diff100"):
            c = out[case]
            if c["cdcr"].get("seconds") and c["reladiff"].get("seconds"):
                c["cdcr_over_reladiff"] = round(c["cdcr"]["seconds"] / c["reladiff"]["seconds"], 3)
                ratios = [
                    a["seconds"] / b["seconds"]
                    for a, b in zip(c["cdcr"]["runs"], c["reladiff"]["runs"], strict=True)
                    if a.get("seconds") and b.get("seconds")
                ]
                if ratios:
                    c["ratio_spread"] = _spread(ratios)
                c["cdcr_over_scan_ceiling"] = round(c["cdcr"]["seconds"] / both, 2)
    finally:
        drop_database(ep, SRC_DB)
        drop_database(ep, DB)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "verify":
        verify_main(*sys.argv[2:5])
    else:
        print(__doc__)
        sys.exit(2)
