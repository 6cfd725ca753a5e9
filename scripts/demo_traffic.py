"""Demo traffic for the source database: creates the demo schema (--setup), or writes a steady
mix of inserts, updates and deletes (--rate changes per second) until interrupted."""

from __future__ import annotations

import argparse
import os
import random
import time

import sqlalchemy as sa

SETUP = """
create schema if not exists demo;
create table if not exists demo.customers (
    id serial primary key, name text not null, email text, tier text,
    updated_at timestamptz not null default now());
create table if not exists demo.orders (
    id bigserial primary key, customer_id int not null, amount numeric(12,2) not null,
    status text not null, meta jsonb, updated_at timestamptz not null default now());
insert into demo.customers (name, email, tier)
    select 'customer ' || g, 'c' || g || '@example.com', 'basic'
    from generate_series(1, 100) g where not exists (select 1 from demo.customers);
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--setup", action="store_true")
    ap.add_argument("--rate", type=float, default=20.0)
    args = ap.parse_args()
    engine = sa.create_engine(os.environ["CDCR_SOURCE__URL"])
    if args.setup:
        with engine.begin() as conn:
            for stmt in SETUP.split(";"):
                if stmt.strip():
                    conn.execute(sa.text(stmt))
        return
    rng = random.Random(42)  # noqa: S311 - demo data, not security
    try:
        while True:
            with engine.begin() as conn:
                r = rng.random()
                if r < 0.5:
                    conn.execute(sa.text(
                        "insert into demo.orders (customer_id, amount, status, meta) values "
                        "(:c, :a, 'new', jsonb_build_object('items', :n))"),
                        {"c": rng.randint(1, 100), "a": round(rng.uniform(1, 500), 2),
                         "n": rng.randint(1, 5)})
                elif r < 0.8:
                    conn.execute(sa.text(
                        "update demo.orders set status = 'paid', updated_at = now() where id = "
                        "(select id from demo.orders where status = 'new' order by random() limit 1)"))
                elif r < 0.9:
                    conn.execute(sa.text(
                        "update demo.customers set tier = :t, updated_at = now() where id = :c"),
                        {"t": rng.choice(["basic", "gold", "platinum"]), "c": rng.randint(1, 100)})
                else:
                    conn.execute(sa.text(
                        "delete from demo.orders where id = "
                        "(select id from demo.orders order by random() limit 1)"))
            time.sleep(1.0 / args.rate)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
