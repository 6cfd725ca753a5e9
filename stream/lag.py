"""Consumer lag: offsets, seconds and a Burrow-like status per partition and per group.

This module is data and logic only. It does no I/O of its own: a :class:`LagMonitor` reads the
cluster through a :class:`LagSource` it is given (in production
``cdc_reconciler.connectors.kafka.admin.KafkaAdmin``) and takes time from an injectable
``now_getter``, so every rule here is testable with plain values.

Definitions (``docs/lag.md`` has the same, for operators):

- partitions: every partition of every topic the group has committed on or its members are
  assigned, plus every partition of the topics a pattern names for the group (``cdcr run``'s own
  topic pattern, ``--topic``). A partition the group never committed on is listed with
  ``committed`` None and reason ``no_commit``; it is never left out.
- position: the next offset the group will read: its committed offset; with no commit, or with
  a commit retention has already deleted (reason ``offset_out_of_range``), the offset the group
  would restart at: the log start for ``auto.offset.reset=earliest``, the log end for ``latest``.
- offset lag: ``log_end - position``, never below 0.
- time lag: how far behind the log end the group is, in the log's own time: the timestamp of the
  newest message minus the timestamp of the message at the position (the oldest unconsumed one);
  0 when the offset lag is 0. A group reprocessing week-old data that is 10 s of writes behind
  shows 10 s, not a week. How long the oldest unconsumed message has waited (now minus its
  timestamp) is reported beside it as its age. Where the messages cannot be read in time, the
  arrival of the position is interpolated from the history of log-end samples; where the history
  does not reach back far enough, the time since the oldest sample is a lower bound. Never
  negative, never NaN; None only when nothing is known.
- status, per partition, from the history of samples (oldest first), first rule that matches:

  1. OK      the offset lag of the newest sample is 0 (caught up; idle groups included).
  2. REWIND  the committed offset went backwards between two samples.
  3. STOP    the group has no active member, so nothing will drain the lag.
  4. STALL   the committed offset did not move over the history while the lag is not 0, the
             oldest unconsumed message is at least ``stall_after_s`` old, and the apply engine's
             applied offset (when known) was last advanced at least that long ago (both unknown:
             the history spans that long). Younger lag is normal between two commits.
  5. WARN    the committed offset moves, but the lag grew between every two samples over at least
             ``warn_min_samples`` samples (the consumer falls behind).
  6. WARN    the partition has unconsumed records and no usable commit (``no_commit`` or
             ``offset_out_of_range``): such a partition is never OK.
  7. OK      otherwise.

  A group's status is its worst partition's, by severity OK < WARN < REWIND < STALL < STOP.
"""

from __future__ import annotations

import enum
import re
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cdc_reconciler.errors import CdcrError

TP = tuple[str, int]

JSON_SCHEMA_VERSION = 1

# Lag past this is flagged (``time_lag_over_30m``) and shown in hours by the table: an operator
# reads it as "far behind", not as a figure to compare with a few seconds.
LONG_LAG_S = 30 * 60.0


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


class Reason(enum.StrEnum):
    """Why a partition's position is not its committed offset."""

    NO_COMMIT = "no_commit"  # the group never committed on it
    OFFSET_OUT_OF_RANGE = "offset_out_of_range"  # the commit is outside [log start, log end]


# What a group does where it has no usable commit: Kafka's auto.offset.reset.
OFFSET_RESETS = ("earliest", "latest")


@dataclass(frozen=True)
class Sample:
    """One observation of one partition for one group. ``reset`` is the group's
    ``auto.offset.reset``: where it starts when it has no usable commit."""

    at: datetime
    committed: int | None
    log_start: int
    log_end: int
    reset: str = "earliest"
    newest: datetime | None = None  # the largest message timestamp in the log, when known

    @property
    def reason(self) -> Reason | None:
        if self.committed is None:
            return Reason.NO_COMMIT
        if self.committed < self.log_start or self.committed > self.log_end:
            # Retention deleted it (below), or the log was truncated or recreated (above): the
            # consumer gets OFFSET_OUT_OF_RANGE and resets, and what lay between is lost to it.
            return Reason.OFFSET_OUT_OF_RANGE
        return None

    @property
    def position(self) -> int:
        if self.committed is None or self.reason is not None:
            return self.log_end if self.reset == "latest" else self.log_start
        return self.committed

    @property
    def offset_lag(self) -> int:
        return max(0, self.log_end - self.position)


