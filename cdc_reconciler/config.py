"""Configuration: one pydantic-settings model, read only at the edge (the CLI).

Environment variables use the prefix ``CDCR_`` and ``__`` for nesting, for example
``CDCR_KAFKA__BOOTSTRAP_SERVERS``. An optional YAML file (``--config``) supplies the same keys plus
per-table mappings; environment variables win over the file.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cdc_reconciler.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    bootstrap_servers: str = "127.0.0.1:19092"
    group_id: str = "cdcr"
    # A regex of Debezium topics to consume: <prefix>.<schema>.<table>.
    topic_pattern: str = r"^cdc\.[^.]+\.[^.]+$"
    topic_prefix: str = "cdc"
    dead_letter_topic: str | None = None  # default: <topic_prefix>.cdcr.dlq
    connect_url: str = "http://127.0.0.1:18083"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    batch_size: int = Field(default=5000, ge=1)
    batch_timeout_s: float = Field(default=0.5, gt=0)
    # 1: a batch commits in one transaction. More: its partitions are committed in parallel, each
    # in its own transaction, on up to this many target connections (measured slower on a 2-core
    # machine; see stream/engine.py WRITERS and ApplyEngine.apply).
    apply_writers: int = Field(default=1, ge=1, le=16)
    # A crashed member keeps its partitions until this expires (broker minimum: 6000). 10 s
    # moves a dead member's partitions in ~10 s instead of librdkafka's 45 s; heartbeats come
    # from librdkafka's own thread, so a long batch never misses one (docs/operations.md).
    session_timeout_ms: int = Field(default=10000, ge=1000)
    # A third of the session timeout: three heartbeats may be lost before the member is dropped.
    heartbeat_interval_ms: int = Field(default=3000, ge=100)
    # Start-up: how long `cdcr run` waits for the broker before it fails (the whole start-up
    # check, database included, stays within 10 s).
    connect_timeout_s: float = Field(default=5.0, gt=0)

    def dlq_topic(self) -> str:
        return self.dead_letter_topic or f"{self.topic_prefix}.cdcr.dlq"


class DatabaseSettings(_Frozen):
    url: SecretStr = SecretStr("")
    # libpq connection settings for every connection the service opens (docs/operations.md):
    # a dead peer is noticed after idle + interval * count seconds of silence (keepalives), a
    # write nobody acknowledges after tcp_user_timeout_ms, an unreachable host after
    # connect_timeout_s.
    connect_timeout_s: int = Field(default=4, ge=1)
    keepalives_idle_s: int = Field(default=10, ge=1)
    keepalives_interval_s: int = Field(default=5, ge=1)
    keepalives_count: int = Field(default=3, ge=1)
    tcp_user_timeout_ms: int = Field(default=30000, ge=0)
    # Server-side bound on each of the service's own statements (0: none). A batch's merge
    # statement is the longest (about 1 s per 50k rows here); a statement past this is cancelled
    # and its batch retried. Keep it below health.stall_s, so a slow server is cancelled cleanly
    # before the watchdog drops the connection.
    statement_timeout_s: float = Field(default=60.0, ge=0)

    def url_str(self) -> str:
        """The URL every engine is built from: ``postgresql://`` and ``postgres://`` get the
        psycopg2 driver and a connect timeout (see :func:`engine_url`). Raises ConfigError."""
        return engine_url(self.url.get_secret_value())


# The one PostgreSQL driver: COPY goes through psycopg2's raw cursor
# (connectors/postgres/write.py), and SQLAlchemy's default driver for postgresql:// changed to
# psycopg 3 in 2.1, so it is chosen here, never by SQLAlchemy.
PG_DRIVER = "psycopg2"
# A refused or unroutable host fails within this many seconds instead of the OS's minutes.
PG_CONNECT_TIMEOUT_S = 10
_PG_SCHEMES = frozenset({"postgresql", "postgres", f"postgresql+{PG_DRIVER}"})


def engine_url(url: str) -> str:
    """Normalise a database URL: ``postgresql://``, ``postgres://`` and ``postgresql+psycopg2://``
    all become ``postgresql+psycopg2://`` with ``connect_timeout`` (unless given). Another
    PostgreSQL driver (``+psycopg``, ``+asyncpg`` ...) or a missing psycopg2 raises ConfigError;
    an empty URL stays empty and other schemes pass unchanged."""
    if not url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL: {exc}") from None
    scheme = u.drivername
    if not (scheme.startswith("postgres") and scheme.split("+", 1)[0] in _PG_SCHEMES):
        return url
    if scheme not in _PG_SCHEMES:
        raise ConfigError(
            f"database URL driver {scheme!r} is not supported: write postgresql://… "
            f"(cdcr uses {PG_DRIVER})"
        )
    require_driver()
    u = u.set(drivername=f"postgresql+{PG_DRIVER}")
    if "connect_timeout" not in u.query:
        u = u.update_query_dict({"connect_timeout": str(PG_CONNECT_TIMEOUT_S)})
    return u.render_as_string(hide_password=False)


def database_address(url: Any) -> str:
    """``HOST:PORT/DB`` of a SQLAlchemy URL, as connection failures name a database."""
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def connection_failure(exc: BaseException) -> str | None:
    """The one-line cause of a failed database connection (it names the host and the reason,
    e.g. ``connection to server at "db", port 5432 failed: Connection refused``), or None when
    ``exc`` is not a connection failure."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if not isinstance(exc, OperationalError | DBAPIError) or exc.orig is None:
        return None
    code = getattr(exc.orig, "pgcode", None)
    text = str(exc.orig).strip()
    # psycopg2 gives no SQLSTATE for failures before the session exists (refused, DNS, timeout,
    # authentication); 08xxx and 28xxx (invalid authorization) are connection failures too.
    if (code is None and isinstance(exc, OperationalError)) or str(code)[:2] in ("08", "28"):
        return text.splitlines()[0].strip() if text else type(exc.orig).__name__
    return None


