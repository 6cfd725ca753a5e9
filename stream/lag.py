"""Consumer lag: offsets, seconds and a Burrow-like status per partition and per group.

This module is data and logic only. It does no I/O of its own: a :class:`LagMonitor` reads the
cluster through a :class:`LagSource` it is given (in production
``cdc_reconciler.connectors.kafka_admin.KafkaAdmin``) and takes time from an injectable
``now_getter``, so every rule here is testable with plain values.

Definitions (``docs/lag.md`` has the same, for operators):

- position: the next offset the group will read: its committed offset, or the log start when it
  has no commit (a consumer with ``auto.offset.reset=earliest`` starts there) or when retention
  already deleted the committed offset.
- offset lag: ``log_end - position``, never below 0.
- time lag: now minus the timestamp of the message at the position (the oldest unconsumed one);
  0 when the offset lag is 0. Where that message cannot be read in time, the arrival time of the
  position is interpolated from the history of log-end samples; where the history does not reach
  back far enough, the time since the oldest sample is reported as a lower bound. Never negative
  (producer clocks ahead of ours count as 0), never NaN; None only when nothing is known.
- status, per partition, from the history of samples (oldest first), first rule that matches:

  1. OK      the offset lag of the newest sample is 0 (caught up; idle groups included).
  2. REWIND  the committed offset went backwards between two samples.
  3. STOP    the group has no active member, so nothing will drain the lag.
  4. STALL   the committed offset did not move over the history while the lag is not 0, and the
             oldest unconsumed message is at least ``stall_after_s`` old (or, time lag unknown,
             the history spans that long). Younger lag is normal between two commits.
  5. WARN    the committed offset moves, but the lag grew between every two samples over at least
             ``warn_min_samples`` samples (the consumer falls behind).
  6. OK      otherwise.

  A group's status is its worst partition's, by severity OK < WARN < REWIND < STALL < STOP.
"""

from __future__ import annotations

import enum
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cdc_reconciler.errors import CdcrError

TP = tuple[str, int]

JSON_SCHEMA_VERSION = 1


class LagError(CdcrError):
    """Lag cannot be reported as asked (unknown group, nothing to report)."""


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    REWIND = "REWIND"
    STALL = "STALL"
    STOP = "STOP"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Status.OK: 0, Status.WARN: 1, Status.REWIND: 2, Status.STALL: 3, Status.STOP: 4}


class TimeLagSource(enum.StrEnum):
    """How a time lag was obtained."""

    CAUGHT_UP = "caught_up"  # offset lag 0: time lag 0
    TIMESTAMP = "timestamp"  # the timestamp of the message at the position
    ESTIMATE = "estimate"  # interpolated from the log-end history
    LOWER_BOUND = "lower_bound"  # at least this old: the position predates the history
    UNAVAILABLE = "unavailable"  # nothing known; time_lag_s is None


@dataclass(frozen=True)
class Thresholds:
    # Between two commits a healthy consumer's committed offset stands still; only a standstill
    # with messages waiting this long is a stall. The apply engine commits every batch (≤ 1 s).
    stall_after_s: float = 60.0
    # Burrow needs the lag to grow over its whole window to warn; fewer than 3 samples would make
    # a single noisy interval a warning.
    warn_min_samples: int = 3


@dataclass(frozen=True)
class Sample:
    """One observation of one partition for one group."""

    at: datetime
    committed: int | None
    log_start: int
    log_end: int

    @property
    def position(self) -> int:
        if self.committed is None:
            return self.log_start
        return min(max(self.committed, self.log_start), max(self.log_end, self.log_start))

    @property
    def offset_lag(self) -> int:
        return max(0, self.log_end - self.position)


@dataclass(frozen=True)
class AppliedOffset:
    """What the apply engine recorded for a partition in the target (cdcr.applied_offsets)."""

    next_offset: int
    last_event_time: datetime | None


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    log_end: int
    offset_lag: int
    time_lag_s: float | None
    status: Status
    log_start: int = 0
    time_lag_source: TimeLagSource = TimeLagSource.UNAVAILABLE
    applied: int | None = None
    applied_event_time: datetime | None = None


