"""Library functions behind ``cdcr run`` and ``cdcr tables sync``: they build the engine's parts
from the settings and raise CdcrError on anything the user must fix."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import sqlalchemy as sa

from cdc_reconciler.config import Settings
from cdc_reconciler.connectors.kafka import make_consumer, make_producer
from cdc_reconciler.connectors.redis_ids import ProcessedIds, namespace_for
from cdc_reconciler.errors import CdcrError, ConfigError
from cdc_reconciler.stream.dead_letters import DeadLetterSink
from cdc_reconciler.stream.engine import ApplyEngine
from cdc_reconciler.stream.metrics import Metrics, serve
from cdc_reconciler.stream.runner import Runner, RunSummary
from cdc_reconciler.stream.tables import ApplyError, TableResolver

log = logging.getLogger(__name__)

# A healthy loop polls at least this often; /healthz reports 503 past it.
HEALTH_STALL_S = 120.0


def target_engine(settings: Settings) -> sa.Engine:
    url = settings.target.url_str()
    if not url:
        raise ConfigError("CDCR_TARGET__URL is not set")
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


def source_engine(settings: Settings) -> sa.Engine | None:
    url = settings.source.url_str()
    return sa.create_engine(url, pool_pre_ping=True, pool_size=1) if url else None


def check_migrated(engine: sa.Engine) -> None:
    try:
        with engine.connect() as conn:
            ok = conn.execute(sa.text("select to_regclass('cdcr.applied_offsets')")).scalar()
    except sa.exc.OperationalError as exc:
        raise CdcrError(f"cannot reach the target database: {exc.orig}") from exc
    if ok is None:
        raise CdcrError("the service tables are missing in the target: run `cdcr migrate` first")


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
) -> EngineParts:
    target = target_engine(settings)
    check_migrated(target)
    source = source_engine(settings)
    metrics = metrics or Metrics()
    ids = ProcessedIds.from_url(
        settings.redis.url.get_secret_value(),
        settings.redis.id_ttl_s,
        settings.redis.namespace or namespace_for(settings.target.url_str()),
    )
    resolver = TableResolver(target, settings.tables, source=source, create_missing=create_missing)
    sink = DeadLetterSink(make_producer(settings.kafka), settings.kafka.dlq_topic())
    engine = ApplyEngine(
        target=target,
        resolver=resolver,
        dead_letters=sink,
        ids=ids if use_redis else None,
        group=group,
        metrics=metrics,
        stop=stop,
        source=source,  # re-reads TOASTed values that have no target row (docs/apply.md)
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
    """Run the consumer loop until stopped. See Runner.run for the stop conditions."""
    stop = stop or threading.Event()
    parts = build_engine(
        settings, create_missing=create_missing, group=settings.kafka.group_id, stop=stop
    )
    consumer = make_consumer(settings.kafka)
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
    )
    server = None
    if serve_metrics:

        def healthy() -> tuple[bool, str]:
            import time

            stalled = time.monotonic() - runner.last_loop
            if stalled > HEALTH_STALL_S:
                return False, f"consumer loop stalled for {stalled:.0f}s"
            redis = "redis ok" if parts.ids.available else "redis DOWN (running without dedup)"
            return True, f"ok; {len(runner.assigned)} partitions; {redis}"

        try:
            server = serve(parts.metrics, settings.metrics.host, settings.metrics.port, healthy)
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


def sync_tables(settings: Settings, tables: list[str], *, dry_run: bool = False) -> list[str]:
    """Create missing target tables mirroring the named source tables ("schema.table").
    Returns the DDL executed (or that would be, with dry_run). Raises CdcrError."""
    from cdc_reconciler.config import TableMapping
    from cdc_reconciler.connectors.target import reflect_table
    from cdc_reconciler.stream.tables import mirror_ddl

    target = target_engine(settings)
    source = source_engine(settings)
    if source is None:
        raise ConfigError("CDCR_SOURCE__URL is not set: tables are mirrored from the source")
    done: list[str] = []
    try:
        for name in tables or list(settings.tables):
            if "." not in name:
                raise CdcrError(f"table {name!r}: write it as schema.table")
            schema, table = name.split(".", 1)
            mapping = settings.tables.get(name, TableMapping())
            tgt = tuple(mapping.target.split(".", 1)) if mapping.target else (schema, table)
            if reflect_table(target, *tgt, mapping.key_columns, allow_keyless=True) is not None:
                continue
            try:
                ddl = mirror_ddl(source, (schema, table), (tgt[0], tgt[1]), mapping)
            except ApplyError as exc:
                raise CdcrError(exc.message) from exc
            done.append(ddl)
            if not dry_run:
                resolver = TableResolver(
                    target, settings.tables, source=source, create_missing=True
                )
                resolver.create_table((schema, table), (tgt[0], tgt[1]), mapping)
    finally:
        target.dispose()
        source.dispose()
    return done
