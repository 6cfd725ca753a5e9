"""The catch-up rule of in-flight confirmation (reconcile/inflight.py), without services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cdc_reconciler.reconcile.inflight import caught_up
from cdc_reconciler.reconcile.windows import PartitionProgress

T = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def part(p: int, offset: int, event: datetime | None) -> PartitionProgress:
    return PartitionProgress("cdc.public.t", p, offset, event)


def never(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    raise AssertionError("log ends must not be asked")


def test_every_partition_applied_an_event_committed_at_or_after_the_snapshot() -> None:
    parts = [part(0, 5, T), part(1, 9, T + timedelta(seconds=1))]
    assert caught_up(parts, T, never, allow_idle=False)


def test_a_partition_behind_the_snapshot_holds_it_back_unless_idle_at_its_end() -> None:
    parts = [part(0, 5, T + timedelta(seconds=1)), part(1, 9, T - timedelta(microseconds=1))]
    assert not caught_up(parts, T, never, allow_idle=False)  # not even asked before the settle
    assert not caught_up(parts, T, lambda tps: {tp: 10 for tp in tps}, allow_idle=True)
    assert caught_up(parts, T, lambda tps: {tp: 9 for tp in tps}, allow_idle=True)


def test_nothing_applied_proves_nothing() -> None:
    assert not caught_up([], T, never, allow_idle=True)
    assert not caught_up([part(0, 0, None)], T, lambda tps: {}, allow_idle=True)
