"""Demo traffic for the source database: creates the demo schema (--setup), or writes a steady
mix of inserts, updates and deletes (--rate changes per second) until interrupted. Also the
demo's checks: --wait-applied (until the consumer has applied the customers to the target),
--plant (make the target differ from the source behind the consumer's back) and --show-planted
(the planted rows on both sides)."""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable

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
    ap.add_argument("--wait-applied", action="store_true")
    ap.add_argument("--plant", action="store_true")
    ap.add_argument("--show-planted", action="store_true")
    args = ap.parse_args()
    engine = sa.create_engine(os.environ["CDCR_SOURCE__URL"])
    if args.wait_applied or args.plant or args.show_planted:
        target = sa.create_engine(os.environ["CDCR_TARGET__URL"])
        if args.wait_applied:
            wait_applied(engine, target)
        elif args.plant:
            plant(engine, target)
        else:
            show_planted(engine, target)
        return
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
                    conn.execute(
                        sa.text(
                            "insert into demo.orders (customer_id, amount, status, meta) values "
                            "(:c, :a, 'new', jsonb_build_object('items', :n))"
                        ),
                        {
                            "c": rng.randint(1, 100),
                            "a": round(rng.uniform(1, 500), 2),
                            "n": rng.randint(1, 5),
                        },
                    )
                elif r < 0.8:
                    conn.execute(
                        sa.text(
                            "update demo.orders set status = 'paid', updated_at = now() where id = "
                            "(select id from demo.orders where status = 'new' order by random() limit 1)"
                        )
                    )
                elif r < 0.9:
                    conn.execute(
                        sa.text(
                            "update demo.customers set tier = :t, updated_at = now() where id = :c"
                        ),
                        {"t": rng.choice(["basic", "gold", "platinum"]), "c": rng.randint(1, 100)},
                    )
                else:
                    conn.execute(
                        sa.text(
                            "delete from demo.orders where id = "
                            "(select id from demo.orders order by random() limit 1)"
                        )
                    )
            time.sleep(1.0 / args.rate)
    except KeyboardInterrupt:
        pass


CUSTOMER = "select id, name, email from demo.customers"


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        try:
            return int(conn.execute(sa.text(f"select count(*) from {table}")).scalar_one())
        except sa.exc.ProgrammingError:  # not created yet by the consumer
            return 0


def _wait(what: str, check: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"[demo] FAILED: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def wait_applied(source: sa.Engine, target: sa.Engine) -> None:
    want = _count(source, "demo.customers")
    _wait(f"{want} customers in the target", lambda: _count(target, "demo.customers") >= want)
    print(
        f"[demo] applied: target has {_count(target, 'demo.customers')} customers and "
        f"{_count(target, 'demo.orders')} orders (source: {want} customers, "
        f"{_count(source, 'demo.orders')} orders)"
    )


def plant(source: sa.Engine, target: sa.Engine) -> None:
    """Two new customers (ones the traffic writer never touches) reach the target through the
    pipeline; then, in the target only, one is deleted and the other's name changed."""
    run = int(time.time())
    with source.begin() as conn:
        ids = list(
            conn.execute(
                sa.text(
                    "insert into demo.customers (name, email, tier) values "
                    "('Planted Missing', :a, 'basic'), ('Planted Changed', :b, 'basic') "
                    "returning id"
                ),
                {
                    "a": f"planted-missing-{run}@example.com",
                    "b": f"planted-changed-{run}@example.com",
                },
            ).scalars()
        )

    def arrived() -> bool:
        with target.connect() as conn:
            got = conn.execute(
                sa.text("select count(*) from demo.customers where id = any(:i)"), {"i": ids}
            ).scalar_one()
        return bool(got == len(ids))

    _wait("the two new customers in the target", arrived)
    with target.begin() as conn:
        conn.execute(sa.text("delete from demo.customers where id = :i"), {"i": ids[0]})
        conn.execute(
            sa.text("update demo.customers set name = 'Tampered in target' where id = :i"),
            {"i": ids[1]},
        )
    print(
        f"[demo] planted in the TARGET only: deleted customer {ids[0]}; renamed customer {ids[1]}"
    )
    show_planted(source, target)


def show_planted(source: sa.Engine, target: sa.Engine) -> None:
    """The newest planted pair, as the source and the target have it."""
    with source.connect() as conn:
        ids = list(
            conn.execute(
                sa.text(
                    "select id from demo.customers where email like 'planted-%' order by id desc limit 2"
                )
            ).scalars()
        )
    for side, engine in (("source", source), ("target", target)):
        with engine.connect() as conn:
            got = conn.execute(
                sa.text(f"{CUSTOMER} where id = any(:i) order by id"), {"i": ids}
            ).all()
        shown = {r.id: r.name for r in got}
        print(
            f"[demo]   {side}: "
            + ", ".join(f"{i}: {shown.get(i, '(no row)')!r}" for i in sorted(ids))
        )


if __name__ == "__main__":
    main()
