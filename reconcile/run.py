"""Reconcile closed windows of one table, oldest first: diff, confirm (candidates in flight are
deferred, reconcile/inflight.py), repair, re-verify, integrity and drift checks, audit, advance.

Statuses of a window:

- ``clean``: source and target agreed; the watermark moved past the window;
- ``repaired``: differences were repaired and re-verification found none left; watermark moved;
- ``open_extras``: only rows present in the target alone remain, recorded for review (deleted only
  with ``delete_extra``); they do not hold the watermark back, the review queue keeps them;
- ``unresolved``: something still differs after repair; the watermark stays, later windows of the
  table wait (the watermark never skips a window);
- ``check_failed``: rows agree (or were repaired) but one of the table's configured checks
  (reconcile/checks.py) failed; like ``unresolved``, the watermark stays;
- ``superseded``: another reconciler moved the watermark first (compare-and-swap lost); this
  reconciler re-reads the watermark and goes on from there;
- with ``Request.reverify`` (``reverify_table``, ``cdcr reconcile --reverify``) the same statuses
  for windows behind the watermark, which is never written; confirmed differences are also
  counted ``found_in_history``;
- ``differences`` / ``clean`` / ``check_failed`` under ``--dry-run``, which reads only and writes nothing at all
  (no run rows, no discrepancies, not even the watermark row).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.sql import quote_ident
from cdc_reconciler.reconcile import inflight, integrity
from cdc_reconciler.reconcile.checksum import TablePair
from cdc_reconciler.reconcile.model import ADVANCING, Env, Request, TableReport, _mapping, describe
from cdc_reconciler.reconcile.segments import Window
from cdc_reconciler.reconcile.window import reconcile_window
from cdc_reconciler.reconcile.windows import (
    checked_now,
    closed_through,
    closed_windows,
    floor_to_grid,
    partition_progress,
    windows_behind,
)
from cdc_reconciler.store import watermarks as wm
from cdc_reconciler.store.runs import RunStatus


def _first_change(env: Env, pair: TablePair) -> datetime | None:
    firsts: list[datetime] = []
    for engine, side in ((env.source, pair.source), (env.target, pair.target)):
        assert side.change_time_column is not None
        with engine.connect() as c:
            v = c.execute(
                sa.text(f"SELECT min({quote_ident(side.change_time_column)}) FROM {side.sql_name}")
            ).scalar()
        if isinstance(v, datetime):
            firsts.append(v)
    return min(firsts) if firsts else None


def _next_change(env: Env, pair: TablePair, after: datetime) -> datetime | None:
    """The earliest change time at or after ``after`` on either side (None: no later change)."""
    found: list[datetime] = []
    for engine, side in ((env.source, pair.source), (env.target, pair.target)):
        assert side.change_time_column is not None
        ct = quote_ident(side.change_time_column)
        with engine.connect() as c:
            v = c.execute(
                sa.text(f"SELECT min({ct}) FROM {side.sql_name} WHERE {ct} >= :a"), {"a": after}
            ).scalar()
        if isinstance(v, datetime):
            found.append(v)
    return min(found) if found else None


def _next_window(
    env: Env,
    pair: TablePair,
    start: datetime | None,
    first: datetime | None,
    closed: datetime,
    size: timedelta,
    until: datetime | None,
) -> Window | None:
    """The next closed window from ``start``. A run of empty grid windows is merged into one
    window up to the grid boundary before the next change, so quiet stretches (or a first run
    long after the data began) cost one comparison instead of one per 5 minutes."""
    w = next(closed_windows(start, first, closed, size, windowed=pair.windowed, until=until), None)
    if w is None or not pair.windowed or w.start is None:
        return w
    limit = (
        floor_to_grid(closed, size) if until is None else min(floor_to_grid(closed, size), until)
    )
    nxt = _next_change(env, pair, w.start)
    end = limit if nxt is None else max(w.end, min(limit, floor_to_grid(nxt, size)))
    return Window(w.start, end)


def closed_time(env: Env, table: str, now: datetime) -> datetime | None:
    """Up to when ``table``'s windows are closed (windows.closed_through over its partitions)."""
    s = env.settings
    with env.target.connect() as c:
        parts = [
            p for t in env.topics_of(table) for p in partition_progress(c, s.kafka.group_id, t)
        ]
    found: datetime | None = closed_through(
        parts, timedelta(seconds=s.reconcile.grace_s), now, env.log_ends
    )
    return found


def reconcile_table(env: Env, req: Request, table: str) -> TableReport:
    """Reconcile ``table``'s closed windows oldest first (see the module docstring). Raises
    CdcrError for configuration problems; database errors mark the current run ``failed`` and
    propagate."""
    pair, ttable = describe(env, table)
    now = checked_now(env.now_getter)
    closed = closed_time(env, table, now)
    with env.target.connect() as c:
        mark = wm.read(c, table)
    report = TableReport(table, closed, mark.reconciled_through if mark else None)
    if closed is None:
        report.windows_behind = 0  # nothing is proven closed, so nothing is behind
        report.unverified = _why_not_closed(env, table)
        return report
    if not req.dry_run and mark is None:
        with env.target.begin() as c:
            wm.ensure(c, table)
    size = timedelta(seconds=env.settings.reconcile.window_s)
    first = _first_change(env, pair) if pair.windowed else None
    explicit = req.start is not None
    current = mark.reconciled_through if mark else None
    pos = req.start if explicit else current
    with env.target.connect() as c:
        pending = tuple(inflight.pending(c, table))  # deferred by earlier passes: re-check
    m = _mapping(env.settings, table)
    report.drift = integrity.schema_drift(
        env.source,
        env.target,
        table,
        ttable.qualified,
        include_columns=m.include_columns,
        exclude_columns=m.exclude_columns,
        key_columns=pair.key_columns,
    )
    while True:
        w = _next_window(env, pair, pos, first, closed, size, req.end)
        if w is None:
            break
        r = reconcile_window(env, req, pair, ttable, w, current, pending, report.drift)
        pending = ()
        report.windows.append(r)
        step = _after_window(env, req, table, w, r.status, current, explicit)
        if step is None:
            break  # the watermark cannot pass an unresolved window: later windows wait
        pos, current = step
    if pending and current is not None:
        # No window ran this pass: re-check the deferred keys on their own (no diff, no checks),
        # recorded as a run over the verified range; it never moves the watermark.
        r = reconcile_window(
            env, req, pair, ttable, Window(None, current), current, pending, recheck_only=True
        )
        report.windows.append(r)
    _close_report(env, report, table, closed, size, first)
    return report