@dataclass(frozen=True)
class GroupLag:
    group: str
    state: str
    members: int
    status: Status
    partitions: tuple[PartitionLag, ...]

    @property
    def total_offset_lag(self) -> int:
        return sum(p.offset_lag for p in self.partitions)

    @property
    def max_time_lag_s(self) -> float:
        return max((p.time_lag_s or 0.0 for p in self.partitions), default=0.0)


@dataclass(frozen=True)
class LagReport:
    generated_at: datetime
    samples: int
    interval_s: float
    groups: tuple[GroupLag, ...]
    applied_available: bool = False
    applied_note: str | None = None


# -- rules ----------------------------------------------------------------------------------------


def partition_status(
    samples: Sequence[Sample],
    *,
    group_active: bool,
    time_lag_s: float | None,
    thresholds: Thresholds = Thresholds(),
) -> Status:
    """The status of one partition from its samples (oldest first; at least one). See the module
    docstring for the rules."""
    if not samples:
        raise ValueError("partition_status needs at least one sample")
    latest = samples[-1]
    if latest.offset_lag == 0:
        return Status.OK
    commits = [s.committed for s in samples if s.committed is not None]
    if any(b < a for a, b in zip(commits, commits[1:], strict=False)):
        return Status.REWIND
    if not group_active:
        return Status.STOP
    first = samples[0]
    if first.position == latest.position:
        age = time_lag_s if time_lag_s is not None else (latest.at - first.at).total_seconds()
        return Status.STALL if age >= thresholds.stall_after_s else Status.OK
    lags = [s.offset_lag for s in samples]
    if len(lags) >= thresholds.warn_min_samples and all(
        b > a for a, b in zip(lags, lags[1:], strict=False)
    ):
        return Status.WARN
    return Status.OK


def group_status(statuses: Iterable[Status]) -> Status:
    """The worst status among a group's partitions; OK for a group with none."""
    return max(statuses, key=lambda s: s.severity, default=Status.OK)


def group_is_active(state: str, members: int) -> bool:
    """A group with members (stable or rebalancing) is consuming; EMPTY, DEAD or UNKNOWN is not."""
    return members > 0 or state in ("PREPARING_REBALANCING", "COMPLETING_REBALANCING")


def time_lag(
    now: datetime,
    samples: Sequence[Sample],
    oldest_unconsumed: datetime | None,
) -> tuple[float | None, TimeLagSource]:
    """Seconds between now and the arrival of the oldest unconsumed message of a partition, from
    the newest sample's position. See the module docstring for the fallbacks."""
    latest = samples[-1]
    if latest.offset_lag == 0:
        return 0.0, TimeLagSource.CAUGHT_UP
    if oldest_unconsumed is not None:
        return _seconds_since(now, oldest_unconsumed), TimeLagSource.TIMESTAMP
    arrived = interpolate_arrival(samples, latest.position)
    if arrived is not None:
        return _seconds_since(now, arrived), TimeLagSource.ESTIMATE
    if len(samples) >= 1 and samples[0].log_end > latest.position:
        return _seconds_since(now, samples[0].at), TimeLagSource.LOWER_BOUND
    return None, TimeLagSource.UNAVAILABLE


def interpolate_arrival(samples: Sequence[Sample], offset: int) -> datetime | None:
    """When ``offset`` was written, interpolated linearly between the last sample whose log end
    had not reached it and the first that had passed it; None when the samples do not bracket it.
    """
    before: Sample | None = None
    for s in samples:
        if s.log_end <= offset:
            before = s
        elif before is not None:
            span = s.log_end - before.log_end
            frac = (offset - before.log_end + 1) / span if span > 0 else 1.0
            return before.at + (s.at - before.at) * min(max(frac, 0.0), 1.0)
    return None


def _seconds_since(now: datetime, then: datetime) -> float:
    return max(0.0, (now - then).total_seconds())


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- collecting -----------------------------------------------------------------------------------


