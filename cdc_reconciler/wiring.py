"""The composition root: every database engine, Redis client and Kafka client the service uses is
built here from ``Settings``, once. Nothing else calls ``create_engine``, ``redis.Redis(...)`` or
builds a librdkafka configuration dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cdc_reconciler.config import DatabaseSettings, Settings, database_address
from cdc_reconciler.errors import ConfigError

if TYPE_CHECKING:
    import redis
    import sqlalchemy as sa
    from confluent_kafka import Consumer, Producer

    from cdc_reconciler.config import KafkaSettings
    from cdc_reconciler.connectors.kafka.admin import KafkaAdmin
    from cdc_reconciler.connectors.redis_ids import ProcessedIds

# SQLAlchemy, redis and confluent_kafka are imported inside the factories, so importing this module
# stays cheap for commands that never use them (`cdcr lag`'s one-shot path avoids SQLAlchemy).

# ---- databases and Redis (owned by the store/wiring work) -------------------------------------

# Redis is an optimisation: short timeouts so a slow Redis never stalls the apply loop.
REDIS_TIMEOUT_S = 2.0


def connect_args(db: DatabaseSettings, *, statement_timeout: bool) -> dict[str, Any]:
    """libpq settings for every connection (psycopg2): TCP keepalives so a peer that vanished
    without a reset is noticed, a user timeout for writes nobody acknowledges, a connect timeout,
    and optionally a statement timeout for the service's own statements."""
    args: dict[str, Any] = {
        "connect_timeout": db.connect_timeout_s,
        "keepalives": 1,
        "keepalives_idle": db.keepalives_idle_s,
        "keepalives_interval": db.keepalives_interval_s,
        "keepalives_count": db.keepalives_count,
        "application_name": "cdcr",
    }
    if db.tcp_user_timeout_ms:
        args["tcp_user_timeout"] = db.tcp_user_timeout_ms
    if statement_timeout and db.statement_timeout_s:
        args["options"] = f"-c statement_timeout={int(db.statement_timeout_s * 1000)}"
    return args


def require_url(db: DatabaseSettings, which: str) -> str:
    """The database's URL, or the one error for a missing one (``which``: "source"/"target")."""
    url = db.url_str()
    if not url:
        raise ConfigError(f"CDCR_{which.upper()}__URL is not set: no {which} URL configured")
    return url


def engine_for(
    db: DatabaseSettings, which: str, *, statement_timeout: bool = False, **kw: Any
) -> sa.Engine:
    """The one place an engine is created: pre-ping, and the libpq connection settings above
    (PostgreSQL URLs only; they mean nothing to other drivers)."""
    import sqlalchemy as sa

    url = require_url(db, which)
    args = connect_args(db, statement_timeout=statement_timeout)
    if not sa.engine.make_url(url).drivername.startswith("postgresql"):
        args = {}
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=args, **kw)
    _name_database_in_errors(engine, which)
    return engine


def _name_database_in_errors(engine: sa.Engine, which: str) -> None:
    """Mark every database error of ``engine`` with which database it is ("the target database
    at HOST:PORT/DB"), so a connection failure's ``FAILED:`` line says which one it could not
    reach (cli.common reads the mark)."""
    import sqlalchemy as sa

    where = f"{which} database at {database_address(engine.url)}"

    def mark(ctx: sa.engine.ExceptionContext) -> None:
        if ctx.sqlalchemy_exception is not None:
            ctx.sqlalchemy_exception.cdcr_database = where  # type: ignore[attr-defined]

    sa.event.listen(engine, "handle_error", mark)


def target_engine(settings: Settings, **kw: Any) -> sa.Engine:
    """The target database (also home of the service's ``cdcr.*`` tables)."""
    return engine_for(settings.target, "target", **kw)


def source_engine(settings: Settings, **kw: Any) -> sa.Engine:
    return engine_for(settings.source, "source", **kw)


def apply_target_engine(settings: Settings) -> sa.Engine:
    """The apply engine's target: a small pool and a statement timeout on its own statements."""
    # One connection per parallel partition transaction (kafka.apply_writers) and one for the loop.
    overflow = max(2, settings.kafka.apply_writers)
    return target_engine(settings, statement_timeout=True, pool_size=2, max_overflow=overflow)


def apply_source_engine(settings: Settings) -> sa.Engine | None:
    """The apply engine's source (re-reads TOASTed values), when one is configured."""
    if not settings.source.url_str():
        return None
    return source_engine(settings, pool_size=1)


def redis_client(settings: Settings) -> redis.Redis[bytes]:
    import redis

    return redis.Redis.from_url(
        settings.redis.url.get_secret_value(),
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )


def processed_ids(settings: Settings) -> ProcessedIds:
    """The Redis store of processed change IDs, namespaced per target database by default."""
    from cdc_reconciler.connectors.redis_ids import ProcessedIds, namespace_for

    return ProcessedIds(
        redis_client(settings),
        settings.redis.id_ttl_s,
        settings.redis.namespace or namespace_for(settings.target.url_str()),
    )


# ---- Kafka (owned by the Kafka-edge work; delegates to connectors.kafka.config) -------------------
# Kafka clients need only ``settings.kafka``. confluent_kafka is imported inside each factory, so
# importing this module stays cheap for commands that never talk to Kafka.


def kafka_consumer(
    kafka: KafkaSettings,
    *,
    group_id: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Consumer:
    """The apply consumer (live loop, replay, Faust probe); ``overrides`` add callbacks or
    one-off settings (connectors.kafka.config.consumer_config)."""
    from confluent_kafka import Consumer

    from cdc_reconciler.connectors.kafka.config import consumer_config

    return Consumer(consumer_config(kafka, group_id=group_id, overrides=overrides))


def kafka_producer(kafka: KafkaSettings) -> Producer:
    """The dead-letter producer."""
    from confluent_kafka import Producer

    from cdc_reconciler.connectors.kafka.config import producer_config

    return Producer(producer_config(kafka))


def kafka_admin(kafka: KafkaSettings, *, timeout_s: float | None = None) -> KafkaAdmin:
    """Read-only inspection and topic management; ``timeout_s`` bounds each request (default:
    connectors.kafka.admin.DEFAULT_TIMEOUT_S)."""
    from cdc_reconciler.connectors.kafka.admin import DEFAULT_TIMEOUT_S, KafkaAdmin
    from cdc_reconciler.connectors.kafka.config import admin_config

    return KafkaAdmin(admin_config(kafka), timeout_s=timeout_s or DEFAULT_TIMEOUT_S)
