"""Shared pieces of the apply-engine service tests: one source table with its Debezium
connector, topic and consumer group per test, the traffic it receives, and comparisons."""

from __future__ import annotations

import contextlib
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.config import Settings
from cdc_reconciler.stream import command
from tests.helpers import count_records, rows, wait_for

COLUMNS = "id, name, amount, created, payload::text, big, flag"


def free_port(span: int = 3) -> int:
    """A port that is free now, with the ``span - 1`` ports after it free too (`cdcr run` serves
    metrics on PORT, the Faust worker its web on PORT + 1, reconcile on PORT + 2), chosen below
    the kernel's ephemeral range: a port from the ephemeral range (bind to 0) may be taken
    moments later by any outgoing connection, which once failed the Faust test with "address
    already in use" on PORT + 1."""
    lo, _hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        port = random.randrange(20_000, max(20_001, lo - span))
        try:
            with contextlib.ExitStack() as stack:
                for p in range(port, port + span):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port run found below the ephemeral range")


@dataclass
class Pipeline:
    table: str
    topic: str
    prefix: str
    settings: Settings
    env: dict[str, str]

    @property
    def qualified(self) -> str:
        return f"public.{self.table}"


def source_traffic(engine: sa.Engine, table: str) -> None:
    """Inserts, updates (one leaving the TOASTed column unchanged), deletes, a key change."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"insert into public.{table} select g, 'new' || g, g * 2.25, now(), "
                "jsonb_build_object('n', g, 'a', array[1,2]), repeat('y', 5000), true "
                "from generate_series(21, 60) g"
            )
        )
    for i in range(5):
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"update public.{table} set name = name || '-u{i}', "
                    f"amount = amount + 1 where id % 7 = {i}"
                )
            )
    with engine.begin() as conn:
        conn.execute(sa.text(f"delete from public.{table} where id in (3, 4, 30)"))
        conn.execute(sa.text(f"update public.{table} set id = 1000 where id = 5"))
        conn.execute(sa.text(f"insert into public.{table} (id, name) values (3, 'reborn')"))


def expected_records(p: Pipeline, services: Any, n: int) -> None:
    wait_for(
        f"{n} records in {p.topic}", lambda: count_records(services.kafka_bootstrap, p.topic) >= n
    )


def target_matches_source(p: Pipeline, source: sa.Engine, target: sa.Engine) -> None:
    assert rows(target, p.qualified, COLUMNS) == rows(source, p.qualified, COLUMNS)


def applied_counts(target: sa.Engine, group: str) -> dict[str, int]:
    with target.connect() as conn:
        r = conn.execute(
            sa.text(
                "select sum(consumed) consumed, sum(applied) applied, sum(skipped_duplicate) dup, "
                "sum(skipped_stale) stale, sum(dead_lettered) dlq, sum(skipped_noop) noop, "
                "max(next_offset) next_offset from cdcr.applied_offsets where consumer_group = :g"
            ),
            {"g": group},
        ).one()
    return {k: int(v or 0) for k, v in r._mapping.items()}


# Records source_traffic produces after the 20 snapshot reads: 40 inserts, 44 updates
# (ids 1..60 with id % 7 in 0..4), 3 deletes + 3 tombstones, a key change (delete + tombstone +
# create) and 1 insert.
TRAFFIC_RECORDS = 20 + 40 + 44 + 6 + 3 + 1


def run_until_idle(settings: Settings, idle: float = 3.0) -> Any:
    return command.run(settings, stop_when_idle_s=idle, serve_metrics=False)
