"""Window closure and iteration with an injected clock (no services)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cdc_reconciler.reconcile.segments import Window
from cdc_reconciler.reconcile.windows import PartitionProgress, closed_through, closed_windows

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
M5 = timedelta(minutes=5)
G = timedelta(seconds=30)


def _never(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    raise AssertionError(f"log end asked for {tps}")


def test_closure_is_the_slowest_partition_minus_grace() -> None:
    parts = [PartitionProgress("cdc.s.t", 0, 10, T), PartitionProgress("cdc.s.t", 1, 5, T - M5)]
    got = closed_through(parts, G, T + timedelta(hours=1), lambda tps: {tp: 100 for tp in tps})
    assert got == T - M5 - G


def test_idle_partition_at_log_end_does_not_hold_closure() -> None:
    parts = [PartitionProgress("cdc.s.t", 0, 10, T), PartitionProgress("cdc.s.t", 1, 5, T - M5)]
    now = T + timedelta(hours=1)
    got = closed_through(parts, G, now, lambda tps: {("cdc.s.t", 0): 99, ("cdc.s.t", 1): 5})
    assert got == T - G  # partition 1 is idle; partition 0 is behind the clock at T


def test_clock_bounds_closure_and_no_partitions_means_not_closed() -> None:
    parts = [PartitionProgress("cdc.s.t", 0, 10, T + timedelta(days=1))]
    assert closed_through(parts, G, T, _never) == T - G
    assert closed_through([], G, T, _never) is None


def test_partition_without_event_time_and_not_idle_blocks() -> None:
    parts = [PartitionProgress("cdc.s.t", 0, 0, None)]
    assert closed_through(parts, G, T, lambda tps: {tps[0]: 3}) is None
    assert closed_through(parts, G, T, lambda tps: {tps[0]: 0}) == T - G


def test_windowed_iteration_from_watermark() -> None:
    got = list(closed_windows(T, None, T + timedelta(minutes=17), M5, windowed=True))
    assert got == [Window(T, T + M5), Window(T + M5, T + 2 * M5), Window(T + 2 * M5, T + 3 * M5)]


def test_windowed_first_window_covers_history_up_to_first_change() -> None:
    first = T + timedelta(minutes=2)
    got = list(closed_windows(None, first, T + timedelta(minutes=11), M5, windowed=True))
    assert got == [Window(None, T + M5), Window(T + M5, T + 2 * M5)]


def test_until_caps_and_unwindowed_is_one_window() -> None:
    got = list(closed_windows(T, None, T + timedelta(hours=1), M5, windowed=True, until=T + 2 * M5))
    assert got == [Window(T, T + M5), Window(T + M5, T + 2 * M5)]
    assert list(closed_windows(T, None, T + timedelta(minutes=12), M5, windowed=False)) == [
        Window(T, T + 2 * M5)
    ]
    assert (
        list(closed_windows(T + 2 * M5, None, T + timedelta(minutes=12), M5, windowed=False)) == []
    )


def test_gap_windows_newest_first_and_counted() -> None:
    from cdc_reconciler.reconcile.windows import gap_windows, windows_behind

    closed = T + timedelta(minutes=17)  # grid floor: T + 15 min
    gaps = gap_windows(T, closed, M5)
    assert gaps == [Window(T + 2 * M5, T + 3 * M5), Window(T + M5, T + 2 * M5), Window(T, T + M5)]
    assert windows_behind(T, closed, M5) == 3
    assert gap_windows(T, closed, M5, limit=1) == gaps[:1]
    # A watermark off the grid (an explicit --to) leaves a partial oldest window.
    off = T + timedelta(minutes=12)
    assert gap_windows(off, closed, M5) == [Window(off, T + 3 * M5)]
    assert windows_behind(off, closed, M5) == 1
    # Caught up, not closed, never reconciled.
    assert gap_windows(T + 3 * M5, closed, M5) == [] and windows_behind(T + 3 * M5, closed, M5) == 0
    assert gap_windows(T, None, M5) == [] and windows_behind(T, None, M5) == 0
    assert gap_windows(None, closed, M5) == [Window(None, T + 3 * M5)]
    assert windows_behind(None, closed, M5) is None
    assert windows_behind(None, closed, M5, first_change=T + timedelta(minutes=1)) == 3
