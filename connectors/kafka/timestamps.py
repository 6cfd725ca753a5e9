"""The steps of ``KafkaAdmin.message_timestamps``: which offsets are still wanted on each
partition, reading one round of messages, answering the wanted offsets a message covers, and
seeking ahead when the next wanted offset is far away."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition

from cdc_reconciler.connectors.kafka.errors import KafkaEdgeError

# When the next offset wanted on a partition is this close ahead, reading on is cheaper than a seek
# (which throws away the prefetched messages).
_SEEK_GAP = 500

TP = tuple[str, int]
"""A partition: (topic, partition)."""


class TimestampReader:
    """The steps of :meth:`KafkaAdmin.message_timestamps`: the offsets still wanted per partition
    (each list sorted descending, so ``pop()`` gives the smallest), and the timestamps found."""

    def __init__(self, wanted: Iterable[tuple[str, int, int]]) -> None:
        self.todo: dict[TP, list[int]] = {}
        for t, p, o in wanted:
            self.todo.setdefault((t, p), []).append(o)
        for offs in self.todo.values():
            offs.sort(reverse=True)
        self.found: dict[tuple[str, int, int], datetime] = {}

    def finished(self) -> bool:
        return not self.todo

    def start(self, consumer: Consumer) -> None:
        """Assign every wanted partition at its smallest wanted offset."""
        consumer.assign([TopicPartition(t, p, offs[-1]) for (t, p), offs in self.todo.items()])

    def read_round(self, consumer: Consumer, timeout_s: float) -> None:
        """Read what arrives within ``timeout_s``; pause the partitions that are done, in one call
        (pausing costs per call, not per partition)."""
        done: list[TopicPartition] = []
        for msg in consumer.consume(num_messages=500, timeout=timeout_s):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaEdgeError.wrap("read message timestamps", err)
            topic, part, off = msg.topic(), msg.partition(), msg.offset()
            if topic is None or part is None or off is None:
                continue
            if self._take(consumer, (topic, part), off, msg.timestamp()):
                done.append(TopicPartition(topic, part))
        if done:
            consumer.pause(done)

    def _take(self, consumer: Consumer, tp: TP, off: int, ts: tuple[int, int]) -> bool:
        """Answer every wanted offset up to ``off`` with this message's timestamp. True when the
        partition has nothing left to answer; otherwise seek ahead when the next wanted offset is
        far away."""
        pending = self.todo.get(tp)
        if not pending:
            return False
        ts_type, ts_ms = ts
        while pending and pending[-1] <= off:
            wanted_off = pending.pop()
            if ts_type != TIMESTAMP_NOT_AVAILABLE and ts_ms >= 0:
                self.found[(*tp, wanted_off)] = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
        if not pending:
            del self.todo[tp]
            return True
        if pending[-1] - off > _SEEK_GAP:
            consumer.seek(TopicPartition(*tp, pending[-1]))
        return False
