"""The composition root: every database engine, Redis client and Kafka client the service uses is
built here from ``Settings``, once. Nothing else calls ``create_engine``, ``redis.Redis(...)`` or
builds a librdkafka configuration dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

# ---- databases and Redis (owned by the store/wiring work) -------------------------------------


# ---- Kafka (owned by the Kafka-edge work; delegates to connectors.kafka.config) -------------------
# Kafka clients need only ``settings.kafka``. confluent_kafka is imported inside each factory, so
# importing this module stays cheap for commands that never talk to Kafka.

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer

    from cdc_reconciler.config import KafkaSettings
    from cdc_reconciler.connectors.kafka.admin import KafkaAdmin


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
