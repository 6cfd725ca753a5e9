"""Dead letters: the one place that decides what happens to a record that cannot be decoded or
applied. It goes to the dead-letter topic (with the reason in headers) and to
``cdcr.dead_letters`` (in the batch's transaction), and the consumer goes on.

A broker outage while dead letters are produced is waited out (backoff, Kafka reported down,
retried until the broker takes them or the consumer is stopped); only a fatal Kafka error
(authentication, authorisation, librdkafka fatal) is raised. A record too large for the producer
(``PRODUCER_MAX_BYTES``) goes to the topic with its value trimmed and the headers
``cdcr.value.trimmed: record_too_large`` and ``cdcr.value.size`` (the original length); its
coordinates (source topic, partition, offset) are always complete, and ``cdcr.dead_letters``
keeps the whole value. A retried produce may leave a duplicate in the topic: the source
coordinates in the headers identify it (the table is keyed by them)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.connectors.kafka import (
    PRODUCER_MAX_BYTES,
    KafkaEdgeError,
    KafkaError,
    KafkaException,
    Producer,
    Record,
    error_of,
    is_fatal,
)
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.metrics import Dependency

log = logging.getLogger(__name__)

# How long one flush waits before the broker is reported down (and the stop flag looked at).
FLUSH_WAIT_S = 5.0
# Backoff between re-sends of dead letters the broker refused or timed out.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 15.0
# Room left in a produce request for the key, the headers and the protocol overhead.
_HEADROOM = 64 * 1024
TRIMMED = "record_too_large"


class Stopped(CdcrError):
    """Stopped (SIGTERM) while the broker did not take the dead letters; nothing was committed."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    kind: str
    error: str


_INSERT = sa.text(
    'INSERT INTO cdcr.dead_letters (topic, partition, "offset", key, value, error_kind, error) '
    "VALUES (:topic, :partition, :offset, :key, :value, :kind, :error) "
    'ON CONFLICT (topic, partition, "offset") DO NOTHING'
)


def _message(d: DeadLetter, limit: int) -> dict[str, Any]:
    """The produce arguments of one dead letter; a value too large for the producer is trimmed."""
    r = d.record
    headers = [
        ("cdcr.error.kind", d.kind.encode()),
        ("cdcr.error", d.error.encode()[:4000]),
        ("cdcr.source.topic", r.topic.encode()),
        ("cdcr.source.partition", str(r.partition).encode()),
        ("cdcr.source.offset", str(r.offset).encode()),
    ]
    key, value = r.key, r.value
    room = limit - _HEADROOM
    if len(key or b"") + len(value or b"") > room:
        headers += [
            ("cdcr.value.trimmed", TRIMMED.encode()),
            ("cdcr.value.size", str(len(value or b"")).encode()),
            ("cdcr.key.size", str(len(key or b"")).encode()),
        ]
        key = key[: room // 4] if key is not None else None
        value = value[: room - len(key or b"")] if value is not None else None
    return {"key": key, "value": value, "headers": headers}


class DeadLetterSink:
    def __init__(
        self,
        producer: Producer | None,
        topic: str,
        *,
        stop: threading.Event | None = None,
        kafka: Dependency | None = None,
        max_bytes: int = PRODUCER_MAX_BYTES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._stop = stop or threading.Event()
        self._kafka = kafka or Dependency("kafka")
        self._max_bytes = max_bytes
        self._sleep = sleep

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Produce to the dead-letter topic and wait for the broker's ack, before the batch's
        offsets can be committed. Waits out broker outages; raises KafkaEdgeError on a fatal
        Kafka error and Stopped when stopped while the broker does not take them."""
        if not letters or self._producer is None:
            return
        pending = [_message(d, self._max_bytes) for d in letters]
        delay = RETRY_INITIAL_S
        while pending:
            failed, errors = self._send(self._producer, pending)
            fatal = [e for e in errors if is_fatal(e)]
            if fatal:
                raise KafkaEdgeError.wrap(f"producing dead letters to {self.topic}", fatal[0])
            if not failed:
                self._kafka.mark_up()
                break
            why = errors[0].str() if errors else "not acknowledged"
            self._kafka.mark_down(f"dead-letter topic {self.topic}: {why}")
            self._wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            pending = failed
        for d in letters:
            log.error(
                "dead letter %s[%d]@%d %s: %s",
                d.record.topic,
                d.record.partition,
                d.record.offset,
                d.kind,
                d.error,
            )

    def _send(
        self, producer: Producer, pending: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[KafkaError]]:
        """Produce every message and flush until each has a delivery report. Returns the
        messages that failed and their errors."""
        failed: list[dict[str, Any]] = []
        errors: list[KafkaError] = []

        def report(m: dict[str, Any]) -> Callable[[KafkaError | None, object], None]:
            def on_delivery(err: KafkaError | None, _msg: object) -> None:
                if err is not None:
                    failed.append(m)
                    errors.append(err)

            return on_delivery

        for m in pending:
            while True:
                try:
                    producer.produce(self.topic, **m, on_delivery=report(m))
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.5)
                except KafkaException as exc:
                    err = error_of(exc)
                    if err is None or is_fatal(err):
                        raise KafkaEdgeError.wrap(
                            f"producing dead letters to {self.topic}", err
                        ) from exc
                    failed.append(m)
                    errors.append(err)
                    break
        # librdkafka reports every message within message.timeout.ms (delivered or timed out).
        while producer.flush(FLUSH_WAIT_S) > 0:
            self._kafka.mark_down(f"dead-letter topic {self.topic}: not acknowledged")
            if self._stop.is_set():
                raise Stopped("stopped while the broker did not take the dead letters")
        return failed, errors

    def _wait(self, delay: float) -> None:
        if self._stop.is_set():
            raise Stopped("stopped while the broker did not take the dead letters")
        self._sleep(delay)
        if self._stop.is_set():
            raise Stopped("stopped while the broker did not take the dead letters")

    @staticmethod
    def record(conn: sa.Connection, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        conn.execute(
            _INSERT,
            [
                {
                    "topic": d.record.topic,
                    "partition": d.record.partition,
                    "offset": d.record.offset,
                    "key": d.record.key,
                    "value": d.record.value,
                    "kind": d.kind,
                    "error": d.error,
                }
                for d in letters
            ],
        )
