"""Dead letters: the one place that decides what happens to a record that cannot be decoded or
applied. It goes to the dead-letter topic (with the reason in headers) and to
``cdcr.dead_letters`` (in the batch's transaction), and the consumer goes on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from confluent_kafka import KafkaException, Producer

from cdc_reconciler.connectors.kafka import FLUSH_TIMEOUT_S, Record, raise_for

log = logging.getLogger(__name__)


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


class DeadLetterSink:
    def __init__(self, producer: Producer | None, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Produce to the dead-letter topic and wait for the broker's ack, before the batch's
        offsets can be committed. Raises KafkaCallError if the broker does not take them."""
        if not letters or self._producer is None:
            return
        errors: list[str] = []

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                errors.append(str(err))

        try:
            for d in letters:
                r = d.record
                self._producer.produce(
                    self.topic,
                    key=r.key,
                    value=r.value,
                    headers=[
                        ("cdcr.error.kind", d.kind.encode()),
                        ("cdcr.error", d.error.encode()[:4000]),
                        ("cdcr.source.topic", r.topic.encode()),
                        ("cdcr.source.partition", str(r.partition).encode()),
                        ("cdcr.source.offset", str(r.offset).encode()),
                    ],
                    on_delivery=on_delivery,
                )
            remaining = self._producer.flush(FLUSH_TIMEOUT_S)
        except KafkaException as exc:
            raise_for("producing dead letters", exc)
        if remaining or errors:
            from cdc_reconciler.connectors.kafka import KafkaCallError

            raise KafkaCallError(
                f"dead-letter topic {self.topic} did not take {remaining or len(errors)} "
                f"records: {errors[:3]}",
                None,
            )
        for d in letters:
            log.error(
                "dead letter %s[%d]@%d %s: %s",
                d.record.topic,
                d.record.partition,
                d.record.offset,
                d.kind,
                d.error,
            )

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
