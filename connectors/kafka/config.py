"""The one librdkafka configuration builder: every consumer, producer and admin client the service
opens gets its settings from here, built from :class:`KafkaSettings`.

- Security is mapped once (:func:`security`): a SASL user name turns on ``SASL_SSL`` with the
  ``PLAIN`` mechanism; without one the connection is plaintext. The SASL password (a SecretStr)
  is revealed only in :func:`security` and never logged; :func:`redacted` gives a config that is
  safe to print.
- Each role adds its own layer on the shared base: the live consumer (:func:`consumer_config`),
  the dead-letter producer (:func:`producer_config`), the admin client (:func:`admin_config`) and
  the admin's inspection consumer (:func:`inspect_consumer_config`). ``overrides`` win over
  everything (callbacks, one-off settings such as ``enable.partition.eof``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from cdc_reconciler.config import KafkaSettings

# The largest record the dead-letter producer sends (librdkafka's and the broker's default
# message.max.bytes is ~1 MB). A bigger record's value is trimmed to fit (docs/operations.md).
PRODUCER_MAX_BYTES = 1_000_000
# Records up to this size are fetched (the broker returns an oversized first record anyway,
# KIP-74; librdkafka refuses responses above receive.message.max.bytes).
RECEIVE_MAX_BYTES = 128 * 1024 * 1024
# librdkafka settings whose values must never be printed.
SECRET_KEYS = frozenset({"sasl.password", "ssl.key.password", "ssl.keystore.password"})


class _Demoted(logging.LoggerAdapter):  # type: ignore[type-arg]
    """librdkafka's own log lines (one per reconnect attempt during an outage) at DEBUG: the
    loop reports the broker's state once per change (docs/operations.md); -v shows them."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self.logger.log(logging.DEBUG, msg, *args, **kwargs)


def client_logger() -> logging.LoggerAdapter:  # type: ignore[type-arg]
    return _Demoted(logging.getLogger("cdc_reconciler.librdkafka"), {})


def security(settings: KafkaSettings) -> dict[str, Any]:
    """The security settings: SASL_SSL/PLAIN with the configured user, or nothing (plaintext).
    The only place the SASL password is revealed."""
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


def _base(settings: KafkaSettings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.bootstrap_servers, **security(settings)}


def _layer(base: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**base, **(overrides or {})}


def consumer_config(
    settings: KafkaSettings,
    *,
    group_id: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The apply consumer (the live loop, replay, the Faust probe): manual commits only."""
    conf = {
        **_base(settings),
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
        "logger": client_logger(),
    }
    return _layer(conf, overrides)


def producer_config(
    settings: KafkaSettings, *, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The dead-letter producer: idempotent, records up to PRODUCER_MAX_BYTES."""
    conf = {
        **_base(settings),
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.max.bytes": PRODUCER_MAX_BYTES,
        "logger": client_logger(),
    }
    return _layer(conf, overrides)


def admin_config(
    settings: KafkaSettings, *, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The admin client and the read-only inspection consumer (``cdcr lag``, reconcile's log
    ends). Failures reach the caller as KafkaEdgeError with their code; librdkafka's own log
    lines (one per failed connection attempt) would only repeat them on stderr, so only CRIT is
    logged."""
    return _layer({**_base(settings), "log_level": 2}, overrides)


def inspect_consumer_config(admin: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
    """The consumer KafkaAdmin reads single messages with, on top of the admin's config: outside
    any group in effect (a throwaway id, never commits), small fetches."""
    return {
        **admin,
        # A throwaway id: assign() needs no group, but the client wants one; it never commits.
        "group.id": f"cdcr-inspect-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        # One message per partition is all we need: keep fetches small.
        "fetch.max.bytes": 1 << 20,
        "max.partition.fetch.bytes": 64 << 10,
        "fetch.wait.max.ms": 50,
        "socket.timeout.ms": int(timeout_s * 1000),
    }


def redacted(conf: Mapping[str, Any]) -> dict[str, Any]:
    """``conf`` with secret values masked: the only form of a client config fit for a log."""
    return {k: "**********" if k in SECRET_KEYS else v for k, v in conf.items()}
