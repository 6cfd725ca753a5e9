"""The composition root: every database engine, Redis client and Kafka client the service uses is
built here from ``Settings``, once. Nothing else calls ``create_engine``, ``redis.Redis(...)`` or
builds a librdkafka configuration dict.
"""

from __future__ import annotations

# ---- databases and Redis (owned by the store/wiring work) -------------------------------------


# ---- Kafka (owned by the Kafka-edge work; delegates to connectors.kafka.config) -------------------