def _after_window(
    env: Env,
    req: Request,
    table: str,
    w: Window,
    status: str,
    current: datetime | None,
    explicit: bool,
) -> tuple[datetime | None, datetime | None] | None:
    """Where the next window starts and the watermark now is after window ``w`` ended in
    ``status``; None when no later window may run this pass."""
    if req.dry_run:
        return w.end, current
    if status == RunStatus.SUPERSEDED:
        with env.target.connect() as c:
            mark = wm.read(c, table)
        current = mark.reconciled_through if mark else None
        return (w.end if explicit else current), current
    if status in ADVANCING:
        return w.end, (w.end if w.start == current else current)
    if explicit:
        return w.end, current  # an explicit range is reported whole; the watermark stays behind
    return None


def _close_report(
    env: Env,
    report: TableReport,
    table: str,
    closed: datetime,
    size: timedelta,
    first: datetime | None,
) -> None:
    """The watermark and windows behind after the pass, and why nothing was verified."""
    with env.target.connect() as c:
        mark = wm.read(c, table)
    report.reconciled_through = mark.reconciled_through if mark else None
    report.windows_behind = windows_behind(
        report.reconciled_through, closed, size, first_change=first
    )
    if report.windows_behind is None:  # never reconciled, no change time: one whole-table window
        report.windows_behind = 1
    if not report.windows and report.reconciled_through is None:
        report.unverified = (
            f"no window is closed yet (closed through {closed.isoformat()}, windows of "
            f"{env.settings.reconcile.window_s}s, first change "
            f"{'unknown' if first is None else first.isoformat()})"
        )


def _why_not_closed(env: Env, table: str) -> str:
    topics = env.topics_of(table)
    group = env.settings.kafka.group_id
    if not topics:
        known = env.applied.tables() if env.applied is not None else []
        listed = ", ".join(known[:5]) + (" …" if len(known) > 5 else "") if known else "none"
        return (
            f"not verified: consumer group {group!r} has applied no topic routed to {table} "
            f"(tables it applies: {listed}); check CDCR_KAFKA__GROUP_ID"
        )
    return (
        f"not verified: no applied offsets of group {group!r} on {', '.join(topics)} prove "
        "closure yet (no event time applied)"
    )


def reverify_table(
    env: Env,
    req: Request,
    table: str,
    *,
    since: timedelta | None,
    due_before: datetime | None = None,
    budget: int | None = None,
    sample: int | None = None,
    seed: int | None = None,
) -> TableReport:
    """Re-verify ``table``'s already-verified windows (reconcile/history.py): grid windows from
    ``now - since`` (or ``req.start``; never before the first change) to the watermark (or
    ``req.end`` when earlier), oldest-verified first, optionally only those last verified before
    ``due_before``, at most ``budget``, or a random ``sample``. Each goes through the same diff,
    in-flight confirmation, repair and review path as a new window; the watermark is read, never
    written. A table with nothing verified yet is reported as not verified."""
    from cdc_reconciler.reconcile import history

    req = replace(req, reverify=True)
    pair, ttable = describe(env, table)
    now = checked_now(env.now_getter)
    with env.target.connect() as c:
        mark = wm.read(c, table)
    through = mark.reconciled_through if mark else None
    report = TableReport(table, None, through, reverify=True)
    if through is None:
        report.unverified = "not verified: nothing of the table is verified yet (no watermark)"
        return report
    size = timedelta(seconds=env.settings.reconcile.window_s)
    hi = through if req.end is None else min(through, req.end)
    if not pair.windowed:
        # No change time: history is the whole table, compared by key range in one window.
        windows = [Window(None, hi)]
    else:
        first = _first_change(env, pair)
        lo = req.start if req.start is not None else (None if since is None else now - since)
        floor = None if first is None else floor_to_grid(first, size)
        if lo is None or (floor is not None and lo < floor):
            lo = floor
        if lo is None or lo >= hi:
            return report  # nothing changed in the range: nothing to re-verify
        with env.target.connect() as c:
            past = history.last_verified(c, table, lo, hi, size)
        windows = history.choose(
            past, due_before=due_before, budget=budget, sample=sample, seed=seed
        )
    if not windows:
        return report  # nothing due
    m = _mapping(env.settings, table)
    drift = integrity.schema_drift(
        env.source,
        env.target,
        table,
        ttable.qualified,
        include_columns=m.include_columns,
        exclude_columns=m.exclude_columns,
        key_columns=pair.key_columns,
    )
    report.drift = drift
    for w in windows:
        report.windows.append(reconcile_window(env, req, pair, ttable, w, None, (), drift))
    return report
