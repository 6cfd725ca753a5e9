"""Shared fixtures: the real services, and factories that give each test its own topics, tables
and connectors.

Endpoints come from the environment that ``scripts/stack env`` prints (the native stack). Without
it, a Docker engine is tried through testcontainers. Without either, service tests FAIL (never
skip) with the command that starts the services.

Isolation by construction: one test session works in its own databases (``cdcr_test_<id>_source``
and ``cdcr_test_<id>_target``, created at session start, migrated once), its own Redis DB number,
and names its topics, consumer groups, connectors and replication slots with ``SESSION_TAG``
(``unique_name`` and the fixtures put it in every name). The ``CDCR_*`` and ``*_URL`` variables of
the process are pointed at these, so code under test that reads the environment cannot reach the
stack's own ``source``/``target`` databases, the demo's Redis DB or its consumer group. At session
end everything carrying the tag is removed (connectors, slots, topics, groups, Redis DB, databases
``WITH (FORCE)``); a session that was killed before that is swept by the next one, which removes
the leftovers of every session whose lock (a PostgreSQL advisory lock the session holds while it
runs) is free. Sessions running at the same time against the same stack do not touch each other.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
import sqlalchemy as sa
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from cdc_reconciler.stream import command
from tests.helpers import (
    DB_RE,
    SESSION_ID,
    SESSION_TAG,
    TAG_RE,
    forget_table,
    session_db,
    settings_for,
)
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
    names = [
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_CONNECT_URL",
        "SOURCE_DATABASE_URL",
        "TARGET_DATABASE_URL",
        "REDIS_URL",
    ]
    if not all(os.environ.get(n) for n in names):
        return None
    kafka, connect, source, target, redis_url = (os.environ[n] for n in names)
    return Services(kafka, connect, source, target, redis_url)


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The stack's endpoints, with this session's own databases and Redis DB in the URLs."""
    found = _from_env()
    if found is not None:
        with own_session(found) as svc:
            yield svc
        return
    if _docker_available():  # pragma: no cover - no Docker engine on the project's machines
        from tests.containers import compose_services

        with compose_services() as stack, own_session(stack) as svc:
            yield svc
        return
    pytest.fail(
        f"the real services are not configured (no scripts/stack env, no Docker): {START_HINT}"
    )


# ---------------------------------------------------------------- one session's own resources
# Names of the PostgreSQL variables `scripts/stack env` exports, by database role.
DB_VARS = {
    "source": ("SOURCE_DATABASE_URL", "CDCR_SOURCE__URL"),
    "target": ("TARGET_DATABASE_URL", "CDCR_TARGET__URL"),
}
REDIS_VARS = ("REDIS_URL", "CDCR_REDIS__URL")
# The session's lock: pg_advisory_lock(LOCK_CLASS, int(session id, 16)) in the `postgres`
# database of the source server, held on one connection for the whole session.
LOCK_CLASS = 0x63647274
# A session's Redis DB number n is claimed by holding pg_advisory_lock(REDIS_LOCK_CLASS, n) on
# the same connection (released when the session ends or dies), not by a key in Redis, which a
# FLUSHDB elsewhere could erase. REDIS_OWNER, inside DB n, names the session that used it, so a
# dead session's DB is found and emptied by the sweep.
REDIS_LOCK_CLASS = 0x63647272
REDIS_OWNER = "cdcr_test:owner"
# The first version of this mechanism claimed DB n with this key (+ n) in DB 0; sessions running
# it may still be about: their DBs are left alone, and their keys swept when they are dead.
LEGACY_CLAIM = "cdcr_test:redis_db:"
BENCH_REDIS_DBS = range(10, 14)  # bench/apply.py REDIS_DB: fixed numbers it flushes


def pytest_configure(config: pytest.Config) -> None:
    """Point the process's database URLs at this session's databases before any test runs, and
    give settings a session-only default group and topic prefix, so nothing a test starts can
    write to the stack's `source`/`target` databases or join the demo's `cdcr` group. (The
    databases themselves are created by the `services` fixture, first thing it does.)"""
    for role, names in DB_VARS.items():
        for name in names:
            if os.environ.get(name):
                os.environ[name] = _with_database(os.environ[name], session_db(SESSION_ID, role))
    # Unconditionally: a shell that ran the demo may have exported the demo's own values.
    os.environ["CDCR_KAFKA__GROUP_ID"] = f"{SESSION_TAG}-default"
    os.environ["CDCR_KAFKA__TOPIC_PREFIX"] = f"cdc{SESSION_TAG}"


