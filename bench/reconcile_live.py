"""Reconcile while the source changes: false positives (must be 0) and reconcile time of one table
pair, at rest and while a writer changes about ``--rate`` rows/s spread over the whole table.

A real pipeline: PostgreSQL source -> Debezium (its own slot, ``snapshot.mode=no_data``) -> Kafka
-> ``cdcr run`` (in a thread, topic pattern only) -> a target database of its own (``bench_rl``,
migrated to head, dropped at the end). The pair starts identical (both sides filled by the same
statement). 100 differences are planted in the target on keys the writer never touches, so the
run also shows that real differences are still found while changes flow.

For each phase, ``cdcr reconcile --once --dry-run`` (command.reconcile, zero configuration: the
table is found from the group's applied offsets; no change-time column, so the whole table is
compared) is timed, and its confirmed differences are compared with the planted ones:
``false_positives`` = confirmed keys that were not planted, ``missed`` = planted keys not reported.

    python -m bench.reconcile_live [--rows 1000000] [--rate 1000] [--seconds 20]

Prints one JSON object. Numbers taken on a machine shared with other work are marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
import uuid
from typing import Any

import sqlalchemy as sa

from bench.common import Endpoints, drop_database, http, log, recreate_database

DB = "bench_rl"
PLANTED = 100


def _fill(engine: sa.Engine, table: str, rows: int, cdc: bool) -> None:
    extra = (
        ", _cdc_pos numeric(40,0) NOT NULL DEFAULT 0, _cdc_ts timestamptz NOT NULL DEFAULT now()"
    )
    with engine.begin() as c:
        c.execute(sa.text(f"DROP TABLE IF EXISTS public.{table}"))
        c.execute(
            sa.text(
                f"CREATE TABLE public.{table} (id bigint PRIMARY KEY, a int NOT NULL, b text, "
                f"c numeric(12,2){extra if cdc else ''})"
            )
        )
        c.execute(
            sa.text(
                f"INSERT INTO public.{table} (id, a, b, c) SELECT g, g % 1000, md5(g::text), "
                f"(g % 100000) / 100.0 FROM generate_series(1, {rows}) g"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text(f"VACUUM ANALYZE public.{table}"))


def _planted_keys(rows: int) -> list[int]:
    return sorted(random.Random(20261203).sample(range(1, rows + 1, 7), PLANTED))


class Writer:
    """Updates ``rate`` rows/s (25 rows per transaction), random keys not ≡ 1 (mod 7)."""

    def __init__(
        self, engine: sa.Engine, table: str, rows: int, rate: int, hold: float = 0.0
    ) -> None:
        self.engine, self.table, self.rows, self.rate = engine, table, rows, rate
        self.hold = hold  # keep each transaction open this long after its writes
        self.next_new = rows + 1
        self.stop = threading.Event()
        self.changed = 0
        self.started = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rnd = random.Random(1)
        per_tx = 25
        interval = per_tx / self.rate
        self.started = time.monotonic()
        nxt = self.started
        while not self.stop.is_set():
            keys: list[int] = []
            while len(keys) < per_tx:
                k = rnd.randint(1, self.rows)
                if k % 7 != 1:
                    keys.append(k)
            with self.engine.begin() as c:
                c.execute(
                    sa.text(
                        f"UPDATE public.{self.table} SET a = a + 1, b = md5(random()::text) "
                        "WHERE id = ANY(:k)"
                    ),
                    {"k": keys},
                )
                if self.hold:  # inserts of new keys and deletes of earlier new keys, held open
                    c.execute(
                        sa.text(
                            f"INSERT INTO public.{self.table} (id, a, b, c) "
                            "VALUES (:k, 0, 'new', 1)"
                        ),
                        {"k": self.next_new},
                    )
                    if self.next_new % 2 == 0:
                        c.execute(
                            sa.text(f"DELETE FROM public.{self.table} WHERE id = :k"),
                            {"k": self.next_new - 1},
                        )
                    self.next_new += 1
                    time.sleep(self.hold)
            self.changed += per_tx
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def rate_measured(self) -> float:
        return self.changed / max(time.monotonic() - self.started, 1e-9)


def _reconcile(settings: Any, table: str) -> tuple[float, set[int], dict[str, Any]]:
    from cdc_reconciler.reconcile import command

    t0 = time.monotonic()
    [report] = command.reconcile(settings, tables=[table], dry_run=True)
    took = time.monotonic() - t0
    found = {int(d.key[0]) for w in report.windows for d in w.differences}
    counts: dict[str, Any] = {}
    for w in report.windows:
        for k in ("candidates", "deferred", "in_flight", "source_rows"):
            counts[k] = counts.get(k, 0) + int(w.counts.get(k) or 0)
        counts["in_flight_reasons"] = w.counts.get("in_flight_reasons")
    if report.unverified:
        raise RuntimeError(f"{table} not verified: {report.unverified}")
    return took, found, counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20, help="traffic before the reconcile")
    ap.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="a second writer variant: hold each transaction open this long, with an "
        "insert of a new key and a delete of an earlier new key in it",
    )
    args = ap.parse_args()
    ep = Endpoints.from_env()
    tag = uuid.uuid4().hex[:6]
    table = f"bench_rl_{tag}"
    name = f"brl{tag}"
    prefix = f"brl{tag}"
    source = sa.create_engine(ep.sa_url("source"))
    recreate_database(ep, DB)
    target = sa.create_engine(ep.sa_url(DB))
    os.environ.update(
        {
            "CDCR_SOURCE__URL": ep.sa_url("source"),
            "CDCR_TARGET__URL": ep.sa_url(DB),
            "CDCR_KAFKA__TOPIC_PATTERN": rf"^{prefix}\.public\.{table}$",
            "CDCR_KAFKA__GROUP_ID": f"g_{name}",
            "CDCR_KAFKA__BATCH_TIMEOUT_S": "0.2",
            "CDCR_RECONCILE__GRACE_S": "0",
            "CDCR_RECONCILE__CONFIRM_WAIT_S": "60",
        }
    )
    os.environ.pop("CDCR_KAFKA__TOPIC_PREFIX", None)
    from cdc_reconciler import migrations
    from cdc_reconciler.config import Settings
    from cdc_reconciler.stream import command as stream

    settings = Settings()
    migrations.upgrade(settings, "head")
    src = sa.engine.make_url(ep.sa_url("source"))
    stop = threading.Event()
    consumer: threading.Thread | None = None
    writer: Writer | None = None
    result: dict[str, Any] = {
        "rows": args.rows,
        "target_rate": args.rate,
        "hold_s": args.hold,
        "machine": "shared with other engineers' work (busy): indicative only",
    }
    try:
        log(f"filling {args.rows} rows on both sides")
        _fill(source, table, args.rows, cdc=False)
        _fill(target, table, args.rows, cdc=True)
        planted = _planted_keys(args.rows)
        with target.begin() as c:
            c.execute(
                sa.text(f"UPDATE public.{table} SET b = 'planted' WHERE id = ANY(:k)"),
                {"k": planted},
            )
        code, body = http(
            "PUT",
            f"{ep.connect}/connectors/{name}/config",
            {
                "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
                "plugin.name": "pgoutput",
                "database.hostname": src.host or "127.0.0.1",
                "database.port": str(src.port or 5432),
                "database.user": src.username or "postgres",
                "database.password": src.password or "",
                "database.dbname": "source",
                "topic.prefix": prefix,
                "table.include.list": f"public.{table}",
                "slot.name": name,
                "publication.name": f"{name}_pub",
                "publication.autocreate.mode": "filtered",
                "snapshot.mode": "no_data",
                "key.converter": "org.apache.kafka.connect.json.JsonConverter",
                "value.converter": "org.apache.kafka.connect.json.JsonConverter",
                "poll.interval.ms": "100",
            },
        )
        assert code in (200, 201), body
        consumer = threading.Thread(
            target=stream.run,
            args=(settings,),
            kwargs={"serve_metrics": False, "stop": stop},
            daemon=True,
        )
        consumer.start()
        time.sleep(5)
        # One change so that the group has applied offsets (closure), then rest.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with source.begin() as c:
                c.execute(sa.text(f"UPDATE public.{table} SET a = a + 1 WHERE id = 2"))
            time.sleep(2)
            with target.connect() as c:
                if c.execute(
                    sa.text("SELECT count(*) FROM cdcr.applied_offsets WHERE consumer_group = :g"),
                    {"g": settings.kafka.group_id},
                ).scalar():
                    break
        time.sleep(3)
        expected = set(planted)
        took, found, counts = _reconcile(settings, f"public.{table}")
        result["at_rest"] = {
            "seconds": round(took, 2),
            "false_positives": len(found - expected),
            "missed": len(expected - found),
            **counts,
        }
        log(f"at rest: {result['at_rest']}")
        writer = Writer(source, table, args.rows, args.rate, args.hold)
        writer.thread.start()
        time.sleep(args.seconds)
        took, found, counts = _reconcile(settings, f"public.{table}")
        result["under_traffic"] = {
            "seconds": round(took, 2),
            "false_positives": len(found - expected),
            "missed": len(expected - found),
            "writer_rows_per_s": round(writer.rate_measured()),
            **counts,
        }
        log(f"under traffic: {result['under_traffic']}")
    finally:
        if writer is not None:
            writer.stop.set()
            writer.thread.join(30)
        stop.set()
        if consumer is not None:
            consumer.join(60)
        http("DELETE", f"{ep.connect}/connectors/{name}")
        time.sleep(3)
        with source.begin() as c:
            c.execute(sa.text(f"DROP TABLE IF EXISTS public.{table}"))
            c.execute(sa.text(f'DROP PUBLICATION IF EXISTS "{name}_pub"'))
        for _ in range(20):
            with source.begin() as c:
                row = c.execute(
                    sa.text("SELECT active FROM pg_replication_slots WHERE slot_name = :s"),
                    {"s": name},
                ).first()
                if row is None:
                    break
                if not row.active:
                    c.execute(sa.text("SELECT pg_drop_replication_slot(:s)"), {"s": name})
                    break
            time.sleep(1)
        source.dispose()
        target.dispose()
        drop_database(ep, DB)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
