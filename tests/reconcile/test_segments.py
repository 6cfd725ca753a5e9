"""Pure segment logic: splitting covers exactly the parent, immutably."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cdc_reconciler.reconcile.segments import (
    Segment,
    Window,
    integer_split_points,
    quantile_positions,
)


def test_split_is_a_partition_and_parent_unchanged() -> None:
    seg = Segment("public.t", (10,), (20,))
    children = seg.split_at([(12,), (15,)])
    assert [(c.lo, c.hi) for c in children] == [((10,), (12,)), ((12,), (15,)), ((15,), (20,))]
    assert seg == Segment("public.t", (10,), (20,))
    assert all(c.table == "public.t" and c.window is None for c in children)


def test_split_keeps_open_bounds_and_window() -> None:
    w = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 5, tzinfo=UTC))
    seg = Segment("s.t", window=w)
    children = seg.split_at([(5,)])
    assert children[0].lo is None and children[0].hi == (5,)
    assert children[1].lo == (5,) and children[1].hi is None
    assert all(c.window == w for c in children)


def test_split_drops_points_on_bounds_and_duplicates() -> None:
    seg = Segment("s.t", (10,), (20,))
    assert seg.split_at([(10,), (20,)]) == [seg]
    assert [c.hi for c in seg.split_at([(12,), (12,), (15,)])] == [(12,), (15,), (20,)]


def test_composite_keys_split_lexicographically() -> None:
    seg = Segment("s.t", (1, "a"), (3, ""))
    children = seg.split_at([(1, "m"), (2, "a")])
    assert len(children) == 3
    assert children[1].contains_key((1, "z"))
    assert not children[1].contains_key((2, "a"))
    assert children[2].contains_key((2, "zz"))


@pytest.mark.parametrize(
    ("lo", "hi", "parts"),
    [(0, 100, 4), (5, 7, 16), (-50, 1000003, 256), (0, 1, 8), (2**62, 2**63 - 1, 32)],
)
def test_integer_split_points_partition_range(lo: int, hi: int, parts: int) -> None:
    pts = integer_split_points(lo, hi, parts)
    assert len(pts) <= parts - 1
    values = [p[0] for p in pts]
    assert values == sorted(set(values))
    assert all(lo < v < hi for v in values)
    children = Segment("t", (lo,), (hi,)).split_at(pts)
    assert children[0].lo == (lo,) and children[-1].hi == (hi,)


def test_window_rejects_naive_and_empty() -> None:
    with pytest.raises(ValueError):
        Window(datetime(2026, 1, 1), datetime(2026, 1, 2, tzinfo=UTC))  # noqa: DTZ001
    t = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        Window(t, t)


def test_quantile_step() -> None:
    assert quantile_positions(1000, 10) == 100
    assert quantile_positions(1001, 10) == 101
    assert quantile_positions(1, 10) == 1
