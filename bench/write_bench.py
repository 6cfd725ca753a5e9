"""Micro benchmark of the target write (COPY into staging + the guarded merge statements).

Creates a scratch database on the target server (dropped at the end), with ``cdcr.tombstones``
and two identical 10-column tables preloaded with ``--preload`` rows. Each batch is ``--size``
writes with a realistic mix: inserts of new keys, updates of existing keys, deletes of existing
keys (and some re-inserts of deleted keys). The two contenders alternate batch by batch on their
own table, each in its own transaction on one long-lived connection (like the apply loop):

- ``old``: the writer at ``--baseline`` (default ``main``), loaded from git;
- ``new``: the writer of this checkout.

Reports ms/batch (median of the rounds' medians, with the spread) and the load average.

    eval "$(scripts/stack env)"; .venv/bin/python bench/write_bench.py [--batches 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.connectors.postgres import write as new_write
from cdc_reconciler.connectors.postgres.reflect import reflect_table
from cdc_reconciler.connectors.postgres.table import TargetTable

ROOT = Path(__file__).resolve().parent.parent
WriteFn = Callable[[sa.Connection, TargetTable, Sequence[Any]], Any]


def _load_baseline(ref: str) -> types.ModuleType:
    """The writer module (and its statements module) as they are at ``ref``, under private
    module names, so both writers run in one process."""
    tmp = Path(tempfile.mkdtemp(prefix="cdcr_write_bench_"))
    names = {}
    for mod in ("statements", "write"):
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:connectors/postgres/{mod}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        names[mod] = f"_cdcr_baseline_{mod}"
        src = src.replace(
            "from cdc_reconciler.connectors.postgres.statements import",
            f"from {names['statements']} import",
        )
        path = tmp / f"{names[mod]}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(names[mod], path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[names[mod]] = module
        spec.loader.exec_module(module)
    return sys.modules[names["write"]]


DDL = (
    "id bigint primary key, name text, amount numeric(12,2), qty int, active boolean, "
    "updated_at timestamptz, note text, ref uuid, day date, attrs jsonb, "
    "_cdc_pos numeric(40,0) not null, _cdc_ts timestamptz not null"
)


def _values(rng: random.Random, key: int) -> dict[str, Any]:
    return {
        "id": key,
        "name": f"name-{key}-{rng.randrange(1000)}",
        "amount": Decimal(rng.randrange(10**8)) / 100,
        "qty": rng.randrange(1000),
        "active": rng.random() < 0.5,
        "updated_at": datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**7)),
        "note": "note " * rng.randrange(1, 6),
        "ref": str(uuid.UUID(int=rng.getrandbits(128))),
        "day": date(2020, 1, 1) + timedelta(days=rng.randrange(2000)),
        "attrs": {"k": rng.randrange(100), "tag": "x"},
    }


class Workload:
    """Batches of writes (one per key): 40% inserts, 45% updates, 15% deletes; the live and
    deleted keys are tracked so updates and deletes hit existing rows."""

    def __init__(self, preload: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.live = list(range(preload))
        self.dead: list[int] = []
        self.next_key = preload
        self.pos = 1_000

    def batch(self, size: int, row_write: type) -> list[Any]:
        rng, out, used = self.rng, [], set()
        ts = 1_700_000_000_000_000
        for _ in range(size):
            self.pos += 1
            r = rng.random()
            if r < 0.40:
                if self.dead and rng.random() < 0.2:
                    key = self.dead.pop(rng.randrange(len(self.dead)))
                else:
                    key = self.next_key
                    self.next_key += 1
                self.live.append(key)
                vals: dict[str, Any] | None = _values(rng, key)
            else:
                i = rng.randrange(len(self.live))
                key = self.live[i]
                if key in used:
                    continue
                if r < 0.85:
                    vals = _values(rng, key)
                else:
                    self.live[i] = self.live[-1]
                    self.live.pop()
                    self.dead.append(key)
                    vals = None
            if key in used:
                continue
            used.add(key)
            out.append(row_write((key,), vals, self.pos, ts))
        return out


def _create_db(url: sa.URL, name: str) -> None:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def _drop_db(url: sa.URL, name: str) -> None:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _prepare(engine: sa.Engine, tables: list[str], preload: int) -> None:
    with engine.begin() as c:
        c.execute(sa.text("CREATE SCHEMA cdcr"))
        c.execute(
            sa.text(
                "CREATE TABLE cdcr.tombstones (table_name text, key text, "
                "position numeric(40,0) NOT NULL, deleted_at timestamptz NOT NULL, "
                "PRIMARY KEY (table_name, key))"
            )
        )
        for t in tables:
            c.execute(sa.text(f"CREATE TABLE public.{t} ({DDL})"))
            c.execute(
                sa.text(
                    f"INSERT INTO public.{t} SELECT g, 'name-' || g, g / 100.0, g % 1000, "
                    "g % 2 = 0, now(), 'note', gen_random_uuid(), current_date, "
                    f"'{{\"k\": 1}}', 1, now() FROM generate_series(0, {preload - 1}) g"
                )
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        for t in [*tables, "cdcr.tombstones"]:
            c.execute(sa.text(f"VACUUM ANALYZE {t}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=10, help="batches per round and contender")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=5_000)
    ap.add_argument("--preload", type=int, default=200_000)
    ap.add_argument("--baseline", default="main")
    args = ap.parse_args()
    url = sa.make_url(os.environ["TARGET_DATABASE_URL"])
    db = f"cdcr_write_bench_{os.getpid()}"
    _create_db(url, db)
    try:
        _run(url.set(database=db), args)
    finally:
        _drop_db(url, db)


def _run(url: sa.URL, args: argparse.Namespace) -> None:
    old = _load_baseline(args.baseline)
    contenders: dict[str, tuple[WriteFn, type]] = {
        "old": (old.write_batch, old.RowWrite),
        "new": (new_write.write_batch, new_write.RowWrite),
    }
    engine = sa.create_engine(url, pool_size=2)
    _prepare(engine, ["t_old", "t_new"], args.preload)
    tables = {n: reflect_table(engine, "public", f"t_{n}") for n in contenders}
    loads = {n: Workload(args.preload, seed=7) for n in contenders}  # the same stream for both
    conns = {n: engine.connect() for n in contenders}
    times: dict[str, list[list[float]]] = {n: [] for n in contenders}
    for name, (fn, rw) in contenders.items():  # warm-up, untimed: caches, first plans
        table = tables[name]
        assert table is not None
        with conns[name].begin():
            fn(conns[name], table, loads[name].batch(args.size, rw))
    print(f"load average before: {os.getloadavg()}")
    for rnd in range(args.rounds):
        per: dict[str, list[float]] = {n: [] for n in contenders}
        for _ in range(args.batches):
            for name, (fn, rw) in contenders.items():
                table = tables[name]
                assert table is not None
                writes = loads[name].batch(args.size, rw)
                conn = conns[name]
                t0 = time.perf_counter()
                with conn.begin():
                    fn(conn, table, writes)
                per[name].append((time.perf_counter() - t0) * 1000)
        for n in contenders:
            times[n].append(per[n])
        print(
            f"round {rnd + 1}: "
            + ", ".join(f"{n} {statistics.median(per[n]):.1f} ms" for n in contenders)
            + f"  (load {os.getloadavg()[0]:.2f})"
        )
    for c in conns.values():
        c.close()
    with engine.connect() as c:
        counts = [
            c.execute(sa.text(f"SELECT count(*), sum(_cdc_pos) FROM t_{n}")).one()
            for n in contenders
        ]
    engine.dispose()
    assert counts[0] == counts[1], f"the two writers disagree: {counts}"
    print(f"rows agree: {counts[0][0]} rows")
    for n in contenders:
        meds = [statistics.median(r) for r in times[n]]
        print(
            f"{n}: {statistics.median(meds):.1f} ms/batch median of {len(meds)} rounds "
            f"(spread {min(meds):.1f}-{max(meds):.1f}); {args.size} writes/batch"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