def require_driver() -> None:
    try:
        import psycopg2  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the PostgreSQL driver {PG_DRIVER} cannot be imported ({exc}): "
            "pip install psycopg2-binary (or reinstall cdc-reconciler)"
        ) from None


class RedisSettings(_Frozen):
    url: SecretStr = SecretStr("redis://127.0.0.1:16379/0")
    # Processed change IDs live in per-hour sets that expire after this many seconds.
    id_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    # Processed IDs are kept per target database; default: derived from the target URL.
    namespace: str | None = None


class ReconcileSettings(_Frozen):
    window_s: int = Field(default=300, ge=1)
    grace_s: int = Field(default=30, ge=0)
    # Candidates of a diff are confirmed only once the group applied past the source read; wait
    # at most this long for it (reconcile/inflight.py), else they are deferred to the next pass.
    confirm_wait_s: float = Field(default=30.0, ge=0)
    # A key deferred as "in flight" for longer than this becomes a real discrepancy.
    deferred_bound_s: int = Field(default=600, ge=0)
    # Re-verifying history (docs/reconcile.md "Re-verifying history"): in continuous mode, each
    # window of the last ``reverify_horizon_s`` behind the watermark is checked again once its
    # last verification is older than ``reverify_every_s`` (oldest-verified first), at most
    # ``reverify_windows_per_pass`` windows per pass so live windows are never starved.
    # ``reverify_every_s = 0`` turns the background re-verification off.
    reverify_horizon_s: int = Field(default=7 * 86400, ge=0)
    reverify_every_s: int = Field(default=86400, ge=0)
    reverify_windows_per_pass: int = Field(default=12, ge=1)


class MetricsSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = 9464


class HealthSettings(_Frozen):
    """The progress watchdog of `cdcr run` and the bounds of /healthz and /readyz
    (docs/operations.md)."""

    # A batch in flight (records waiting) with nothing committed for this long is a stall: the
    # watchdog drops the batch's database connection and the batch is retried.
    stall_s: float = Field(default=90.0, gt=0)
    # The target unreachable this long makes /readyz, then /healthz, report it.
    target_down_unready_s: float = Field(default=15.0, ge=0)
    target_down_unhealthy_s: float = Field(default=600.0, ge=0)
    # The same for the Kafka broker.
    kafka_down_unready_s: float = Field(default=15.0, ge=0)
    kafka_down_unhealthy_s: float = Field(default=600.0, ge=0)


_INTERVAL_UNITS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
}


