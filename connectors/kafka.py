"""Thin wrappers over confluent-kafka for the apply engine: consumer and producer configs built
from the settings, and a plain ``Record`` the engine works on (so replay and the Faust agent can
feed the same engine). Kafka errors keep their error code when wrapped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from cdc_reconciler.config import KafkaSettings
from cdc_reconciler.errors import CdcrError

# How long a synchronous offset commit or a DLQ flush may take before we call Kafka unhealthy.
COMMIT_TIMEOUT_S = 30.0
FLUSH_TIMEOUT_S = 30.0


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
        "session.timeout.ms": settings.session_timeout_ms,
        "max.poll.interval.ms": 600000,
        **_security(settings),
    }


def make_consumer(
    settings: KafkaSettings, *, group_id: str | None = None, extra: dict[str, Any] | None = None
) -> Consumer:
    return Consumer({**consumer_config(settings, group_id=group_id), **(extra or {})})


def make_producer(settings: KafkaSettings) -> Producer:
    return Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 5,
            **_security(settings),
        }
    )


def raise_for(what: str, exc: KafkaException) -> None:
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    raise KafkaCallError(what, err) from exc
