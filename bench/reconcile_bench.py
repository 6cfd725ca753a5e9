"""Reconcile benchmark: verify an in-sync table pair, then find 100 scattered differences.

    python bench/reconcile_bench.py [--rows 1000000] [--runs 3] [--keep]

Builds ``public.bench_recon_<tag>`` (10 columns) with generate_series in the source and target
databases (CDCR_SOURCE__URL / CDCR_TARGET__URL or SOURCE_DATABASE_URL / TARGET_DATABASE_URL),
times cdcr's diff on the in-sync pair (median of --runs), plants 100 differences (34 missing,
33 mismatched, 33 extra) at random keys, times finding them, and prints the numbers. Never a
timed test: results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid

import sqlalchemy as sa

from cdc_reconciler.reconcile.checksum import describe_pair
from cdc_reconciler.reconcile.diff import DiffOptions, Kind, diff_table

COLS = ("id bigint PRIMARY KEY, name text, email text, amount numeric(12,2), qty integer, "
        "score double precision, active boolean, created_at timestamptz, updated_at timestamptz, "
        "note text")
FILL = ("INSERT INTO {t} (id, name, email, amount, qty, score, active, created_at, updated_at, "
        "note) SELECT g, 'name ' || g, 'user' || g || '@example.com', (g % 100000) / 100.0, "
        "g % 1000, g / 7.0, g % 2 = 0, timestamptz '2026-01-01Z' + g * interval '1 second', "
        "timestamptz '2026-01-01Z' + g * interval '2 second', md5(g::text) "
        "FROM generate_series(1, {n}) g")


def _url(*names: str) -> str:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    raise SystemExit(f"set {names[0]} (eval \"$(scripts/stack env)\")")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--threshold", type=int, default=DiffOptions().threshold)
    ap.add_argument("--factor", type=int, default=DiffOptions().max_factor)
    args = ap.parse_args()
    source = sa.create_engine(_url("CDCR_SOURCE__URL", "SOURCE_DATABASE_URL"))
    target = sa.create_engine(_url("CDCR_TARGET__URL", "TARGET_DATABASE_URL"))
    table = f"public.bench_recon_{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    with source.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {table} ({COLS})"))
        c.execute(sa.text(FILL.format(t=table, n=args.rows)))
    with target.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {table} ({COLS}, _cdc_pos numeric(40,0) NOT NULL "
                          "DEFAULT 0, _cdc_ts timestamptz NOT NULL DEFAULT now())"))
        c.execute(sa.text(FILL.format(t=table, n=args.rows)))
    for e in (source, target):
        with e.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(sa.text(f"VACUUM ANALYZE {table}"))
    print(f"built {args.rows:,} rows x 10 columns per side in {time.perf_counter() - t0:.1f}s")
    try:
        with source.connect() as s, target.connect() as t:
            pair = describe_pair(s, t, table)
        opts = DiffOptions(threshold=args.threshold, max_factor=args.factor)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            res = diff_table(source, target, pair, options=opts)
            times.append(time.perf_counter() - t0)
            assert res.clean, res.differences[:5]
        print(f"in-sync verify: median {statistics.median(times):.2f}s "
              f"(runs: {', '.join(f'{x:.2f}' for x in times)})")

        rng = random.Random(4)
        keys = rng.sample(range(1, args.rows + 1), 67)
        missing, mismatched = keys[:34], keys[34:]
        extra = [args.rows + 1 + i * 7919 for i in range(33)]
        with target.begin() as c:
            c.execute(sa.text(f"DELETE FROM {table} WHERE id = ANY(:k)"), {"k": missing})
            c.execute(sa.text(f"UPDATE {table} SET note = 'corrupt' WHERE id = ANY(:k)"),
                      {"k": mismatched})
            c.execute(sa.text(f"INSERT INTO {table} (id, name) SELECT unnest(CAST(:k AS bigint[])),"
                              " 'ghost'"), {"k": extra})
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            res = diff_table(source, target, pair, options=opts)
            times.append(time.perf_counter() - t0)
        got = {(d.kind, d.key[0]) for d in res.differences}
        want = ({(Kind.MISSING, k) for k in missing} | {(Kind.MISMATCHED, k) for k in mismatched}
                | {(Kind.EXTRA, k) for k in extra})
        assert got == want, (len(got), len(want))
        print(f"100 scattered differences found: median {statistics.median(times):.2f}s "
              f"(runs: {', '.join(f'{x:.2f}' for x in times)}); segments compared "
              f"{res.stats.segments_compared}, rows downloaded {res.stats.rows_downloaded}")
    finally:
        if not args.keep:
            for e in (source, target):
                with e.begin() as c:
                    c.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


if __name__ == "__main__":
    main()
