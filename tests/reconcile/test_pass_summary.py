"""Continuous `cdcr reconcile` says what each pass did in one log line (a new-user trial saw
only the metrics line for 25 s and could not tell it was working)."""

from __future__ import annotations

from datetime import UTC, datetime

from cdc_reconciler.reconcile.diff import Difference, Kind
from cdc_reconciler.reconcile.model import TableReport, WindowReport
from cdc_reconciler.reconcile.passes import pass_summary
from cdc_reconciler.reconcile.segments import Window

T = datetime(2026, 1, 1, tzinfo=UTC)


def _w(table: str, status: str, diffs: int = 0, deferred: int = 0) -> WindowReport:
    return WindowReport(
        table,
        Window(None, T),
        status,
        tuple(Difference(Kind.MISSING, (i,)) for i in range(diffs)),
        deferred=tuple(((i,), "in_flight") for i in range(deferred)),
    )


def test_a_pass_that_did_something_is_one_line() -> None:
    reports = [
        TableReport("public.a", T, T, windows=[_w("public.a", "clean", deferred=3)]),
        TableReport("public.b", T, T, windows=[_w("public.b", "repaired", diffs=2)] * 2),
        # As reconcile words the reason (passes._or_say, run.py): it starts "not verified:".
        TableReport("public.h", None, None, unverified="not verified: has no primary key"),
    ]
    assert pass_summary(reports) == (
        "pass: 3 window(s) of 2 table(s) (1 clean, 2 repaired), 4 difference(s), "
        "3 key(s) deferred (in flight); public.h: not verified: has no primary key"
    )


def test_a_pass_with_nothing_closed_says_nothing() -> None:
    assert pass_summary([TableReport("public.a", T, T)]) is None
    assert pass_summary([]) is None
