"""The change stream of the apply benchmark, produced ONCE through the real Debezium connector.

Three source tables of 10 columns (bigint/int keys, numeric(12,2), timestamptz, text, jsonb,
boolean, date, varchar, smallint), and rounds of source traffic per table: a batch of inserts
(new keys), updates of random existing keys, updates of a small set of hot keys (the same 50 keys
many times a round), and deletes of random keys (a delete is 2 records: `d` + tombstone). Rounds
repeat until the topics will hold the wanted number of records. The topic prefix is unique per
bench run; the connector, its slot and publication are removed once the topics hold every record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.common import Endpoints, http, log, topic_counts, wait_until

TABLES: dict[str, str] = {
    "bench_orders": """
        id bigint primary key, customer_id int not null, amount numeric(12,2) not null,
        status varchar(16) not null, created_at timestamptz not null, updated_at timestamptz,
        note text, attrs jsonb, paid boolean not null default false, due date""",
    "bench_accounts": """
        id int primary key, name varchar(64) not null, email text, balance numeric(12,2),
        opened date, last_login timestamptz, active boolean, prefs jsonb, tier smallint,
        score bigint""",
    "bench_events": """
        id bigint primary key, account_id int, kind varchar(32) not null, payload jsonb,
        amount numeric(12,2), at timestamptz not null, day date, processed boolean,
        origin text, seq bigint""",
}

COLUMNS: dict[str, list[str]] = {
    "bench_orders": [
        "id",
        "customer_id",
        "amount",
        "status",
        "created_at",
        "updated_at",
        "note",
        "attrs",
        "paid",
        "due",
    ],
    "bench_accounts": [
        "id",
        "name",
        "email",
        "balance",
        "opened",
        "last_login",
        "active",
        "prefs",
        "tier",
        "score",
    ],
    "bench_events": [
        "id",
        "account_id",
        "kind",
        "payload",
        "amount",
        "at",
        "day",
        "processed",
        "origin",
        "seq",
    ],
}

INSERT = {
    "bench_orders": """insert into public.bench_orders select g, (g * 7919) % 50000,
        round((random() * 1000)::numeric, 2), (array['new','paid','shipped','void'])[1 + (g % 4)::int],
        now() - (g % 1000) * interval '1 minute', now(), 'order ' || g || ' ' || md5(g::text),
        jsonb_build_object('sku', 'S' || (g % 977), 'qty', g % 5 + 1, 'tags', jsonb_build_array('a', g % 3)),
        g % 3 = 0, current_date + (g % 30)::int from generate_series(%(lo)s::bigint, %(hi)s::bigint) g""",
    "bench_accounts": """insert into public.bench_accounts select g, 'acct-' || g,
        'user' || g || '@example.com', round((random() * 10000)::numeric, 2),
        date '2020-01-01' + (g % 1500)::int, now(), g % 10 <> 0,
        jsonb_build_object('lang', (array['en','de','fr'])[1 + (g % 3)::int], 'n', g), (g % 5)::smallint,
        g * 1000003 from generate_series(%(lo)s::bigint, %(hi)s::bigint) g""",
    "bench_events": """insert into public.bench_events select g, (g * 31) % 20000,
        (array['click','view','buy','refund'])[1 + (g % 4)::int],
        jsonb_build_object('path', '/p/' || (g % 313), 'ms', g % 997, 'ua', md5((g % 50)::text)),
        round((random() * 100)::numeric, 2), now(), current_date, false, 'web', g
        from generate_series(%(lo)s::bigint, %(hi)s::bigint) g""",
}
# psycopg2 placeholders: a literal % is written %%.
INSERT = {t: q.replace(" % ", " %% ") for t, q in INSERT.items()}

UPDATE_SET = {
    "bench_orders": """amount = round((random() * 1000)::numeric, 2), updated_at = now(),
        status = (array['new','paid','shipped','void'])[1 + (random() * 3)::int],
        attrs = jsonb_set(coalesce(attrs, '{}'), '{rev}', to_jsonb(clock_timestamp()::text)),
        note = md5(random()::text)""",
    "bench_accounts": """balance = round((random() * 10000)::numeric, 2), last_login = now(),
        prefs = jsonb_set(coalesce(prefs, '{}'), '{seen}', to_jsonb(clock_timestamp()::text)),
        score = score + 1, active = random() < 0.9""",
    "bench_events": """processed = not coalesce(processed, false), seq = seq + 1,
        amount = round((random() * 100)::numeric, 2),
        payload = jsonb_set(coalesce(payload, '{}'), '{try}', to_jsonb((random() * 9)::int))""",
}

# Per table and round.
INSERTS, UPDATES, HOT_KEYS, HOT_REPEATS, DELETES = 2000, 1500, 50, 20, 200


@dataclass
class Stream:
    prefix: str
    connector: str
    topics: list[str]
    records: int  # records in the topics (change events + tombstones)
    changes: int  # change events (c/u/d) the source traffic produced
    counts: dict[str, int]  # per kind: insert, update, hot_update, delete
    produce_s: float  # source traffic start to the topics holding every record
    started_at: float = 0.0  # epoch seconds when the source traffic began


def create_tables(ep: Endpoints) -> None:
    conn = ep.connect_pg("source")
    with conn.cursor() as cur:
        for t, ddl in TABLES.items():
            cur.execute(f"drop table if exists public.{t}")
            cur.execute(f"create table public.{t} ({ddl})")
    conn.close()


def drop_tables(ep: Endpoints) -> None:
    conn = ep.connect_pg("source")
    with conn.cursor() as cur:
        for t in TABLES:
            cur.execute(f"drop table if exists public.{t}")
    conn.close()


def register(ep: Endpoints, name: str, prefix: str) -> None:
    config = {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "plugin.name": "pgoutput",
        "database.hostname": ep.pg_host,
        "database.port": str(ep.pg_port),
        "database.user": ep.pg_user,
        "database.password": ep.pg_password,
        "database.dbname": "source",
        "topic.prefix": prefix,
        "table.include.list": ",".join(f"public.{t}" for t in TABLES),
        "slot.name": name,
        "publication.name": f"{name}_pub",
        "publication.autocreate.mode": "filtered",
        "snapshot.mode": "initial",
        "tombstones.on.delete": "true",
        # JsonConverter with schemas: Kafka Connect's default, and what the JDBC sink needs.
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "true",
        "value.converter.schemas.enable": "true",
        "poll.interval.ms": "50",
        "max.batch.size": "8192",
        "max.queue.size": "65536",
        "producer.override.linger.ms": "20",
        "producer.override.batch.size": "524288",
    }
    code, body = http("PUT", f"{ep.connect}/connectors/{name}/config", config)
    if code not in (200, 201):
        raise RuntimeError(f"Kafka Connect refused connector {name}: {code} {body}")

    def running() -> bool:
        code, st = http("GET", f"{ep.connect}/connectors/{name}/status")
        return (
            code == 200
            and st["connector"]["state"] == "RUNNING"
            and st["tasks"]
            and st["tasks"][0]["state"] == "RUNNING"
        )

    wait_until(f"connector {name} RUNNING", running, 120)

    def slot_active() -> bool:
        conn = ep.connect_pg("source")
        with conn.cursor() as cur:
            cur.execute("select active from pg_replication_slots where slot_name = %s", (name,))
            row = cur.fetchone()
        conn.close()
        return bool(row and row[0])

    wait_until(f"replication slot {name} active", slot_active, 120)


def unregister(ep: Endpoints, name: str) -> None:
    http("DELETE", f"{ep.connect}/connectors/{name}")
    conn = ep.connect_pg("source")
    with conn.cursor() as cur:
        for _ in range(30):
            cur.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                "where slot_name = %s and not active",
                (name,),
            )
            cur.execute("select 1 from pg_replication_slots where slot_name = %s", (name,))
            if cur.fetchone() is None:
                break
            time.sleep(1)
        cur.execute(f"drop publication if exists {name}_pub")
    conn.close()


def traffic(ep: Endpoints, target_records: int) -> tuple[int, int, dict[str, int]]:
    """Run rounds of source traffic until the topics will hold >= target_records records."""
    conn = ep.connect_pg("source", autocommit=False)
    cur = conn.cursor()
    next_id = {t: 1 for t in TABLES}
    counts = {"insert": 0, "update": 0, "hot_update": 0, "delete": 0}
    records = 0
    rnd = 0
    while records < target_records:
        rnd += 1
        for t in TABLES:
            lo = next_id[t]
            hi = lo + INSERTS - 1
            cur.execute(INSERT[t], {"lo": lo, "hi": hi})
            counts["insert"] += cur.rowcount
            records += cur.rowcount
            next_id[t] = hi + 1
            conn.commit()
            # Random existing keys (some already deleted: they update nothing, emit nothing).
            cur.execute(
                f"update public.{t} set {UPDATE_SET[t]} where id in (select "
                f"{HOT_KEYS + 1} + (random() * {hi - HOT_KEYS - 1})::bigint "
                f"from generate_series(1, {UPDATES}))"
            )
            counts["update"] += cur.rowcount
            records += cur.rowcount
            conn.commit()
            for _ in range(HOT_REPEATS):  # the hot keys 1..50, many small transactions
                cur.execute(f"update public.{t} set {UPDATE_SET[t]} where id <= {HOT_KEYS}")
                counts["hot_update"] += cur.rowcount
                records += cur.rowcount
                conn.commit()
            cur.execute(
                f"delete from public.{t} where id in (select {HOT_KEYS + 1} + "
                f"(random() * {hi - HOT_KEYS - 1})::bigint from generate_series(1, "
                f"{DELETES}))"
            )
            counts["delete"] += cur.rowcount
            records += 2 * cur.rowcount  # d + tombstone
            conn.commit()
    cur.close()
    conn.close()
    changes = counts["insert"] + counts["update"] + counts["hot_update"] + counts["delete"]
    return records, changes, counts


def produce(ep: Endpoints, tag: str, target_records: int) -> Stream:
    prefix = f"bench{tag}"
    name = f"bench{tag}"
    topics = [f"{prefix}.public.{t}" for t in TABLES]
    create_tables(ep)
    register(ep, name, prefix)
    log(f"connector {name} running; producing source traffic for >= {target_records:,} records")
    t0 = time.perf_counter()
    started_at = time.time()
    try:  # the connector, its slot and publication go even when the bench is stopped here
        records, changes, counts = traffic(ep, target_records)
        gen_s = time.perf_counter() - t0
        log(
            f"source traffic done in {gen_s:.1f}s: {changes:,} changes, {records:,} records "
            f"expected; waiting for Debezium"
        )
        last = [0]

        def complete() -> bool:
            n = sum(topic_counts(ep.kafka, topics).values())
            if n != last[0]:
                last[0] = n
            return n >= records

        wait_until(f"{records:,} records in {prefix}.*", complete, 1800, every=1.0)
        produce_s = time.perf_counter() - t0
        got = sum(topic_counts(ep.kafka, topics).values())
        log(f"topics hold {got:,} records after {produce_s:.1f}s")
    finally:
        unregister(ep, name)
    return Stream(prefix, name, topics, got, changes, counts, produce_s, started_at)