def _with_database(url: str, database: str) -> str:
    return sa.engine.make_url(url).set(database=database).render_as_string(hide_password=False)


def _admin_engine(url: str) -> sa.Engine:
    """AUTOCOMMIT engine on the `postgres` maintenance database of the server of ``url``."""
    return sa.create_engine(
        _with_database(url, "postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )


@contextmanager
def own_session(stack: Services) -> Iterator[Services]:
    """Sweep dead sessions' leftovers, create this session's databases and claim a Redis DB;
    on exit remove everything this session made, whatever happened in between."""
    src_admin = _admin_engine(stack.source_url)
    tgt_admin = _admin_engine(stack.target_url)
    lock = src_admin.connect()
    try:
        lock.execute(
            sa.text("select pg_advisory_lock(:c, :o)"), {"c": LOCK_CLASS, "o": int(SESSION_ID, 16)}
        )
        sweep = Sweeper(stack, src_admin, tgt_admin)
        stale = sweep.dead_sessions()
        if stale:
            sweep.remove(stale)
        svc = replace(
            stack,
            source_url=_with_database(stack.source_url, session_db(SESSION_ID, "source")),
            target_url=_with_database(stack.target_url, session_db(SESSION_ID, "target")),
        )
        claimed = ""
        try:
            for admin, role in ((src_admin, "source"), (tgt_admin, "target")):
                with admin.connect() as conn:
                    conn.execute(sa.text(f'create database "{session_db(SESSION_ID, role)}"'))
            svc = replace(svc, redis_url=_claim_redis_db(stack.redis_url, lock))
            claimed = svc.redis_url
            for role, url in (("source", svc.source_url), ("target", svc.target_url)):
                for name in DB_VARS[role]:
                    os.environ[name] = url
            for name in REDIS_VARS:
                os.environ[name] = svc.redis_url
            yield svc
        finally:
            if claimed:  # directly: a test may have flushed the owner mark away with the rest
                r = redis.Redis.from_url(claimed)
                r.flushdb()
                r.close()
            sweep.remove({SESSION_ID})
    finally:
        lock.close()
        src_admin.dispose()
        tgt_admin.dispose()


def _redis_url_with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _redis_dbs(url: str) -> list[int]:
    """The DB numbers a test session may use, from the top down (scripts/stack starts Redis with
    64 DBs): never DB 0 (the stack's, the demo's) nor the benchmark's fixed DBs."""
    base = redis.Redis.from_url(url)
    try:
        count = int(base.config_get("databases").get("databases", 16))
    except redis.ResponseError:  # CONFIG disabled: assume the default
        count = 16
    finally:
        base.close()
    return [db for db in range(count - 1, 0, -1) if db not in BENCH_REDIS_DBS]


def _claim_redis_db(url: str, lock: sa.Connection) -> str:
    """A Redis DB number no other live session uses, emptied before use (tests may FLUSHDB it)
    and marked with this session's id. A DB holding data without a test session's mark belongs
    to someone else and is never taken."""
    dbs = _redis_dbs(url)
    base = redis.Redis.from_url(url)
    try:
        for db in dbs:
            if base.exists(f"{LEGACY_CLAIM}{db}"):
                continue
            params = {"c": REDIS_LOCK_CLASS, "o": db}
            if not lock.execute(sa.text("select pg_try_advisory_lock(:c, :o)"), params).scalar():
                continue
            claimed = _redis_url_with_db(url, db)
            r = redis.Redis.from_url(claimed)
            try:
                if r.dbsize() and not r.exists(REDIS_OWNER):
                    lock.execute(sa.text("select pg_advisory_unlock(:c, :o)"), params)
                    continue
                r.flushdb()  # a dead session's leftovers, if any
                r.set(REDIS_OWNER, SESSION_ID)
            finally:
                r.close()
            return claimed
    finally:
        base.close()
    pytest.fail(f"every Redis DB of {dbs} at {url} is in use by someone else")


class Sweeper:
    """The one cleanup mechanism: finds what test sessions left on the shared services by the
    marks in the names (TAG_RE, DB_RE) and in Redis (REDIS_OWNER) and removes it, session by session."""

    def __init__(self, stack: Services, src_admin: sa.Engine, tgt_admin: sa.Engine) -> None:
        self.stack = stack
        self.src_admin = src_admin
        self.tgt_admin = tgt_admin

    # -- what is there
    def _databases(self, admin: sa.Engine) -> list[str]:
        with admin.connect() as conn:
            return list(conn.execute(sa.text("select datname from pg_database")).scalars())

    def _slots(self) -> list[tuple[str, str | None]]:
        with self.src_admin.connect() as conn:
            return [
                (r.slot_name, r.database)
                for r in conn.execute(
                    sa.text("select slot_name, database from pg_replication_slots")
                )
            ]

    def _connectors(self) -> list[str]:
        resp = httpx.get(f"{self.stack.connect_url}/connectors", timeout=30)
        resp.raise_for_status()
        return list(resp.json())

    def _kafka(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.stack.kafka_bootstrap})

    def _topics(self, admin: AdminClient) -> list[str]:
        return list(admin.list_topics(timeout=30).topics)

    def _groups(self, admin: AdminClient) -> list[str]:
        listed = admin.list_consumer_groups(request_timeout=30).result()
        return [g.group_id for g in listed.valid]

    def _claims(self) -> dict[int, str]:
        """Redis DB number -> the test session that used it (its REDIS_OWNER mark)."""
        owners: dict[int, str] = {}
        for db in _redis_dbs(self.stack.redis_url):
            r = redis.Redis.from_url(_redis_url_with_db(self.stack.redis_url, db))
            try:
                owner = r.get(REDIS_OWNER)
            finally:
                r.close()
            if owner:
                owners[db] = owner.decode()
        return owners

    def _legacy_claims(self) -> dict[str, str]:
        """DB-0 claim keys of the first version of this mechanism -> the session that set them."""
        r = redis.Redis.from_url(self.stack.redis_url)
        try:
            keys = [k.decode() for k in r.scan_iter(match=f"{LEGACY_CLAIM}*")]
            return {k: (r.get(k) or b"").decode() for k in keys}
        finally:
            r.close()

    def sessions_found(self) -> set[str]:
        """Ids of every session that has anything on the services, this one included."""
        names: list[str] = [*self._connectors(), *(s for s, _ in self._slots())]
        kafka = self._kafka()
        names += self._topics(kafka) + self._groups(kafka)
        found = {m.group(1) for n in names for m in TAG_RE.finditer(n)}
        for admin in (self.src_admin, self.tgt_admin):
            found |= {m.group(1) for d in self._databases(admin) if (m := DB_RE.match(d))}
        found |= set(self._claims().values()) | set(self._legacy_claims().values())
        return found

    def alive(self, sid: str) -> bool:
        """Whether session ``sid`` still runs: it holds its advisory lock while it does."""
        with self.src_admin.connect() as conn:
            got = conn.execute(
                sa.text("select pg_try_advisory_lock(:c, :o)"), {"c": LOCK_CLASS, "o": int(sid, 16)}
            ).scalar()
            if got:
                conn.execute(
                    sa.text("select pg_advisory_unlock(:c, :o)"),
                    {"c": LOCK_CLASS, "o": int(sid, 16)},
                )
        return not got

    def dead_sessions(self) -> set[str]:
        return {sid for sid in self.sessions_found() if sid != SESSION_ID and not self.alive(sid)}

    # -- removal, in dependency order: connectors hold slots, slots hold their database
    def remove(self, sids: set[str]) -> None:
        """Remove everything of sessions ``sids``. Every step runs even when one fails; the
        failures are raised together at the end (loud, never swallowed)."""

        def ours(name: str) -> bool:
            return any(m.group(1) in sids for m in TAG_RE.finditer(name))

        our_dbs = {session_db(sid, role) for sid in sids for role in ("source", "target")}
        failures: list[str] = []

        def step(what: str, action: Callable[[], None]) -> None:
            try:
                action()
            except Exception as e:  # noqa: BLE001 - collected and raised below
                failures.append(f"{what}: {type(e).__name__}: {e}")

        def connectors() -> None:
            with httpx.Client(base_url=self.stack.connect_url, timeout=30) as client:
                for name in filter(ours, self._connectors()):
                    resp = client.delete(f"/connectors/{name}")
                    if resp.status_code not in (204, 404):
                        raise RuntimeError(
                            f"DELETE connector {name}: {resp.status_code} {resp.text}"
                        )

        def slots() -> None:
            for slot, database in self._slots():
                if database and (ours(slot) or database in our_dbs):
                    engine = sa.create_engine(
                        self.src_admin.url.set(database=database),
                        isolation_level="AUTOCOMMIT",
                        poolclass=sa.pool.NullPool,
                    )
                    try:
                        _drop_slot(engine, slot)
                    finally:
                        engine.dispose()

        def topics() -> None:
            kafka = self._kafka()
            names = [t for t in self._topics(kafka) if ours(t)]
            if names:
                _wait_all(kafka.delete_topics(names, operation_timeout=30))

        def groups() -> None:
            kafka = self._kafka()
            names = [g for g in self._groups(kafka) if ours(g)]
            if names:
                _wait_all(kafka.delete_consumer_groups(names, request_timeout=30))

        def redis_dbs() -> None:
            for db, owner in self._claims().items():
                if owner in sids:
                    r = redis.Redis.from_url(_redis_url_with_db(self.stack.redis_url, db))
                    r.flushdb()
                    r.close()
            for key, owner in self._legacy_claims().items():
                if owner in sids:
                    base = redis.Redis.from_url(self.stack.redis_url)
                    base.delete(key)
                    base.close()

        def databases() -> None:
            for admin in (self.src_admin, self.tgt_admin):
                for database in self._databases(admin):
                    if database in our_dbs:
                        with admin.connect() as conn:
                            conn.execute(
                                sa.text(f'drop database if exists "{database}" with (force)')
                            )

        step("connectors", connectors)
        step("replication slots", slots)
        step("topics", topics)
        step("consumer groups", groups)
        step("redis", redis_dbs)
        step("databases", databases)
        if failures:
            raise RuntimeError(
                f"cleanup of test session(s) {sorted(sids)} incomplete: " + "; ".join(failures)
            )


def _wait_all(futures: dict[str, Future[object]]) -> None:
    gone = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.GROUP_ID_NOT_FOUND}
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as e:  # already gone is fine; anything else is loud
            if e.args[0].code() not in gone:
                raise RuntimeError(f"could not remove {name}: {e}") from e


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

    settings = Settings.model_construct(target=DatabaseSettings(url=SecretStr(services.target_url)))
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
    # The session tag marks the name as this session's, for the session-end cleanup.
    tag = f"{SESSION_TAG}{uuid.uuid4().hex[:4]}"

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

    def register(
        tables: list[str],
        *,
        prefix: str | None = None,
        schemas: bool = True,
        snapshot: str = "initial",
        extra: dict[str, str] | None = None,
    ) -> Connector:
        name = f"{SESSION_TAG}_{uuid.uuid4().hex[:8]}"  # also the slot's name: [a-z0-9_]
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
    """Drop a logical slot (``engine`` is on the slot's database) and its publication. The slot
    outlives the connector and pins WAL; drop it once the connector let go of it, and end the
    walsender that still holds it after 30 s (its connector is gone by then)."""
    deadline = time.monotonic() + 30
    while True:
        with engine.begin() as conn:
            row = conn.execute(
                sa.text("select active, active_pid from pg_replication_slots where slot_name = :s"),
                {"s": slot},
            ).first()
            if row is None:
                break
            if not row.active:
                conn.execute(sa.text("select pg_drop_replication_slot(:s)"), {"s": slot})
                break
            if time.monotonic() > deadline:
                conn.execute(sa.text("select pg_terminate_backend(:p)"), {"p": row.active_pid})
                deadline = time.monotonic() + 30
        time.sleep(0.5)
    with engine.begin() as conn:
        conn.execute(sa.text(f'drop publication if exists "{slot}_pub"'))


# The apply-engine pipeline (one source table, its connector, topic and group), shared by the
# stream and reconcile service tests.
@pytest.fixture()
def pipeline(
    services: Services,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    debezium: Callable[..., Connector],
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Pipeline]:
    table = unique_name("t")
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"create table public.{table} (id int primary key, name text not null, "
                "amount numeric(12,2), created timestamptz, payload jsonb, big text, flag boolean)"
            )
        )
        # Rows present before the connector starts arrive as snapshot reads (op r).
        conn.execute(
            sa.text(
                f"insert into public.{table} select g, 'snap' || g, g * 1.5, "
                "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', "
                "jsonb_build_object('g', g), repeat('x', 3000), g % 2 = 0 from generate_series(1, 20) g"
            )
        )
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
    forget_table(target_engine, f"public.{table}", env["KAFKA__GROUP_ID"])