class GroupState(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def members(self) -> int: ...
    @property
    def assigned(self) -> frozenset[TP]: ...


class Offsets(Protocol):
    @property
    def log_start(self) -> int: ...
    @property
    def log_end(self) -> int: ...


class LagSource(Protocol):
    """What the monitor needs from Kafka (``KafkaAdmin`` satisfies it)."""

    def list_groups(self) -> list[str]: ...
    def describe_groups(self, groups: Iterable[str]) -> Mapping[str, GroupState]: ...
    def committed_offsets(self, groups: Iterable[str]) -> Mapping[str, Mapping[TP, int | None]]: ...
    def topic_partitions(self, pattern: str | None = None) -> Mapping[str, int]: ...
    def watermarks(self, partitions: Iterable[TP]) -> Mapping[TP, Offsets]: ...
    def message_timestamps(
        self, wanted: Iterable[tuple[str, int, int]], *, timeout_s: float = ...
    ) -> Mapping[tuple[str, int, int], datetime]: ...


@dataclass
class _GroupView:
    state: str = "UNKNOWN"
    members: int = 0
    history: dict[TP, deque[Sample]] = field(default_factory=dict)


class LagMonitor:
    """Samples groups' committed offsets and partition watermarks, keeps a bounded history per
    partition, and turns the newest state into a :class:`LagReport`.

    ``sample()`` raises LagError for a group the cluster does not know, and lets the source's own
    CdcrError (broker unreachable, …) through.
    """

    def __init__(
        self,
        source: LagSource,
        groups: Sequence[str],
        *,
        topic_pattern: str | None = None,
        history: int = 10,
        thresholds: Thresholds = Thresholds(),
        now_getter: Callable[[], datetime] = utc_now,
        timestamp_timeout_s: float = 2.0,
    ) -> None:
        if not groups:
            raise LagError("no consumer group given")
        self._source = source
        self._groups = list(dict.fromkeys(groups))
        try:
            self._rx = re.compile(topic_pattern) if topic_pattern else None
        except re.error as exc:
            raise LagError(f"invalid --topic regex {topic_pattern!r}: {exc}") from exc
        self._pattern = topic_pattern
        self._history = max(1, history)
        self._thresholds = thresholds
        self._now = now_getter
        self._ts_timeout = timestamp_timeout_s
        self._views = {g: _GroupView() for g in self._groups}
        self._samples = 0

    @property
    def samples_taken(self) -> int:
        return self._samples

    def sample(self) -> None:
        """Take one sample of every group's partitions."""
        described = self._source.describe_groups(self._groups)
        committed = self._source.committed_offsets(self._groups)
        self._check_known(described, committed)
        pattern_parts: set[TP] = set()
        if self._pattern is not None:
            for topic, n in self._source.topic_partitions(self._pattern).items():
                pattern_parts.update((topic, p) for p in range(n) if self._matches((topic, p)))
        wanted: dict[str, dict[TP, int | None]] = {}
        for g in self._groups:
            info = described.get(g)
            parts: dict[TP, int | None] = {tp: None for tp in pattern_parts}
            if info is not None:
                parts.update({tp: None for tp in info.assigned if self._matches(tp)})
            parts.update({tp: o for tp, o in committed.get(g, {}).items() if self._matches(tp)})
            wanted[g] = parts
        marks = self._source.watermarks({tp for parts in wanted.values() for tp in parts})
        at = self._now()
        for g, parts in wanted.items():
            view = self._views[g]
            info = described.get(g)
            view.state = info.state if info is not None else "UNKNOWN"
            view.members = info.members if info is not None else 0
            for tp, off in parts.items():
                wm = marks.get(tp)
                if wm is None:
                    continue  # the topic vanished between the calls
                hist = view.history.setdefault(tp, deque(maxlen=self._history))
                hist.append(Sample(at, off, wm.log_start, wm.log_end))
            for tp in [tp for tp in view.history if tp not in parts]:
                del view.history[tp]  # no longer committed, assigned or matching
        self._samples += 1

    def report(
        self,
        *,
        applied: Mapping[tuple[str, str, int], AppliedOffset] | None = None,
        applied_note: str | None = None,
        interval_s: float = 0.0,
    ) -> LagReport:
        """The lag as of the newest sample. Reads the timestamp of the oldest unconsumed message of
        each lagging partition (one read for all). ``applied``: the apply engine's recorded offsets
        by (group, topic, partition), None when they could not be read (``applied_note`` says why).
        """
        if self._samples == 0:
            raise LagError("no sample taken yet")
        lookups = {
            (tp[0], tp[1], h[-1].position)
            for v in self._views.values()
            for tp, h in v.history.items()
            if h[-1].offset_lag > 0
        }
        stamps = self._source.message_timestamps(lookups, timeout_s=self._ts_timeout)
        now = self._now()
        groups = []
        for g in self._groups:
            view = self._views[g]
            active = group_is_active(view.state, view.members)
            parts = []
            for (topic, part), hist in sorted(view.history.items()):
                latest = hist[-1]
                secs, how = time_lag(now, hist, stamps.get((topic, part, latest.position)))
                status = partition_status(
                    hist, group_active=active, time_lag_s=secs, thresholds=self._thresholds
                )
                ap = (applied or {}).get((g, topic, part))
                parts.append(
                    PartitionLag(
                        topic,
                        part,
                        latest.committed,
                        latest.log_end,
                        latest.offset_lag,
                        None if secs is None else round(secs, 3),
                        status,
                        log_start=latest.log_start,
                        time_lag_source=how,
                        applied=ap.next_offset if ap else None,
                        applied_event_time=ap.last_event_time if ap else None,
                    )
                )
            groups.append(
                GroupLag(
                    g, view.state, view.members, group_status(p.status for p in parts), tuple(parts)
                )
            )
        return LagReport(
            now,
            self._samples,
            interval_s,
            tuple(groups),
            applied_available=applied is not None,
            applied_note=applied_note,
        )

    def _matches(self, tp: TP) -> bool:
        return self._rx is None or bool(self._rx.search(tp[0]))

    def _check_known(
        self, described: Mapping[str, GroupState], committed: Mapping[str, Mapping[TP, int | None]]
    ) -> None:
        unknown = [
            g
            for g in self._groups
            if not committed.get(g)
            and (g not in described or described[g].state in ("DEAD", "UNKNOWN"))
        ]
        if unknown:
            known = self._source.list_groups()
            shown = ", ".join(known[:20]) + (" …" if len(known) > 20 else "") or "none"
            raise LagError(
                f"unknown consumer group(s): {', '.join(unknown)} "
                f"(groups on the cluster: {shown}); pass --group"
            )


def collect(
    monitor: LagMonitor,
    *,
    samples: int,
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Take ``samples`` samples ``interval_s`` apart (at least one)."""
    for i in range(max(1, samples)):
        if i:
            sleep(interval_s)
        monitor.sample()


# -- JSON -----------------------------------------------------------------------------------------


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def report_as_json(report: LagReport) -> dict[str, Any]:
    """The stable ``cdcr lag --json`` document (schema_version 1, described in docs/lag.md).
    Fields are only ever added within a schema version, never renamed or removed."""
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "generated_at": _iso(report.generated_at),
        "samples": report.samples,
        "interval_s": report.interval_s,
        "applied_offsets": {"available": report.applied_available, "note": report.applied_note},
        "groups": [
            {
                "group": g.group,
                "state": g.state,
                "members": g.members,
                "status": g.status.value,
                "total_offset_lag": g.total_offset_lag,
                "max_time_lag_s": g.max_time_lag_s,
                "partitions": [
                    {
                        "topic": p.topic,
                        "partition": p.partition,
                        "committed": p.committed,
                        "log_start": p.log_start,
                        "log_end": p.log_end,
                        "offset_lag": p.offset_lag,
                        "time_lag_s": p.time_lag_s,
                        "time_lag_source": p.time_lag_source.value,
                        "status": p.status.value,
                        "applied": p.applied,
                        "applied_event_time": _iso(p.applied_event_time),
                    }
                    for p in g.partitions
                ],
            }
            for g in report.groups
        ],
    }
