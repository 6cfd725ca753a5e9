"""The consumer side of the Kafka edge: the plain ``Record`` the apply engine works on (so the live
loop, replay and the Faust agent feed the same engine), the timeouts of the consumer calls, and the
start-up reachability check. Consumers are built in ``cdc_reconciler.wiring``."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Message

from cdc_reconciler.connectors.kafka.errors import KafkaEdgeError, error_of

# How long a synchronous offset commit or a DLQ flush may take before we call Kafka unhealthy.
COMMIT_TIMEOUT_S = 30.0
FLUSH_TIMEOUT_S = 30.0
# The periodic topic refresh of the running loop: short, so a broker outage never holds the loop
# (and its health) for long; a timeout is transient and retried at the next refresh.
METADATA_TIMEOUT_S = 5.0


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


def check_reachable(consumer: Consumer, bootstrap: str, timeout_s: float) -> None:
    """Start-up check: fetch the cluster metadata within ``timeout_s`` or raise KafkaEdgeError
    naming the bootstrap address (a wrong address would otherwise only show in librdkafka's
    logs)."""
    try:
        consumer.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        err = error_of(exc)
        detail = err.str() if err is not None else str(exc)
        raise KafkaEdgeError(
            f"cannot reach Kafka at {bootstrap} within {timeout_s:.0f}s ({detail}); "
            "check CDCR_KAFKA__BOOTSTRAP_SERVERS and that the broker is up",
            code=err.code() if err is not None else None,
            code_name=err.name() if err is not None else None,
        ) from exc