@dataclass(frozen=True)
class AppliedOffset:
    """What the apply engine recorded for a partition in the target (cdcr.applied_offsets)."""

    next_offset: int
    last_event_time: datetime | None
    updated_at: datetime | None = None  # when the engine last advanced it


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
    reason: Reason | None = None
    position: int = 0
    age_s: float | None = None  # now minus the timestamp of the oldest unconsumed message
    applied_updated_at: datetime | None = None


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
    age_s: float | None,
    since_progress_s: float | None = None,
    thresholds: Thresholds = Thresholds(),
) -> Status:
    """The status of one partition from its samples (oldest first; at least one). ``age_s``: how
    long the oldest unconsumed message has waited; ``since_progress_s``: seconds since the apply
    engine last advanced its applied offset, when known. See the module docstring for the rules.
    """
    if not samples:
        raise ValueError("partition_status needs at least one sample")
    latest = samples[-1]
    if latest.offset_lag == 0:
        return Status.OK
    if _rewound(samples):
        return Status.REWIND
    if not group_active:
        return Status.STOP
    moving = _progress_status(samples, age_s, since_progress_s, thresholds)
    if moving is not None:
        return moving
    if latest.reason is not None:
        return Status.WARN  # records waiting and no usable commit: never OK
    return Status.OK


def _rewound(samples: Sequence[Sample]) -> bool:
    """Whether the group's commit ever went backwards across the samples."""
    commits = [s.committed for s in samples if s.committed is not None]
    return any(b < a for a, b in zip(commits, commits[1:], strict=False))


def _progress_status(
    samples: Sequence[Sample],
    age_s: float | None,
    since_progress_s: float | None,
    thresholds: Thresholds,
) -> Status | None:
    """STALL for a position that has not moved for long enough, WARN for a lag that kept
    growing, None when neither holds."""
    first, latest = samples[0], samples[-1]
    if first.position == latest.position:
        # A stall needs both: no recorded progress for that long, and a message waiting that
        # long (a burst after a quiet spell is not a stall, nor old data read steadily).
        known = [s for s in (since_progress_s, age_s) if s is not None]
        waited = min(known) if known else (latest.at - first.at).total_seconds()
        return Status.STALL if waited >= thresholds.stall_after_s else None
    lags = [s.offset_lag for s in samples]
    if len(lags) >= thresholds.warn_min_samples and all(
        b > a for a, b in zip(lags, lags[1:], strict=False)
    ):
        return Status.WARN
    return None


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
    newest: datetime | None = None,
) -> tuple[float | None, TimeLagSource]:
    """How far behind the log end a partition's position is, in seconds of the log's own time:
    the timestamp of the newest message (``newest``; now when unknown) minus that of the oldest
    unconsumed one. See the module docstring for the fallbacks."""
    latest = samples[-1]
    if latest.offset_lag == 0:
        return 0.0, TimeLagSource.CAUGHT_UP
    if oldest_unconsumed is not None:
        return _seconds_since(newest or now, oldest_unconsumed), TimeLagSource.TIMESTAMP
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
    @property
    def newest_timestamp(self) -> datetime | None: ...


