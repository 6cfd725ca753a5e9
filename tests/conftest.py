"""Shared fixtures: the real services, and factories that give each test its own topics, tables
and connectors.

Endpoints come from the environment that ``scripts/stack env`` prints (the native stack). Without
it, a Docker engine is tried through testcontainers. Without either, service tests FAIL (never
skip) with the command that starts the services.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from cdc_reconciler.stream import command
from tests.helpers import settings_for
from tests.stream.pipeline import Pipeline, free_port

REPO = Path(__file__).resolve().parents[1]
START_HINT = 'start them with: scripts/stack up && eval "$(scripts/stack env)"'


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    connect_url: str
    source_url: str
    target_url: str
    redis_url: str
    # Where Kafka Connect reaches the source database, when that differs from source_url's host
    # (Connect in a container).
    connect_source_host: str | None = None
    connect_source_port: int | None = None


def _from_env() -> Services | None:
    names = ["KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CONNECT_URL", "SOURCE_DATABASE_URL",
             "TARGET_DATABASE_URL", "REDIS_URL"]
    if not all(os.environ.get(n) for n in names):
        return None
    return Services(*(os.environ[n] for n in names))


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    found = _from_env()
    if found is not None:
        yield found
        return
    if _docker_available():  # pragma: no cover - no Docker engine on the project's machines
        from tests.containers import compose_services

        with compose_services() as svc:
            yield svc
        return
    pytest.fail(f"the real services are not configured (no scripts/stack env, no Docker): {START_HINT}")


@pytest.fixture(scope="session")
def source_engine(services: Services) -> Iterator[sa.Engine]:
    engine = sa.create_engine(services.source_url, pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def migrated_target(services: Services) -> str:
    """The target database with the service tables at head (what `cdcr migrate` does)."""
    from cdc_reconciler import migrations
    from cdc_reconciler.config import DatabaseSettings, Settings

    settings = Settings.model_construct(target=DatabaseSettings(url=services.target_url))
    migrations.upgrade(settings, "head")
    return services.target_url


@pytest.fixture(scope="session")
def target_engine(services: Services, migrated_target: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(services.target_url, pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture()
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names unique to this test: lower-case, safe as SQL identifiers and topic parts."""
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:24].strip("_")
    tag = uuid.uuid4().hex[:6]

    def make(kind: str) -> str:
        return f"{kind}_{base}_{tag}"

    return make


@dataclass
class Connector:
    name: str
    topic_prefix: str
    tables: list[str]

    def topic(self, table: str) -> str:
        return f"{self.topic_prefix}.{table}"


@pytest.fixture()
def debezium(services: Services, source_engine: sa.Engine) -> Iterator[Callable[..., Connector]]:
    """Factory: register a Debezium PostgreSQL connector for tables of the source database, with
    its own slot, publication and topic prefix. Removed (and its slot dropped) after the test."""
    made: list[Connector] = []
    client = httpx.Client(base_url=services.connect_url, timeout=30)
    src = sa.engine.make_url(services.source_url)

    def register(tables: list[str], *, prefix: str | None = None, schemas: bool = True,
                 snapshot: str = "initial", extra: dict[str, str] | None = None) -> Connector:
        name = f"t{uuid.uuid4().hex[:10]}"
        prefix = prefix or f"cdc{name}"
        config = {
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "plugin.name": "pgoutput",
            "database.hostname": services.connect_source_host or src.host or "127.0.0.1",
            "database.port": str(services.connect_source_port or src.port or 5432),
            "database.user": src.username or "postgres",
            "database.password": src.password or "",
            "database.dbname": src.database or "source",
            "topic.prefix": prefix,
            "table.include.list": ",".join(tables),
            "slot.name": name,
            "publication.name": f"{name}_pub",
            "publication.autocreate.mode": "filtered",
            "snapshot.mode": snapshot,
            "tombstones.on.delete": "true",
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": str(schemas).lower(),
            "value.converter.schemas.enable": str(schemas).lower(),
            "poll.interval.ms": "100",
            **(extra or {}),
        }
        resp = client.put(f"/connectors/{name}/config", json=config)
        assert resp.status_code in (200, 201), resp.text
        connector = Connector(name, prefix, tables)
        made.append(connector)
        _wait_running(client, name)
        return connector

    yield register

    for c in made:
        client.delete(f"/connectors/{c.name}")
        _drop_slot(source_engine, c.name)
    client.close()


def _wait_running(client: httpx.Client, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        resp = client.get(f"/connectors/{name}/status")
        if resp.status_code == 200:
            body = resp.json()
            tasks = body.get("tasks", [])
            last = str(body)
            if any(t.get("state") == "FAILED" for t in tasks):
                pytest.fail(f"connector {name} failed: {tasks}")
            if tasks and all(t.get("state") == "RUNNING" for t in tasks):
                return
        time.sleep(0.3)
    pytest.fail(f"connector {name} not running after {timeout}s: {last}")


def _drop_slot(engine: sa.Engine, slot: str) -> None:
    # The slot outlives the connector and pins WAL; drop it once the connector let go of it.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with engine.begin() as conn:
            row = conn.execute(
                sa.text("select active from pg_replication_slots where slot_name = :s"), {"s": slot}
            ).first()
            if row is None:
                break
            if not row.active:
                conn.execute(sa.text("select pg_drop_replication_slot(:s)"), {"s": slot})
                break
        time.sleep(0.5)
    with engine.begin() as conn:
        conn.execute(sa.text(f'drop publication if exists "{slot}_pub"'))


# The apply-engine pipeline (one source table, its connector, topic and group), shared by the
# stream and reconcile service tests.
@pytest.fixture()
def pipeline(services, source_engine, target_engine, debezium, unique_name, monkeypatch) -> Pipeline:
    table = unique_name("t")
    with source_engine.begin() as conn:
        conn.execute(sa.text(
            f"create table public.{table} (id int primary key, name text not null, "
            "amount numeric(12,2), created timestamptz, payload jsonb, big text, flag boolean)"
        ))
        # Rows present before the connector starts arrive as snapshot reads (op r).
        conn.execute(sa.text(
            f"insert into public.{table} select g, 'snap' || g, g * 1.5, "
            "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', "
            "jsonb_build_object('g', g), repeat('x', 3000), g % 2 = 0 from generate_series(1, 20) g"
        ))
    connector = debezium([f"public.{table}"])
    env = {
        "KAFKA__TOPIC_PATTERN": rf"^{connector.topic_prefix}\.public\.{table}$",
        "KAFKA__TOPIC_PREFIX": connector.topic_prefix,
        "KAFKA__GROUP_ID": f"g_{table}",
        "KAFKA__BATCH_TIMEOUT_S": "0.2",
        "KAFKA__SESSION_TIMEOUT_MS": "6000",
        "METRICS__PORT": str(free_port()),
    }
    settings = settings_for(monkeypatch, **env)
    command.sync_tables(settings, [f"public.{table}"])
    yield Pipeline(table, connector.topic(f"public.{table}"), connector.topic_prefix, settings, env)
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists public.{table}"))
    with target_engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists public.{table}"))
        conn.execute(sa.text("delete from cdcr.tombstones where table_name = :t"),
                     {"t": f"public.{table}"})


