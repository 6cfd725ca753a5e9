"""Thin wrappers over confluent-kafka's AdminClient and Consumer for read-only inspection: consumer
groups, their committed offsets, partition watermarks and the timestamp of the message at an offset.

Contract:

- Every call is bounded by a timeout; nothing blocks forever on an unreachable broker.
- Every Kafka failure surfaces as :class:`KafkaEdgeError` (a CdcrError) that keeps the Kafka
  error code and name (``code``, ``code_name``), so callers decide by code, never by message text.
- Nothing here commits offsets or joins a group: inspecting a group never disturbs it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.cimpl import NewPartitions, NewTopic

from cdc_reconciler.connectors.kafka.config import inspect_consumer_config
from cdc_reconciler.connectors.kafka.errors import KafkaEdgeError, error_of
from cdc_reconciler.connectors.kafka.timestamps import TP, TimestampReader

# A metadata round trip on a healthy local or LAN broker takes milliseconds; 10 s leaves room for a
# loaded cluster while still failing fast enough for an operator running `cdcr lag` by hand.
DEFAULT_TIMEOUT_S = 10.0
# Reading one message per lagging partition: a fetch from a healthy broker answers in well under a
# second; partitions that do not answer in time are reported without a timestamp, not waited for.
DEFAULT_TIMESTAMP_TIMEOUT_S = 2.0

_T = TypeVar("_T")


def _latest() -> OffsetSpec:
    return OffsetSpec.latest()  # type: ignore[no-untyped-call,no-any-return]


def _earliest() -> OffsetSpec:
    return OffsetSpec.earliest()  # type: ignore[no-untyped-call,no-any-return]


def _max_timestamp() -> OffsetSpec:
    return OffsetSpec.max_timestamp()  # type: ignore[no-untyped-call,no-any-return]


@dataclass(frozen=True)
class GroupInfo:
    """What the group coordinator says about a group right now."""

    group: str
    state: str  # STABLE, EMPTY, PREPARING_REBALANCING, COMPLETING_REBALANCING, DEAD, UNKNOWN
    members: int
    assigned: frozenset[TP] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Watermarks:
    """The first offset still in the log and the offset the next produced message will get;
    ``newest_timestamp``: the largest message timestamp in the log (the newest message's, for
    in-order timestamps), None for an empty log or when the broker did not say."""

    log_start: int
    log_end: int
    newest_timestamp: datetime | None = None


class KafkaAdmin:
    """Read-only inspection of a Kafka cluster. Create one per command; no global clients."""

    def __init__(self, config: Mapping[str, Any], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._config = dict(config)
        self._timeout_s = timeout_s
        # socket.timeout.ms bounds each request; the admin calls below also pass request_timeout.
        self._admin = AdminClient({**self._config, "socket.timeout.ms": int(timeout_s * 1000)})

    # -- groups ---------------------------------------------------------------------------------

    def list_groups(self) -> list[str]:
        """Names of all consumer groups the cluster knows, sorted."""
        fut = self._admin.list_consumer_groups(request_timeout=self._timeout_s)
        result = self._result("list consumer groups", fut)
        return sorted(g.group_id for g in result.valid)

    def describe_groups(self, groups: Iterable[str]) -> dict[str, GroupInfo]:
        """State, member count and current assignment of each group, in one request. A group the
        cluster does not know comes back with state DEAD and no members (Kafka's own answer)."""
        names = sorted(set(groups))
        if not names:
            return {}
        futs = self._admin.describe_consumer_groups(names, request_timeout=self._timeout_s)
        out: dict[str, GroupInfo] = {}
        for name, fut in futs.items():
            desc = self._result(f"describe consumer group {name!r}", fut)
            assigned: set[TP] = set()
            for m in desc.members:
                if m.assignment is not None:
                    assigned.update(
                        (tp.topic, tp.partition) for tp in m.assignment.topic_partitions
                    )
            state = getattr(desc, "state", None)
            out[name] = GroupInfo(
                name,
                state.name if state is not None else "UNKNOWN",
                len(desc.members),
                frozenset(assigned),
            )
        return out

    def committed_offsets(self, groups: Iterable[str]) -> dict[str, dict[TP, int | None]]:
        """Committed offsets of every partition each group has committed for. Kafka answers one
        group per request, so the requests for all groups are sent at once and awaited together.
        A partition listed without a commit maps to None."""
        futs: dict[str, Future[Any]] = {}
        for g in sorted(set(groups)):
            futs.update(
                self._admin.list_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(g)], request_timeout=self._timeout_s
                )
            )
        out: dict[str, dict[TP, int | None]] = {}
        for g, fut in futs.items():
            res = self._result(f"committed offsets of group {g!r}", fut)
            parts: dict[TP, int | None] = {}
            for tp in res.topic_partitions or []:
                if tp.error is not None:
                    raise KafkaEdgeError.wrap(
                        f"committed offset of {g!r} {tp.topic}[{tp.partition}]",
                        KafkaException(tp.error),
                    )
                parts[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
            out[g] = parts
        return out

    # -- topics and offsets ---------------------------------------------------------------------

    def topic_partitions(
        self, pattern: str | None = None, *, skip_errors: bool = False
    ) -> dict[str, int]:
        """Partition count of each topic whose name matches ``pattern`` (a regex, searched like
        ``re.search``); internal topics (names starting with ``__``) excluded. None: all topics.
        A topic whose metadata carries an error (being created or deleted) raises
        KafkaEdgeError, or with ``skip_errors`` maps to 0 (a real topic has at least one
        partition), so callers can tell "exists but unreadable now" from "does not exist"."""
        try:
            md = self._admin.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise KafkaEdgeError.wrap("list topics", exc) from exc
        rx = re.compile(pattern) if pattern else None
        out: dict[str, int] = {}
        for name, t in md.topics.items():
            if name.startswith("__") or (rx is not None and not rx.search(name)):
                continue
            if t.error is not None:
                if skip_errors:
                    out[name] = 0
                    continue
                raise KafkaEdgeError.wrap(f"metadata of topic {name!r}", KafkaException(t.error))
            out[name] = len(t.partitions)
        return out

    def log_end_offsets(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """The log-end offset (high watermark) of each partition, in one request."""
        return self._list_offsets(partitions, _latest(), "log-end offsets")

    def watermarks(self, partitions: Iterable[TP]) -> dict[TP, Watermarks]:
        """Log-start and log-end offsets and the newest message timestamp of each partition: one
        ListOffsets request per kind (earliest, latest, max timestamp — KIP-734, Kafka 3.0+), all
        in flight together. A broker that cannot answer the max-timestamp request leaves
        ``newest_timestamp`` None rather than failing the call."""
        parts = sorted(set(partitions))
        if not parts:
            return {}
        start_futs = self._admin.list_offsets(
            {TopicPartition(t, p): _earliest() for t, p in parts}, request_timeout=self._timeout_s
        )
        end_futs = self._admin.list_offsets(
            {TopicPartition(t, p): _latest() for t, p in parts}, request_timeout=self._timeout_s
        )
        max_futs = self._admin.list_offsets(
            {TopicPartition(t, p): _max_timestamp() for t, p in parts},
            request_timeout=self._timeout_s,
        )
        starts = self._offsets("log-start offsets", start_futs)
        ends = self._offsets("log-end offsets", end_futs)
        newest = self._newest_timestamps(max_futs)
        return {tp: Watermarks(starts[tp], ends[tp], newest.get(tp)) for tp in parts}

    def _newest_timestamps(self, futs: Mapping[TopicPartition, Future[Any]]) -> dict[TP, datetime]:
        out: dict[TP, datetime] = {}
        for tp, fut in futs.items():
            try:
                res = fut.result(timeout=self._timeout_s + 5)
            except (KafkaException, TimeoutError):
                continue  # optional: the time lag falls back to reading the newest message
            if res.offset >= 0 and res.timestamp >= 0:
                out[(tp.topic, tp.partition)] = datetime.fromtimestamp(res.timestamp / 1000, tz=UTC)
        return out

    def _list_offsets(self, partitions: Iterable[TP], spec: OffsetSpec, what: str) -> dict[TP, int]:
        parts = sorted(set(partitions))
        if not parts:
            return {}
        futs = self._admin.list_offsets(
            {TopicPartition(t, p): spec for t, p in parts}, request_timeout=self._timeout_s
        )
        return self._offsets(what, futs)

    def _offsets(self, what: str, futs: Mapping[TopicPartition, Future[Any]]) -> dict[TP, int]:
        return {
            (tp.topic, tp.partition): int(
                self._result(f"{what} of {tp.topic}[{tp.partition}]", fut).offset
            )
            for tp, fut in futs.items()
        }

    def message_timestamps(
        self,
        wanted: Iterable[tuple[str, int, int]],
        *,
        timeout_s: float = DEFAULT_TIMESTAMP_TIMEOUT_S,
    ) -> dict[tuple[str, int, int], datetime]:
        """Timestamp (UTC) of the first message at or after each wanted (topic, partition, offset).

        One consumer, outside any group (it never commits), is assigned every wanted partition at
        its smallest wanted offset and reads one message per wanted offset, seeking forward when
        the next wanted offset is far ahead. Offsets with no message within ``timeout_s`` (control
        records only, data deleted meanwhile, a slow broker) and messages without a timestamp are
        left out of the answer rather than guessed.
        """
        reader = TimestampReader(wanted)
        if reader.finished():
            return {}
        consumer = Consumer(inspect_consumer_config(self._config, self._timeout_s))
        try:
            reader.start(consumer)
            deadline = time.monotonic() + timeout_s
            while not reader.finished() and (left := deadline - time.monotonic()) > 0:
                reader.read_round(consumer, min(left, 0.02))
        except KafkaException as exc:
            raise KafkaEdgeError.wrap("read message timestamps", exc) from exc
        finally:
            consumer.close()
        return reader.found

    # -- topic management (tests, benchmarks, tooling) ------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int,
        *,
        replication_factor: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """Create a topic and wait until it exists."""
        futs = self._admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    config=dict(config or {}),
                )
            ],
            request_timeout=self._timeout_s,
        )
        for fut in futs.values():
            self._result(f"create topic {name!r}", fut)

    def add_partitions(self, topic: str, total: int) -> None:
        """Grow ``topic`` to ``total`` partitions and wait until the broker has done it."""
        futs = self._admin.create_partitions(
            [NewPartitions(topic, total)], request_timeout=self._timeout_s
        )
        for fut in futs.values():
            self._result(f"add partitions to {topic!r}", fut)

    def delete_records(self, before: Mapping[TP, int]) -> dict[TP, int]:
        """Delete every message below the given offset of each partition (Kafka's DeleteRecords:
        the log start moves up). Returns the new log start of each partition."""
        if not before:
            return {}
        futs = self._admin.delete_records(
            [TopicPartition(t, p, o) for (t, p), o in before.items()],
            request_timeout=self._timeout_s,
        )
        return {
            (tp.topic, tp.partition): int(
                self._result(f"delete records of {tp.topic}[{tp.partition}]", fut).low_watermark
            )
            for tp, fut in futs.items()
        }

    def delete_groups(self, groups: Iterable[str]) -> None:
        """Delete consumer groups (their committed offsets); groups that do not exist are
        ignored. A group with live members cannot be deleted: KafkaEdgeError (NON_EMPTY_GROUP)."""
        names = sorted(set(groups))
        if names:
            futs = self._admin.delete_consumer_groups(names, request_timeout=self._timeout_s)
            self._await_all("delete consumer group", futs, absent=KafkaError.GROUP_ID_NOT_FOUND)

    def delete_topics(self, names: Iterable[str]) -> None:
        """Delete topics; topics that do not exist are ignored."""
        names = list(names)
        if names:
            futs = self._admin.delete_topics(names, request_timeout=self._timeout_s)
            self._await_all("delete topic", futs, absent=KafkaError.UNKNOWN_TOPIC_OR_PART)

    # -- helpers --------------------------------------------------------------------------------

    def _await_all(self, what: str, futs: Mapping[str, Future[Any]], *, absent: int) -> None:
        """Wait for every named request; ``absent`` (the code for "no such thing") is success."""
        for name, fut in futs.items():
            try:
                fut.result(timeout=self._timeout_s + 5)
            except KafkaException as exc:
                kerr = error_of(exc)
                if kerr is not None and kerr.code() == absent:
                    continue
                raise KafkaEdgeError.wrap(f"{what} {name!r}", exc) from exc

    def _result(self, what: str, fut: Future[_T]) -> _T:
        # The request_timeout given to each call bounds the broker side; the margin covers the
        # client's own queueing so a timeout is reported by Kafka (with its code) when it can be.
        try:
            return fut.result(timeout=self._timeout_s + 5)
        except KafkaException as exc:
            raise KafkaEdgeError.wrap(what, exc) from exc
        except TimeoutError as exc:
            raise KafkaEdgeError(
                f"{what}: no answer within {self._timeout_s + 5:.0f}s (is the broker reachable?)"
            ) from exc
