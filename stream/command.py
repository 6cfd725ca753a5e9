"""Library functions behind ``cdcr run`` and ``cdcr tables sync``: they build the engine's parts
from the settings and raise CdcrError on anything the user must fix."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from cdc_reconciler import wiring
from cdc_reconciler.config import Settings, TableMapping
from cdc_reconciler.connectors.kafka import check_reachable
from cdc_reconciler.connectors.redis_ids import ProcessedIds
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.store.schema import require_head
from cdc_reconciler.stream.dead_letters import DeadLetterSink
from cdc_reconciler.stream.engine import ApplyEngine
from cdc_reconciler.stream.errors import ApplyError
from cdc_reconciler.stream.metrics import Bounds, Dependency, Health, Metrics, serve
from cdc_reconciler.stream.runner import Runner, RunSummary
from cdc_reconciler.stream.tables import TableResolver

log = logging.getLogger(__name__)


@dataclass
class ConnectionWatch:
    """The target engine's open database connections, so the progress watchdog can drop a stuck
    one: a socket shut down from outside makes the blocked libpq call (a statement, or the
    pool's pre-ping) fail at once, and the engine retries the batch on a new connection. Idle
    pooled connections dropped with it are replaced by the pre-ping. Also follows the target's
    reachability: a connection error marks it down (the runner marks it up on a commit)."""

    state: Dependency
    _conns: dict[int, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, engine: sa.Engine) -> None:
        event.listen(engine, "connect", self._opened)
        for name in ("close", "close_detached"):
            event.listen(engine, name, self._closed)
        event.listen(engine, "invalidate", self._invalidated)
        event.listen(engine, "handle_error", self._error)

    def _opened(self, dbapi_conn: Any, _record: Any) -> None:
        with self._lock:
            self._conns[id(dbapi_conn)] = dbapi_conn
        self.state.mark_up()

    def _closed(self, dbapi_conn: Any, *_: Any) -> None:
        with self._lock:
            self._conns.pop(id(dbapi_conn), None)

    def _invalidated(self, dbapi_conn: Any, _record: Any, _exc: Any) -> None:
        self._closed(dbapi_conn)

    def _error(self, ctx: sa.engine.ExceptionContext) -> None:
        orig = ctx.original_exception
        code = str(getattr(orig, "pgcode", None) or "")
        # Connection failures (no SQLSTATE), class 08, and the server shutting down (57P*);
        # not a cancelled statement (57014, the statement timeout) nor bad data.
        unreachable = isinstance(ctx.sqlalchemy_exception, sa.exc.OperationalError) and (
            not code or code.startswith(("08", "57P"))
        )
        if ctx.is_disconnect or unreachable:
            first = str(orig).strip().splitlines()
            self.state.mark_down(first[0] if first else type(orig).__name__)

    def drop(self) -> int:
        """Shut down the socket of every open connection. Returns how many."""
        with self._lock:
            conns = list(self._conns.values())
        dropped = 0
        for c in conns:
            try:
                if c.closed:
                    continue
                with socket.socket(fileno=os.dup(c.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
                dropped += 1
            except Exception as exc:  # noqa: BLE001 - a connection closing under us is fine
                log.debug("could not drop a connection: %s", exc)
        return dropped


@dataclass
class EngineParts:
    engine: ApplyEngine
    target: sa.Engine
    source: sa.Engine | None
    ids: ProcessedIds
    metrics: Metrics


def build_engine(
    settings: Settings,
    *,
    create_missing: bool,
    group: str | None,
    stop: threading.Event,
    metrics: Metrics | None = None,
    use_redis: bool = True,
    kafka: Dependency | None = None,
) -> EngineParts:
    target = wiring.apply_target_engine(settings)
    require_head(target)
    source = wiring.apply_source_engine(settings)
    metrics = metrics or Metrics()
    kafka = kafka or Dependency("kafka", metrics.kafka_up)
    ids = wiring.processed_ids(settings)
    resolver = TableResolver(target, settings.tables, source=source, create_missing=create_missing)
    sink = DeadLetterSink(
        wiring.kafka_producer(settings.kafka), settings.kafka.dlq_topic(), stop=stop, kafka=kafka
    )
    engine = ApplyEngine(
        target=target,
        resolver=resolver,
        dead_letters=sink,
        ids=ids if use_redis else None,
        group=group,
        metrics=metrics,
        stop=stop,
        source=source,  # re-reads TOASTed values that have no target row (docs/apply.md)
        writers=settings.kafka.apply_writers,
    )
    return EngineParts(engine, target, source, ids, metrics)


def run(
    settings: Settings,
    *,
    create_missing: bool = False,
    stop_when_idle_s: float | None = None,
    serve_metrics: bool = True,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Run the consumer loop until stopped. See Runner.run for the stop conditions.

    Start-up checks the target (within its connect timeout) and the broker (within
    ``kafka.connect_timeout_s``) and raises CdcrError naming what it could not reach; once
    running, outages of either are waited out (docs/operations.md)."""
    stop = stop or threading.Event()
    metrics = Metrics()
    kafka = Dependency("kafka", metrics.kafka_up)
    target_state = Dependency("target", metrics.target_up)
    parts = build_engine(
        settings,
        create_missing=create_missing,
        group=settings.kafka.group_id,
        stop=stop,
        metrics=metrics,
        kafka=kafka,
    )
    watch = ConnectionWatch(target_state)
    watch.attach(parts.target)
    runner_ref: list[Runner] = []
    consumer = wiring.kafka_consumer(
        settings.kafka,
        # Served from the loop's consume(): broker down / fatal errors reach the runner.
        overrides={
            "error_cb": lambda err: runner_ref[0].kafka_error(err) if runner_ref else None,
            "on_commit": lambda err, parts: (
                runner_ref[0].committed(err, parts) if runner_ref else None
            ),
        },
    )
    try:
        check_reachable(
            consumer, settings.kafka.bootstrap_servers, settings.kafka.connect_timeout_s
        )
    except CdcrError:
        consumer.close()
        parts.ids.close()
        parts.target.dispose()
        if parts.source is not None:
            parts.source.dispose()
        raise
    runner = Runner(
        consumer=consumer,
        engine=parts.engine,
        target=parts.target,
        group=settings.kafka.group_id,
        topic_pattern=settings.kafka.topic_pattern,
        exclude_topics=frozenset({settings.kafka.dlq_topic()}),
        batch_size=settings.kafka.batch_size,
        batch_timeout_s=settings.kafka.batch_timeout_s,
        metrics=parts.metrics,
        stop=stop,
        kafka=kafka,
        target_state=target_state,
        stall_s=settings.health.stall_s,
        on_stall=watch.drop,
    )
    runner_ref.append(runner)
    server = None
    if serve_metrics:
        h = settings.health
        health = Health(
            progress=runner,
            kafka=kafka,
            target=target_state,
            redis_up=lambda: parts.ids.available,
            bounds=Bounds(
                stall_s=h.stall_s,
                target_unready_s=h.target_down_unready_s,
                target_unhealthy_s=h.target_down_unhealthy_s,
                kafka_unready_s=h.kafka_down_unready_s,
                kafka_unhealthy_s=h.kafka_down_unhealthy_s,
            ),
            stalls=lambda: runner.stalls,
        )
        try:
            server = serve(
                parts.metrics,
                settings.metrics.host,
                settings.metrics.port,
                health.liveness,
                health.readiness,
            )
        except OSError as exc:
            raise CdcrError(
                f"cannot serve metrics on {settings.metrics.host}:{settings.metrics.port}: {exc}"
            ) from exc
        log.info("metrics on http://%s:%d/metrics", settings.metrics.host, settings.metrics.port)
    try:
        return runner.run(stop_when_idle_s=stop_when_idle_s)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        parts.ids.close()
        parts.target.dispose()
        if parts.source is not None:
            parts.source.dispose()


def _schema_table(name: str, what: str) -> tuple[str, str]:
    schema, dot, table = name.partition(".")
    if not dot or not schema or not table:
        raise CdcrError(f"{what} {name!r}: write it as schema.table")
    return schema, table


def table_names(name: str, mapping: TableMapping) -> tuple[tuple[str, str], tuple[str, str]]:
    """The (schema, table) of a source table named "schema.table" and of its target: the
    mapping's ``target``, itself "schema.table", or else the same name. Raises CdcrError when
    either is not written schema.table (a bare name would otherwise be read as a schema)."""
    src = _schema_table(name, "table")
    if not mapping.target:  # unset or empty: the same name, as the apply engine reads it
        return src, src
    return src, _schema_table(mapping.target, f"table {name!r}: target")


def sync_tables(settings: Settings, tables: list[str], *, dry_run: bool = False) -> list[str]:
    """Create missing target tables mirroring the named source tables ("schema.table").
    Returns the DDL executed (or that would be, with dry_run). Raises CdcrError."""
    from cdc_reconciler.connectors.postgres.reflect import reflect_table
    from cdc_reconciler.stream.mirror import mirror_ddl

    # Every name and mapping is checked before anything is read or created.
    plan: list[tuple[tuple[str, str], tuple[str, str], TableMapping]] = []
    for name in tables or list(settings.tables):
        mapping = settings.tables.get(name, TableMapping())
        plan.append((*table_names(name, mapping), mapping))
    if not plan:
        raise CdcrError(
            "no tables to sync: name them (cdcr tables sync public.orders …) or list them under "
            "`tables:` in the config file (--config / CDCR_CONFIG_FILE); `cdcr run --create-missing` "
            "creates every table its topics carry"
        )
    target = wiring.target_engine(settings)
    source = wiring.source_engine(settings)
    done: list[str] = []
    try:
        for src, tgt, mapping in plan:
            found = reflect_table(target, *tgt, mapping.key_columns, allow_keyless=True)
            if found is not None:
                continue
            try:
                ddl = mirror_ddl(source, src, tgt, mapping)
            except ApplyError as exc:
                raise CdcrError(exc.message) from exc
            done.append(ddl)
            if not dry_run:
                resolver = TableResolver(
                    target, settings.tables, source=source, create_missing=True
                )
                resolver.create_table(src, tgt, mapping)
    finally:
        target.dispose()
        source.dispose()
    return done
