"""The lag status and time-lag rules, on plain values (no services)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.lag import (
    TP,
    LagError,
    LagMonitor,
    Reason,
    Sample,
    Status,
    Thresholds,
    TimeLagSource,
    group_is_active,
    group_status,
    interpolate_arrival,
    partition_status,
    report_as_json,
    time_lag,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def samples(*rows: tuple[int | None, int], start: int = 0, step_s: float = 1.0) -> list[Sample]:
    """Samples of (committed, log_end), one per ``step_s`` from T0."""
    return [
        Sample(T0 + timedelta(seconds=i * step_s), c, start, e) for i, (c, e) in enumerate(rows)
    ]


def status(
    rows: list[Sample],
    *,
    active: bool = True,
    time_lag_s: float | None = 0.0,
    thresholds: Thresholds | None = None,
) -> Status:
    return partition_status(
        rows, group_active=active, age_s=time_lag_s, thresholds=thresholds or Thresholds()
    )


class TestPartitionStatus:
    def test_caught_up_is_ok_even_without_members(self) -> None:
        assert status(samples((10, 10), (10, 10)), active=False) is Status.OK

    def test_caught_up_now_is_ok_after_lag(self) -> None:
        assert status(samples((5, 10), (10, 10))) is Status.OK

    def test_committed_going_back_is_rewind(self) -> None:
        assert status(samples((50, 60), (20, 60), (21, 60))) is Status.REWIND

    def test_rewind_wins_over_stop(self) -> None:
        assert status(samples((50, 60), (20, 60)), active=False) is Status.REWIND

    def test_no_members_with_lag_is_stop(self) -> None:
        assert status(samples((10, 20), (10, 25), (10, 30)), active=False) is Status.STOP

    def test_single_sample_without_members_is_stop(self) -> None:
        assert status(samples((10, 20)), active=False) is Status.STOP

    def test_no_commit_without_members_is_stop(self) -> None:
        assert status(samples((None, 20)), active=False) is Status.STOP

    def test_standing_offset_with_old_messages_is_stall(self) -> None:
        assert status(samples((10, 20), (10, 20)), time_lag_s=61.0) is Status.STALL

    def test_standing_offset_with_young_messages_is_ok(self) -> None:
        # Between two commits the offset stands still: not a stall yet.
        assert status(samples((10, 20), (10, 22)), time_lag_s=2.0) is Status.OK

    def test_stall_threshold_is_configurable(self) -> None:
        th = Thresholds(stall_after_s=1.0)
        assert status(samples((10, 20), (10, 20)), time_lag_s=2.0, thresholds=th) is Status.STALL

    def test_standing_offset_unknown_age_uses_history_span(self) -> None:
        rows = samples((10, 20), (10, 20), step_s=61.0)
        assert status(rows, time_lag_s=None) is Status.STALL
        assert status(samples((10, 20), (10, 20)), time_lag_s=None) is Status.OK

    def test_moving_but_lag_growing_over_window_is_warn(self) -> None:
        assert status(samples((10, 20), (12, 25), (14, 30))) is Status.WARN

    def test_growing_lag_needs_enough_samples(self) -> None:
        assert status(samples((10, 20), (12, 25))) is Status.OK

    def test_moving_with_lag_shrinking_once_is_ok(self) -> None:
        assert status(samples((10, 20), (12, 25), (20, 26), (22, 30))) is Status.OK

    def test_committed_below_log_start_counts_from_log_start(self) -> None:
        rows = [Sample(T0, 5, 100, 100)]
        assert rows[0].position == 100 and rows[0].offset_lag == 0
        assert status(rows, active=False) is Status.OK

    def test_needs_a_sample(self) -> None:
        with pytest.raises(ValueError):
            status([])

    def test_no_commit_with_young_lag_and_members_is_warn_never_ok(self) -> None:
        rows = samples((None, 20))
        assert rows[0].reason is Reason.NO_COMMIT and rows[0].offset_lag == 20
        assert status(rows, time_lag_s=1.0) is Status.WARN

    def test_no_commit_on_an_empty_partition_is_ok(self) -> None:
        assert status(samples((None, 0)), active=False) is Status.OK

    def test_no_commit_with_latest_starts_at_the_log_end(self) -> None:
        row = Sample(T0, None, 3, 20, reset="latest")
        assert (row.position, row.offset_lag, row.reason) == (20, 0, Reason.NO_COMMIT)

    def test_commit_below_log_start_is_out_of_range_and_restarts_per_reset(self) -> None:
        early = Sample(T0, 5, 100, 150)
        assert (early.reason, early.position, early.offset_lag) == (
            Reason.OFFSET_OUT_OF_RANGE,
            100,
            50,
        )
        assert status([early], time_lag_s=1.0) is Status.WARN
        late = Sample(T0, 5, 100, 150, reset="latest")
        assert (late.position, late.offset_lag) == (150, 0)

    def test_commit_beyond_log_end_is_out_of_range(self) -> None:
        row = Sample(T0, 500, 0, 150)  # topic recreated: the consumer resets to the start
        assert (row.reason, row.position, row.offset_lag) == (Reason.OFFSET_OUT_OF_RANGE, 0, 150)

    def test_recent_applied_progress_is_not_stall_even_with_old_data(self) -> None:
        rows = samples((10, 20))  # one sample: a one-shot cannot see the offset move
        assert (
            partition_status(rows, group_active=True, age_s=7200.0, since_progress_s=2.0)
            is Status.OK
        )
        assert (
            partition_status(rows, group_active=True, age_s=7200.0, since_progress_s=61.0)
            is Status.STALL
        )

    def test_burst_after_a_quiet_spell_is_not_stall(self) -> None:
        rows = samples((10, 20))  # applied long ago (quiet topic), the waiting records are young
        assert (
            partition_status(rows, group_active=True, age_s=0.5, since_progress_s=3600.0)
            is Status.OK
        )


class TestGroupStatus:
    def test_worst_partition_wins(self) -> None:
        assert group_status([Status.OK, Status.WARN, Status.STALL]) is Status.STALL
        assert group_status([Status.REWIND, Status.WARN]) is Status.REWIND
        assert group_status([Status.STOP, Status.STALL]) is Status.STOP

    def test_no_partitions_is_ok(self) -> None:
        assert group_status([]) is Status.OK

    @pytest.mark.parametrize(
        ("state", "members", "active"),
        [
            ("STABLE", 2, True),
            ("EMPTY", 0, False),
            ("DEAD", 0, False),
            ("PREPARING_REBALANCING", 0, True),
            ("UNKNOWN", 0, False),
        ],
    )
    def test_group_activity(self, state: str, members: int, active: bool) -> None:
        assert group_is_active(state, members) is active


class TestTimeLag:
    def test_caught_up_is_zero(self) -> None:
        assert time_lag(T0, samples((10, 10)), None) == (0.0, TimeLagSource.CAUGHT_UP)

    def test_from_message_timestamp(self) -> None:
        got = time_lag(T0, samples((5, 10)), T0 - timedelta(seconds=42.5))
        assert got == (42.5, TimeLagSource.TIMESTAMP)

    def test_future_timestamp_is_zero_not_negative(self) -> None:
        got = time_lag(T0, samples((5, 10)), T0 + timedelta(seconds=30))
        assert got == (0.0, TimeLagSource.TIMESTAMP)

    def test_interpolated_from_log_end_history(self) -> None:
        # Offsets 10..19 arrived between t=0 and t=10 s; offset 14 is the 5th of 10: t = 5 s.
        rows = samples((10, 10), (10, 20), (10, 20), step_s=10.0)
        now = rows[-1].at
        secs, how = time_lag(now, rows, None)
        assert how is TimeLagSource.ESTIMATE
        assert secs == pytest.approx(20.0 - 0.0 - 10.0 * (1 / 10))

    def test_position_older_than_history_is_lower_bound(self) -> None:
        rows = samples((10, 20), (10, 25), step_s=5.0)
        assert time_lag(T0 + timedelta(seconds=8), rows, None) == (8.0, TimeLagSource.LOWER_BOUND)

    def test_interpolate_needs_a_bracket(self) -> None:
        assert interpolate_arrival(samples((0, 20), (0, 30)), 5) is None


@dataclass(frozen=True)
class _G:
    state: str
    members: int
    assigned: frozenset[TP] = frozenset()


@dataclass(frozen=True)
class _W:
    log_start: int
    log_end: int
    newest_timestamp: datetime | None = None


class _FakeSource:
    """Scripted cluster answers, one per sample, for the monitor's bookkeeping."""

    def __init__(
        self,
        committed: list[dict[TP, int | None]],
        ends: list[dict[TP, int]],
        state: str = "STABLE",
        members: int = 1,
        ts: datetime | None = None,
    ) -> None:
        self.committed, self.ends, self.i = committed, ends, -1
        self.state, self.members, self.ts = state, members, ts

    def list_groups(self) -> list[str]:
        return ["g"]

    def describe_groups(self, groups: Iterable[str]) -> Mapping[str, _G]:
        self.i += 1
        return {g: _G(self.state, self.members) if g == "g" else _G("DEAD", 0) for g in groups}

    def committed_offsets(self, groups: Iterable[str]) -> Mapping[str, Mapping[TP, int | None]]:
        return {g: (self.committed[self.i] if g == "g" else {}) for g in groups}

    def topic_partitions(
        self, pattern: str | None = None, *, skip_errors: bool = False
    ) -> Mapping[str, int]:
        return {"t": 2, "other": 1}

    def watermarks(self, partitions: Iterable[TP]) -> Mapping[TP, _W]:
        return {tp: _W(0, self.ends[self.i].get(tp, 0)) for tp in partitions}

    def message_timestamps(
        self, wanted: Iterable[tuple[str, int, int]], *, timeout_s: float = 1.0
    ) -> Mapping[tuple[str, int, int], datetime]:
        # Message at offset o is stamped ts + o seconds.
        return {w: self.ts + timedelta(seconds=w[2]) for w in wanted} if self.ts else {}


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class TestMonitor:
    def test_report_from_history_with_fake_clock(self) -> None:
        src = _FakeSource(
            committed=[{("t", 0): 5, ("t", 1): 7}, {("t", 0): 5, ("t", 1): 7}],
            ends=[{("t", 0): 10, ("t", 1): 7}, {("t", 0): 12, ("t", 1): 7}],
            state="EMPTY",
            members=0,
            ts=T0 - timedelta(seconds=30),
        )
        clock = _Clock()
        mon = LagMonitor(src, ["g"], now_getter=clock)
        mon.sample()
        clock.now = T0 + timedelta(seconds=1)
        mon.sample()
        rep = mon.report()
        (g,) = rep.groups
        assert g.status is Status.STOP and g.total_offset_lag == 7
        p0, p1 = g.partitions
        # Behind the log end: newest (offset 11, T0-19s) minus oldest unconsumed (5, T0-25s);
        # the oldest unconsumed waited from T0-25s to now (T0+1s).
        assert (p0.offset_lag, p0.time_lag_s, p0.status) == (7, 6.0, Status.STOP)
        assert p0.age_s == 26.0 and p0.reason is None and p0.position == 5
        assert (p1.offset_lag, p1.time_lag_s, p1.status) == (0, 0.0, Status.OK)
        doc = report_as_json(rep)
        assert doc["schema_version"] == 1 and doc["generated_at"] == "2026-01-01T12:00:01Z"
        assert doc["groups"][0]["partitions"][0]["time_lag_source"] == "timestamp"

    def test_topic_pattern_adds_uncommitted_partitions(self) -> None:
        src = _FakeSource(committed=[{("t", 0): 5}], ends=[{("t", 0): 5, ("t", 1): 3}])
        mon = LagMonitor(src, ["g"], topic_pattern="^t$", now_getter=_Clock())
        mon.sample()
        parts = mon.report().groups[0].partitions
        assert [(p.partition, p.committed, p.offset_lag) for p in parts] == [
            (0, 5, 0),
            (1, None, 3),
        ]

    def test_every_partition_of_a_committed_topic_and_the_group_pattern(self) -> None:
        src = _FakeSource(
            committed=[{("t", 0): 5}], ends=[{("t", 0): 5, ("t", 1): 3, ("other", 0): 4}]
        )
        mon = LagMonitor(src, ["g"], group_patterns={"g": "^other$"}, now_getter=_Clock())
        mon.sample()
        (g,) = mon.report().groups
        assert [
            (p.topic, p.partition, p.committed, p.offset_lag, p.reason) for p in g.partitions
        ] == [
            ("other", 0, None, 4, Reason.NO_COMMIT),
            ("t", 0, 5, 0, None),
            ("t", 1, None, 3, Reason.NO_COMMIT),
        ]
        assert g.total_offset_lag == 7
        assert report_as_json(mon.report())["groups"][0]["partitions_without_commit"] == 2

    def test_newest_timestamp_from_the_watermarks_spares_a_read(self) -> None:
        asked: list[tuple[str, int, int]] = []

        class Src(_FakeSource):
            def watermarks(self, partitions: Iterable[TP]) -> Mapping[TP, _W]:
                return {tp: _W(0, 10, T0) for tp in partitions}

            def message_timestamps(
                self, wanted: Iterable[tuple[str, int, int]], *, timeout_s: float = 1.0
            ) -> Mapping[tuple[str, int, int], datetime]:
                asked.extend(wanted)
                return {w: T0 - timedelta(seconds=40) for w in asked}

        mon = LagMonitor(Src([{("t", 0): 4}], [{}]), ["g"], now_getter=_Clock())
        mon.sample()
        p, _ = mon.report().groups[0].partitions
        assert sorted(asked) == [("t", 0, 4), ("t", 1, 0)]  # the oldest unconsumed only
        assert (p.time_lag_s, p.age_s) == (40.0, 40.0)

    def test_group_pattern_skips_excluded_and_underscore_topics(self) -> None:
        class Src(_FakeSource):
            def topic_partitions(
                self, pattern: str | None = None, *, skip_errors: bool = False
            ) -> Mapping[str, int]:
                return {"cdc.s.t": 1, "cdc.cdcr.dlq": 1, "_cdc.x.y": 1}

        mon = LagMonitor(
            Src([{}], [{}]),
            ["g"],
            group_patterns={"g": r"^_?cdc\.[^.]+\.[^.]+$"},
            group_excludes={"g": {"cdc.cdcr.dlq"}},
            now_getter=_Clock(),
        )
        mon.sample()
        assert [p.topic for p in mon.report().groups[0].partitions] == ["cdc.s.t"]

    def test_topic_with_a_metadata_error_keeps_its_known_partitions_deleted_one_goes(self) -> None:
        class Src(_FakeSource):
            def topic_partitions(
                self, pattern: str | None = None, *, skip_errors: bool = False
            ) -> Mapping[str, int]:
                assert skip_errors  # an unrelated topic's error must not fail the report
                return {"t": 2, "busy": 0}  # "gone" was deleted

        src = Src([{("t", 0): 1, ("busy", 3): 2, ("gone", 0): 5}], [{}])
        mon = LagMonitor(src, ["g"], now_getter=_Clock())
        mon.sample()
        got = [(p.topic, p.partition) for p in mon.report().groups[0].partitions]
        assert got == [("busy", 3), ("t", 0), ("t", 1)]

    def test_group_with_a_pattern_is_never_unknown(self) -> None:
        src = _FakeSource([{}], [{("other", 0): 4}])
        mon = LagMonitor(src, ["fresh"], group_patterns={"fresh": "^other$"}, now_getter=_Clock())
        mon.sample()
        (g,) = mon.report().groups
        assert (g.state, g.total_offset_lag, g.status) == ("DEAD", 4, Status.STOP)

    def test_bad_offset_reset_is_a_lag_error(self) -> None:
        with pytest.raises(LagError, match="earliest or latest"):
            LagMonitor(_FakeSource([{}], [{}]), ["g"], offset_reset="smallest")

    def test_unknown_group_is_a_cdcr_error(self) -> None:
        mon = LagMonitor(_FakeSource([{}], [{}]), ["g", "nope"], now_getter=_Clock())
        with pytest.raises(LagError, match="nope") as info:
            mon.sample()
        assert isinstance(info.value, CdcrError)


# Modules that cost 40-200 ms each to import: `cdcr lag` must answer 3 groups x 64 partitions
# in under 0.5 s with process start, so no command's start-up may pull them in.
HEAVY_AT_STARTUP = ("sqlalchemy", "duckdb", "confluent_kafka", "pandas", "pyarrow", "numpy")


def test_cdcr_startup_imports_no_heavy_module() -> None:
    code = (
        "import sys; from cdc_reconciler.cli import main; "
        f"print([m for m in {HEAVY_AT_STARTUP!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2] / "tests",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", (
        f"importing cdc_reconciler.cli loads {out.stdout.strip()}: import them inside the "
        "command that needs them"
    )
