"""Thin wrappers over confluent-kafka for the apply engine: consumer and producer configs built
from the settings, and a plain ``Record`` the engine works on (so replay and the Faust agent can
feed the same engine). Kafka errors keep their error code when wrapped."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from cdc_reconciler.config import KafkaSettings
from cdc_reconciler.errors import CdcrError

# How long a synchronous offset commit or a DLQ flush may take before we call Kafka unhealthy.
COMMIT_TIMEOUT_S = 30.0
FLUSH_TIMEOUT_S = 30.0
# The periodic topic refresh of the running loop: short, so a broker outage never holds the loop
# (and its health) for long; a timeout is transient and retried at the next refresh.
METADATA_TIMEOUT_S = 5.0
# The largest record the dead-letter producer sends (librdkafka's and the broker's default
# message.max.bytes is ~1 MB). A bigger record's value is trimmed to fit (docs/operations.md).
PRODUCER_MAX_BYTES = 1_000_000
# Records up to this size are fetched (the broker returns an oversized first record anyway,
# KIP-74; librdkafka refuses responses above receive.message.max.bytes).
RECEIVE_MAX_BYTES = 128 * 1024 * 1024

# Errors that no wait will fix: credentials, permissions, a broken client. Everything else
# (transport failures, all brokers down, timeouts, coordinator moves) is transient: back off,
# report Kafka down, retry.
_FATAL_CODES = frozenset(
    getattr(KafkaError, name)
    for name in (
        "_AUTHENTICATION",
        "SASL_AUTHENTICATION_FAILED",
        "TOPIC_AUTHORIZATION_FAILED",
        "GROUP_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        "_INVALID_ARG",
        "_UNKNOWN_PROTOCOL",
        "_UNSUPPORTED_FEATURE",
        "_SSL",
        "_FATAL",
    )
    if hasattr(KafkaError, name)
)


def is_fatal(error: KafkaError | None) -> bool:
    """True for errors that end the process (authentication, authorisation, librdkafka fatal);
    False for everything a broker outage causes, which callers wait out."""
    if error is None:
        return False
    return bool(error.fatal()) or error.code() in _FATAL_CODES


def error_of(exc: KafkaException) -> KafkaError | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


class _Demoted(logging.LoggerAdapter):  # type: ignore[type-arg]
    """librdkafka's own log lines (one per reconnect attempt during an outage) at DEBUG: the
    loop reports the broker's state once per change (docs/operations.md); -v shows them."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self.logger.log(logging.DEBUG, msg, *args, **kwargs)


def _client_logger() -> logging.LoggerAdapter:  # type: ignore[type-arg]
    return _Demoted(logging.getLogger("cdc_reconciler.librdkafka"), {})


class KafkaCallError(CdcrError):
    """A Kafka call failed; ``code`` is the librdkafka error code (KafkaError.code())."""

    def __init__(self, what: str, error: KafkaError | None) -> None:
        self.code = error.code() if error is not None else None
        super().__init__(f"{what}: {error.str() if error is not None else 'unknown error'}")


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None

    @classmethod
    def from_message(cls, msg: Message) -> Record:
        # The Kafka timestamp is not needed on the apply path (event time comes from the event).
        return cls(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())  # type: ignore[arg-type]


def _security(settings: KafkaSettings) -> dict[str, Any]:
    if settings.sasl_username is None:
        return {}
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": settings.sasl_username,
        "sasl.password": settings.sasl_password.get_secret_value()
        if settings.sasl_password
        else "",
    }


def consumer_config(settings: KafkaSettings, *, group_id: str | None = None) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": group_id or settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        # The prefetch queue bounds worker memory; when it is full librdkafka waits
        # fetch.queue.backoff.ms (default 1 s!) before fetching again, which starved batches of
        # schema-envelope events (~4 KB each). Short backoff, larger fetches, bounded queue.
        "fetch.min.bytes": 1,
        "queued.max.messages.kbytes": 32768,
        "fetch.queue.backoff.ms": 10,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "receive.message.max.bytes": RECEIVE_MAX_BYTES,
        # Failover in seconds, not 45 s: see KafkaSettings.session_timeout_ms.
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": min(
            settings.heartbeat_interval_ms, settings.session_timeout_ms // 3
        ),
        "max.poll.interval.ms": 600000,
        **_security(settings),
    }


def make_consumer(
    settings: KafkaSettings, *, group_id: str | None = None, extra: dict[str, Any] | None = None
) -> Consumer:
    config = {**consumer_config(settings, group_id=group_id), "logger": _client_logger()}
    return Consumer({**config, **(extra or {})})


def make_producer(settings: KafkaSettings) -> Producer:
    return Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.max.bytes": PRODUCER_MAX_BYTES,
            "logger": _client_logger(),
            **_security(settings),
        }
    )


def raise_for(what: str, exc: KafkaException) -> None:
    raise KafkaCallError(what, error_of(exc)) from exc


def check_reachable(consumer: Consumer, bootstrap: str, timeout_s: float) -> None:
    """Start-up check: fetch the cluster metadata within ``timeout_s`` or raise CdcrError naming
    the bootstrap address (a wrong address would otherwise only show in librdkafka's logs)."""
    try:
        consumer.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        err = error_of(exc)
        detail = err.str() if err is not None else str(exc)
        raise CdcrError(
            f"cannot reach Kafka at {bootstrap} within {timeout_s:.0f}s ({detail}); "
            "check CDCR_KAFKA__BOOTSTRAP_SERVERS and that the broker is up"
        ) from exc
