"""The passes of `cdcr reconcile` (continuous mode): one pass over the tables the group
applies, the loop that repeats it (waiting out target outages), and the background
re-verification budget of each pass."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from cdc_reconciler.config import Settings
from cdc_reconciler.errors import CdcrError, db_error_line, first_line
from cdc_reconciler.reconcile.metrics import ReconcileMetrics
from cdc_reconciler.reconcile.model import Env, Request, TableReport
from cdc_reconciler.reconcile.run import reconcile_table, reverify_table
from cdc_reconciler.reconcile.topics import AppliedTables, applied_tables
from cdc_reconciler.reconcile.windows import (
    checked_now,
)
from cdc_reconciler.store import watermarks as wm

# Continuous mode waits out a target outage, retrying the pass after this long (doubling).
OUTAGE_RETRY_S = 2.0
OUTAGE_RETRY_MAX_S = 60.0
# How long continuous mode sleeps when no window is closed: a tenth of a window, so a window is
# picked up soon after it closes without polling the databases constantly.
POLL_FRACTION = 0.1


def _passes(
    one: Callable[[Env, tuple[str, ...]], _Pass],
    env: Env,
    names: tuple[str, ...],
    once: bool,
    should_stop: Callable[[], bool],
) -> list[TableReport]:
    """Run ``one`` pass (``once``) or pass after pass until ``should_stop()``; the reports of
    the last pass."""
    outage_delay = OUTAGE_RETRY_S
    while True:
        try:
            reports = one(env, names)
        except (CdcrError, SQLAlchemyError) as exc:
            if once or isinstance(exc, wm.WatermarkConflict):
                raise
            # Continuous mode is always on: a target (or source, or Kafka) outage in the
            # middle of a pass is logged and the pass retried with backoff, never the end of
            # the process. Watermarks move only by compare-and-swap, so a retried pass is safe.
            logging.getLogger(__name__).error(
                "reconcile pass failed (%s); retrying in %.0fs", exc, outage_delay
            )
            if should_stop():
                return []
            time.sleep(outage_delay)
            outage_delay = min(outage_delay * 2, OUTAGE_RETRY_MAX_S)
            continue
        outage_delay = OUTAGE_RETRY_S
        env, names = reports.env, reports.names
        if once or should_stop():
            return reports.reports
        _log_pass(reports.reports)
        if not any(r.windows for r in reports.reports if not r.reverify):
            time.sleep(env.settings.reconcile.window_s * POLL_FRACTION)


def pass_summary(reports: Sequence[TableReport]) -> str | None:
    """One line saying what a continuous pass did, or None when it did nothing (no window closed
    and no table unverified): the line a user watching `cdcr reconcile` sees per pass."""
    windows = [w for r in reports for w in r.windows]
    unverified = [f"{r.table}: {r.unverified}" for r in reports if r.unverified]
    if not windows and not unverified:
        return None
    by_status: dict[str, int] = {}
    for w in windows:
        by_status[str(w.status)] = by_status.get(str(w.status), 0) + 1
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
    line = (
        f"pass: {len(windows)} window(s) of {sum(1 for r in reports if r.windows)} table(s)"
        + (f" ({statuses})" if statuses else "")
        + f", {sum(len(w.differences) for w in windows)} difference(s), "
        f"{sum(len(w.deferred) for w in windows)} key(s) deferred (in flight)"
    )
    if unverified:
        line += "; " + "; ".join(unverified)  # each reason says "not verified: …" itself
    return line


def _log_pass(reports: Sequence[TableReport]) -> None:
    line = pass_summary(reports)
    if line is not None:
        logging.getLogger(__name__).info("%s", line)


@dataclass(frozen=True)
class _Pass:
    env: Env
    names: tuple[str, ...]
    reports: list[TableReport]


def _one_pass(
    env: Env,
    req: Request,
    names: tuple[str, ...],
    tables: Sequence[str],
    once: bool,
    dry_run: bool,
    metrics: ReconcileMetrics | None,
    target: sa.Engine,
    *,
    reverify: bool = False,
    since: timedelta | None = None,
    sample_windows: int | None = None,
    seed: int | None = None,
) -> _Pass:
    """One pass over ``names`` (zero configuration: plus the tables the group started applying).
    Raises CdcrError or SQLAlchemyError when the target cannot be read at all."""
    settings = env.settings
    now_applied = _applied(settings, target)
    env = replace(env, applied=now_applied)
    if not tables:
        names = tuple(sorted({*names, *now_applied.tables()}))
    if reverify:
        horizon = since or timedelta(seconds=settings.reconcile.reverify_horizon_s)
        reports = [
            _or_say(
                t,
                partial(
                    reverify_table, env, req, t, since=horizon, sample=sample_windows, seed=seed
                ),
            )
            for t in names
        ]
    else:
        reports = [_reconcile_or_say(env, req, t) for t in names]
    if not once and not dry_run and settings.reconcile.reverify_every_s > 0:
        reports += _background_reverify(env, req, names)
    if metrics is not None:
        for r in reports:
            metrics.observe(r)
        metrics.refresh_open(target, names)
    return _Pass(env, names, reports)


def _applied(settings: Settings, target: sa.Engine) -> AppliedTables:
    try:
        with target.connect() as c:
            return applied_tables(c, settings, target)
    except SQLAlchemyError as exc:
        raise CdcrError(
            f"cannot read the applied offsets (is the target migrated? run `cdcr migrate`): "
            f"{db_error_line(exc)}"
        ) from exc


def _reconcile_or_say(env: Env, req: Request, table: str) -> TableReport:
    """reconcile_table, except that a table that cannot even be described (missing on a side,
    no key, bad mapping) is reported as not verified, in one line, instead of stopping the
    other tables."""
    return _or_say(table, lambda: reconcile_table(env, req, table))


def _or_say(table: str, work: Callable[[], TableReport]) -> TableReport:
    try:
        return work()
    except wm.WatermarkConflict:
        raise
    except CdcrError as exc:
        return TableReport(
            table, None, None, windows_behind=None, unverified=f"not verified: {exc}"
        )
    except SQLAlchemyError as exc:
        # One table's database error (a value its repair cannot write, a lock timeout) says so
        # for that table and leaves the others to be verified in the same pass.
        first = first_line(getattr(exc, "orig", None) or exc)
        return TableReport(
            table,
            None,
            None,
            windows_behind=None,
            unverified=f"not verified: {exc.__class__.__name__}: {first}",
        )


def _background_reverify(env: Env, req: Request, names: Sequence[str]) -> list[TableReport]:
    """One pass of the background budget: per table, the windows of the horizon last verified
    more than ``reverify_every_s`` ago, oldest-verified first, at most
    ``reverify_windows_per_pass``. Tables with nothing due are left out of the result."""
    r = env.settings.reconcile
    now = checked_now(env.now_getter)
    out = []
    for t in names:
        rep = _or_say(
            t,
            partial(
                reverify_table,
                env,
                replace(req, start=None, end=None),
                t,
                since=timedelta(seconds=r.reverify_horizon_s),
                due_before=now - timedelta(seconds=r.reverify_every_s),
                budget=r.reverify_windows_per_pass,
            ),
        )
        if rep.windows:
            out.append(rep)
    return out