class LagSource(Protocol):
    """What the monitor needs from Kafka (``KafkaAdmin`` satisfies it)."""

    def list_groups(self) -> list[str]: ...
    def describe_groups(self, groups: Iterable[str]) -> Mapping[str, GroupState]: ...
    def committed_offsets(self, groups: Iterable[str]) -> Mapping[str, Mapping[TP, int | None]]: ...
    def topic_partitions(
        self, pattern: str | None = None, *, skip_errors: bool = False
    ) -> Mapping[str, int]: ...
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

    Which partitions: every partition of each topic a group committed on or is assigned, of each
    topic matching ``topic_pattern`` (all groups; it also filters) and of each topic matching the
    group's own pattern in ``group_patterns`` (``cdcr run``'s group: its subscription), new
    partitions included; ``group_excludes`` names topics a group's pattern never takes (the
    dead-letter topic). ``offset_reset`` is ``auto.offset.reset`` for all groups, or per group
    (missing groups: earliest).

    ``sample()`` raises LagError for a group the cluster does not know (unless it has a pattern:
    a group that never ran still has everything to consume), and lets the source's own CdcrError
    (broker unreachable, …) through. One sample is one round of requests: describe, committed
    offsets, topic metadata, watermarks.
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
        group_patterns: Mapping[str, str] | None = None,
        offset_reset: str | Mapping[str, str] = "earliest",
        group_excludes: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        if not groups:
            raise LagError("no consumer group given")
        self._source = source
        self._groups = list(dict.fromkeys(groups))
        try:
            self._rx = re.compile(topic_pattern) if topic_pattern else None
        except re.error as exc:
            raise LagError(f"invalid --topic regex {topic_pattern!r}: {exc}") from exc
        self._group_rx: dict[str, re.Pattern[str]] = {}
        for g, pat in (group_patterns or {}).items():
            try:
                self._group_rx[g] = re.compile(pat)
            except re.error as exc:
                raise LagError(f"invalid topic pattern {pat!r} of group {g!r}: {exc}") from exc
        resets = (
            dict.fromkeys(self._groups, offset_reset)
            if isinstance(offset_reset, str)
            else {g: offset_reset.get(g, "earliest") for g in self._groups}
        )
        for g, r in resets.items():
            if r not in OFFSET_RESETS:
                raise LagError(f"auto.offset.reset of {g!r} must be earliest or latest, not {r!r}")
        self._reset = resets
        self._group_excludes = {g: frozenset(ts) for g, ts in (group_excludes or {}).items()}
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
        # Before the watermarks: the metadata request also refreshes the client's view of the
        # cluster, so partitions added since the last sample can be asked about.
        # All topics in one request; on a busy cluster some are always being created or deleted,
        # and an unrelated topic's error must not fail the report (see _partitions_of).
        counts = self._source.topic_partitions(None, skip_errors=True)
        wanted = {
            g: self._partitions_of(g, described.get(g), committed.get(g, {}), counts)
            for g in self._groups
        }
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
                hist.append(
                    Sample(at, off, wm.log_start, wm.log_end, self._reset[g], wm.newest_timestamp)
                )
            for tp in [tp for tp in view.history if tp not in parts]:
                del view.history[tp]  # no longer committed, assigned or matching
        self._samples += 1

    def _partitions_of(
        self,
        group: str,
        info: GroupState | None,
        committed: Mapping[TP, int | None],
        counts: Mapping[str, int],
    ) -> dict[TP, int | None]:
        """Every partition of every topic the group consumes, with its commit (None: none)."""
        known = set(committed) | (set(info.assigned) if info else set())
        parts: dict[TP, int | None] = {}
        for t in sorted(self._topics_of(group, info, committed, counts)):
            if not self._matches((t, 0)):
                continue
            n = counts.get(t)
            if n:
                parts.update({(t, p): committed.get((t, p)) for p in range(n)})
            elif n == 0:
                # In the metadata with an error: keep what the group told us, so the watermarks
                # request says what is wrong instead of the partitions vanishing.
                parts.update({tp: committed.get(tp) for tp in known if tp[0] == t})
            # Not in the metadata at all: the topic was deleted; old commits on it are not lag.
        return parts

    def _topics_of(
        self,
        group: str,
        info: GroupState | None,
        committed: Mapping[TP, int | None],
        counts: Mapping[str, int],
    ) -> set[str]:
        """The topics the group consumes: committed on, assigned, or matching its pattern."""
        topics = {t for t, _ in committed} | ({t for t, _ in info.assigned} if info else set())
        if self._rx is not None:
            topics.update(t for t in counts if self._rx.search(t))
        if (own := self._group_rx.get(group)) is not None:
            # As `cdcr run` subscribes: never "_"-prefixed topics nor the excluded (dead letters).
            skip = self._group_excludes.get(group, frozenset())
            topics.update(
                t for t in counts if own.search(t) and not t.startswith("_") and t not in skip
            )
        return topics

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
        # One read for all: the oldest unconsumed message of each lagging partition, and the
        # newest one where the watermarks did not bring its timestamp.
        lookups = {
            (tp[0], tp[1], off)
            for v in self._views.values()
            for tp, h in v.history.items()
            if h[-1].offset_lag > 0
            for off in (h[-1].position, *(() if h[-1].newest else (h[-1].log_end - 1,)))
        }
        stamps = self._source.message_timestamps(lookups, timeout_s=self._ts_timeout)
        now = self._now()
        groups = []
        for g in self._groups:
            view = self._views[g]
            active = group_is_active(view.state, view.members)
            parts = [
                self._partition_lag(now, g, tp, hist, stamps, applied, active)
                for tp, hist in sorted(view.history.items())
            ]
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

    def _partition_lag(
        self,
        now: datetime,
        group: str,
        tp: TP,
        hist: Sequence[Sample],
        stamps: Mapping[tuple[str, int, int], datetime],
        applied: Mapping[tuple[str, str, int], AppliedOffset] | None,
        active: bool,
    ) -> PartitionLag:
        """One partition's line of the report, from its samples and the timestamps read."""
        topic, part = tp
        latest = hist[-1]
        oldest = stamps.get((topic, part, latest.position))
        newest = latest.newest or stamps.get((topic, part, latest.log_end - 1))
        secs, how = time_lag(now, hist, oldest, newest)
        age = None
        if latest.offset_lag == 0:
            age = 0.0
        elif oldest is not None:
            age = _seconds_since(now, oldest)
        ap = (applied or {}).get((group, topic, part))
        since = (
            _seconds_since(now, ap.updated_at)
            if ap is not None and ap.updated_at is not None
            else None
        )
        status = partition_status(
            hist,
            group_active=active,
            age_s=age,
            since_progress_s=since,
            thresholds=self._thresholds,
        )
        return PartitionLag(
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
            reason=latest.reason,
            position=latest.position,
            age_s=None if age is None else round(age, 3),
            applied_updated_at=ap.updated_at if ap else None,
        )

    def _matches(self, tp: TP) -> bool:
        return self._rx is None or bool(self._rx.search(tp[0]))

    def _check_known(
        self, described: Mapping[str, GroupState], committed: Mapping[str, Mapping[TP, int | None]]
    ) -> None:
        if self._rx is not None:
            # With --topic every matching partition is listed for every group given, including a
            # group that has not started yet (its partitions show no_commit), as docs/lag.md says.
            return
        unknown = [
            g
            for g in self._groups
            if g not in self._group_rx
            and not committed.get(g)
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
                "partitions_without_commit": sum(
                    1 for p in g.partitions if p.reason is Reason.NO_COMMIT
                ),
                "partitions": [
                    {
                        "topic": p.topic,
                        "partition": p.partition,
                        "committed": p.committed,
                        "reason": None if p.reason is None else p.reason.value,
                        "position": p.position,
                        "log_start": p.log_start,
                        "log_end": p.log_end,
                        "offset_lag": p.offset_lag,
                        "time_lag_s": p.time_lag_s,
                        "time_lag_source": p.time_lag_source.value,
                        "time_lag_over_30m": (p.time_lag_s or 0.0) > LONG_LAG_S,
                        "oldest_unconsumed_age_s": p.age_s,
                        "status": p.status.value,
                        "applied": p.applied,
                        "applied_event_time": _iso(p.applied_event_time),
                        "applied_updated_at": _iso(p.applied_updated_at),
                    }
                    for p in g.partitions
                ],
            }
            for g in report.groups
        ],
    }