def interval_seconds(text: str) -> int:
    """``'1 day'``, ``'6 hours'``, ``'2 weeks'``: a fixed-length interval in seconds. Months and
    years are refused (their length varies, and partitions are cut by ``date_bin``, which only
    takes fixed-length strides). Raises ValueError."""
    parts = text.strip().lower().split()
    if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) < 1:
        raise ValueError(f"interval {text!r}: write it as '<count> <unit>', e.g. '1 day'")
    unit = parts[1].rstrip("s")
    if unit not in _INTERVAL_UNITS:
        raise ValueError(
            f"interval {text!r}: the unit must be one of {', '.join(_INTERVAL_UNITS)} "
            "(months and years vary in length and are not supported)"
        )
    return int(parts[0]) * _INTERVAL_UNITS[unit]


class PartitionBy(_Frozen):
    """Create the target as a table partitioned by RANGE on ``column`` (docs/partitioning.md):
    one partition per ``interval``, ``ahead`` of them made around now at creation, the others on
    demand when a row needs one."""

    column: str
    interval: str = "1 day"
    ahead: int = Field(default=3, ge=0, le=366)

    @field_validator("interval")
    @classmethod
    def _fixed_interval(cls, v: str) -> str:
        interval_seconds(v)
        return v


class Hypertable(_Frozen):
    """Create the target as a TimescaleDB hypertable on ``time_column`` (docs/partitioning.md)."""

    time_column: str
    chunk_interval: str = "7 days"

    @field_validator("chunk_interval")
    @classmethod
    def _fixed_interval(cls, v: str) -> str:
        interval_seconds(v)
        return v


def column_selected(
    column: str,
    include_columns: Collection[str] | None,
    exclude_columns: Collection[str],
    key_columns: Collection[str] = (),
) -> bool:
    """The one include/exclude rule of ``tables[...]`` (:class:`TableMapping`), for the apply
    engine, the table mirror and the reconciler alike: an excluded column is never carried; else
    a column is when ``include_columns`` is None (no include list), when it is listed there, or
    when it is a key column (a key is always carried unless excluded)."""
    if column in exclude_columns:
        return False
    return include_columns is None or column in include_columns or column in key_columns


class TableMapping(_Frozen):
    """How one source table maps to the target. Keys are ``<schema>.<table>`` of the source."""

    target: str | None = None  # "<schema>.<table>" in the target; default: same as source
    key_columns: list[str] | None = None
    include_columns: list[str] | None = None
    exclude_columns: list[str] = []
    change_time_column: str | None = None
    # "append": a table without a key whose changes are inserts only (docs/apply.md).
    mode: Literal["upsert", "append"] = "upsert"
    # Per-window checks of the reconciler (validated by cdc_reconciler.reconcile.checks):
    # {name, kind: sum, column, tolerance} or {name, kind: sql, source_sql, target_sql, expected}.
    checks: list[dict[str, Any]] = []
    # A time-partitioned target (docs/partitioning.md); at most one of the two.
    partition_by: PartitionBy | None = None
    hypertable: Hypertable | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_soft_delete(cls, data: Any) -> Any:
        if isinstance(data, dict) and "soft_delete_column" in data:
            raise ValueError(
                "soft_delete_column is not supported: a delete removes the target row and leaves a "
                "tombstone (docs/apply.md, 'Deletes'); remove the key from the table's mapping"
            )
        return data

    @model_validator(mode="after")
    def _one_partitioning(self) -> TableMapping:
        if self.partition_by is not None and self.hypertable is not None:
            raise ValueError("partition_by and hypertable exclude each other: choose one")
        return self

    @property
    def partition_column(self) -> str | None:
        if self.partition_by is not None:
            return self.partition_by.column
        if self.hypertable is not None:
            return self.hypertable.time_column
        return None


class Settings(BaseSettings):
    """The effective configuration. Nested groups: kafka, source, target, redis, reconcile."""

    model_config = SettingsConfigDict(
        env_prefix="CDCR_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    kafka: KafkaSettings = KafkaSettings()
    source: DatabaseSettings = DatabaseSettings()
    target: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    metrics: MetricsSettings = MetricsSettings()
    health: HealthSettings = HealthSettings()
    tables: dict[str, TableMapping] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first, then values passed in (the YAML file), so env always wins.
        return (env_settings, init_settings)

    def redacted(self) -> dict[str, Any]:
        """The configuration as plain data with every secret shown as ``**********``."""
        return self.model_dump(mode="json")


def load_settings(config_file: Path | None = None) -> Settings:
    """Read the configuration from the environment and the optional YAML file.

    Raises ConfigError with the offending keys when the file is unreadable or a value is invalid.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping at the top level")
        data = loaded
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration:\n{exc}") from exc
