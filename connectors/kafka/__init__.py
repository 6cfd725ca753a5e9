"""The one Kafka edge of the service. Everything that talks to Kafka goes through this package:

- ``config``: the one librdkafka configuration builder (security mapped once, secrets masked);
- ``errors``: :class:`KafkaEdgeError` (keeps Kafka's error code and name) and :func:`is_fatal`;
- ``consumer``: the ``Record`` the apply engine works on, consumer timeouts, the reachability check;
- ``admin``: :class:`KafkaAdmin`, read-only inspection (groups, offsets, watermarks, timestamps)
  and topic management for tests and tooling.

Clients are constructed in ``cdc_reconciler.wiring`` only. The confluent-kafka names the stream
modules need (types, constants) are re-exported here, so nothing else imports confluent_kafka.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from cdc_reconciler.config import KafkaSettings
from cdc_reconciler.connectors.kafka.config import PRODUCER_MAX_BYTES, RECEIVE_MAX_BYTES
from cdc_reconciler.connectors.kafka.consumer import (
    COMMIT_TIMEOUT_S,
    FLUSH_TIMEOUT_S,
    METADATA_TIMEOUT_S,
    Record,
    check_reachable,
)
from cdc_reconciler.connectors.kafka.errors import KafkaEdgeError, error_of, is_fatal, raise_for

__all__ = [
    "COMMIT_TIMEOUT_S",
    "FLUSH_TIMEOUT_S",
    "METADATA_TIMEOUT_S",
    "OFFSET_END",
    "PRODUCER_MAX_BYTES",
    "RECEIVE_MAX_BYTES",
    "Consumer",
    "KafkaEdgeError",
    "KafkaError",
    "KafkaException",
    "Message",
    "Producer",
    "Record",
    "TopicPartition",
    "check_reachable",
    "error_of",
    "is_fatal",
    "make_consumer",
    "raise_for",
]


def make_consumer(
    settings: KafkaSettings, *, group_id: str | None = None, extra: dict[str, Any] | None = None
) -> Consumer:
    """Kept for stream/faust_app.py until its move calls ``wiring.kafka_consumer`` directly."""
    from cdc_reconciler import wiring

    return wiring.kafka_consumer(settings, group_id=group_id, overrides=extra)
