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

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from cdc_reconciler.config import Settings, TableMapping
from cdc_reconciler.connectors.postgres.reflect import reflect_table
from cdc_reconciler.connectors.postgres.sql import quote_ident
from cdc_reconciler.connectors.postgres.table import TargetTable, key_text
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.reconcile import checks as chk
from cdc_reconciler.reconcile import inflight, integrity
from cdc_reconciler.reconcile import repair as rp
from cdc_reconciler.reconcile.checksum import TablePair, describe_pair, split_name
from cdc_reconciler.reconcile.diff import Difference, DiffOptions, DiffResult, Kind, diff_table
from cdc_reconciler.reconcile.segments import Key, Window
from cdc_reconciler.reconcile.topics import AppliedTables
from cdc_reconciler.reconcile.windows import (
    Clock,
    LogEnds,
    PartitionProgress,
    checked_now,
    closed_through,
    closed_windows,
    floor_to_grid,
    partition_progress,
    table_topic,
    windows_behind,
)
from cdc_reconciler.store import discrepancies, runs
from cdc_reconciler.store import watermarks as wm
from cdc_reconciler.store.discrepancies import NewDiscrepancy
from cdc_reconciler.store.runs import RunStatus

ADVANCING = runs.VERIFIED


@dataclass(frozen=True, slots=True)
class Request:
    tables: tuple[str, ...]
    start: datetime | None = None  # --from: reconcile this range instead of from the watermark
    end: datetime | None = None  # --to
    dry_run: bool = False
    delete_extra: bool = False
    diff: DiffOptions = DiffOptions()
    # Re-verify already-verified windows (reconcile/history.py): same diff, confirmation, repair
    # and review path, but the watermark row is never touched and differences are counted as
    # ``found_in_history``.
    reverify: bool = False


@dataclass(frozen=True, slots=True)
class Env:
    settings: Settings
    source: sa.Engine
    target: sa.Engine
    now_getter: Clock
    log_ends: LogEnds
    replay_hook: rp.ReplayHook = rp.kafka_replay_hook
    on_window: Callable[[str, Window], None] | None = None  # progress
    applied: AppliedTables | None = None  # the group's topics per table (reconcile/topics.py)

    def topics_of(self, table: str) -> tuple[str, ...]:
        """The topics whose applied offsets prove ``table``'s closure: the ones the group applies
        for it; without that knowledge, ``<topic_prefix>.<table>``."""
        if self.applied is not None:
            found: tuple[str, ...] = self.applied.topics_of(table)
            return found
        return (table_topic(self.settings.kafka.topic_prefix, table),)


@dataclass(slots=True)
class WindowReport:
    table: str
    window: Window
    status: str
    differences: tuple[Difference, ...] = ()
    counts: dict[str, Any] = field(default_factory=dict)
    run_id: uuid.UUID | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    # Candidates dropped as in flight (inflight.py): key -> reason. Never discrepancies.
    deferred: tuple[tuple[Key, str], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "window_start": None if self.window.start is None else self.window.start.isoformat(),
            "window_end": self.window.end.isoformat(),
            "status": self.status,
            "run_id": None if self.run_id is None else str(self.run_id),
            "counts": self.counts,
            "checks": self.checks,
            "differences": [
                {"kind": d.kind.value, "key": list(d.key), "columns": list(d.columns)}
                for d in self.differences
            ],
            "deferred": [{"key": list(k), "reason": r} for k, r in self.deferred],
        }


@dataclass(slots=True)
class TableReport:
    table: str
    closed_through: datetime | None
    reconciled_through: datetime | None
    windows: list[WindowReport] = field(default_factory=list)
    windows_behind: int | None = None  # after this pass (windows.windows_behind)
    # Why nothing of the table could be verified (one line); None when it was verified.
    unverified: str | None = None
    drift: list[dict[str, Any]] = field(default_factory=list)  # integrity.schema_drift
    reverify: bool = False  # the windows are re-verifications of history

    @property
    def found_in_history(self) -> int:
        """Confirmed differences found by re-verifying already-verified windows."""
        return sum(int(w.counts.get("found_in_history", 0) or 0) for w in self.windows)

    def as_json(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {
            "table": self.table,
            "reverify": self.reverify,
            "found_in_history": self.found_in_history,
            "closed_through": iso(self.closed_through),
            "reconciled_through": iso(self.reconciled_through),
            "windows_behind": self.windows_behind,
            "verified": self.unverified is None,
            "schema_drift": self.drift,
            "unverified_reason": self.unverified,
            "windows": [w.as_json() for w in self.windows],
        }


def _mapping(settings: Settings, table: str) -> TableMapping:
    return settings.tables.get(table) or TableMapping()


def table_checks(settings: Settings, table: str) -> list[chk.AnyCheck]:
    """The table's configured checks, validated (ConfigError when invalid)."""
    found: list[chk.AnyCheck] = chk.parse_checks(table, _mapping(settings, table).checks)
    return found


def describe(env: Env, table: str) -> tuple[TablePair, TargetTable]:
    m = _mapping(env.settings, table)
    with env.source.connect() as s, env.target.connect() as t:
        pair = describe_pair(
            s,
            t,
            table,
            target_table=m.target,
            key_columns=m.key_columns,
            include_columns=m.include_columns,
            exclude_columns=m.exclude_columns,
            change_time_column=m.change_time_column,
        )
    schema, name = split_name(m.target or table)
    ttable = reflect_table(env.target, schema, name, key_columns=pair.key_columns)
    if ttable is None:
        raise CdcrError(f"target table {schema}.{name} not found")
    return pair, ttable


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


def _kinds(diffs: tuple[Difference, ...]) -> dict[str, int]:
    out = {k.value: 0 for k in Kind}
    for d in diffs:
        out[d.kind.value] += 1
    return out


def reconcile_window(
    env: Env,
    req: Request,
    pair: TablePair,
    ttable: TargetTable,
    w: Window,
    expected: datetime | None,
    pending: tuple[Key, ...] = (),
    drift: list[dict[str, Any]] | None = None,
    *,
    recheck_only: bool = False,
) -> WindowReport:
    """Diff one window; unless dry-run: repair, re-verify, audit, and advance the watermark from
    ``expected`` when the window starts there."""
    if env.on_window is not None:
        env.on_window(pair.name, w)
    started = checked_now(env.now_getter)
    raw = DiffResult(()) if recheck_only else diff_table(env.source, env.target, pair, w, req.diff)
    conf, before = _confirmed(env, req, pair, raw, pending, started)
    counts = _window_counts(req, raw, before, conf, len(pending))
    deferred = tuple(sorted(conf.deferred.items(), key=lambda x: repr(x[0])))
    checks: list[dict[str, Any]] = [
        {"check": "recheck_deferred", "keys": len(pending)}
        if recheck_only
        else _check("count_checksum", raw)
    ]
    configured = [] if recheck_only else table_checks(env.settings, pair.name)
    orphans, integrity_checks = (
        ([], []) if recheck_only else _integrity(env, pair, w, drift or [], configured)
    )
    counts["orphan"] = len(orphans)
    if req.dry_run:
        results = chk.run_checks(env.source, env.target, pair, w, configured) + integrity_checks
        status = _dry_run_status(before, results)
        return WindowReport(
            pair.name,
            w,
            status,
            before.differences,
            counts,
            checks=[*checks, *results],
            deferred=deferred,
        )

    run_id = uuid.uuid4()
    with env.target.begin() as c:
        runs.start(c, run_id, pair.name, w.start, w.end, started)
        if not req.reverify:
            wm.set_state(c, pair.name, "reconciling")
    try:
        status = RunStatus.CLEAN
        remaining: tuple[Difference, ...] = ()
        if not before.clean:
            status, remaining = _repair_window(
                env, req, pair, ttable, w, before, run_id, started, counts, checks
            )
        results = chk.run_checks(env.source, env.target, pair, w, configured) + integrity_checks
        checks += results
        if status in ADVANCING and not chk.passed(results):
            status = RunStatus.CHECK_FAILED
        with env.target.begin() as c:
            if not before.clean:
                rp.resolve_discrepancies(c, run_id, remaining)
            _record_orphans(c, run_id, pair.name, orphans)
            status = _advance(c, req, pair.name, w, expected, status)
            runs.finish(c, run_id, status, checked_now(env.now_getter), counts, checks)
            _set_state(c, req, pair.name, status)
    except Exception:
        with env.target.begin() as c:
            runs.finish(c, run_id, RunStatus.FAILED, checked_now(env.now_getter), counts, checks)
        raise
    return WindowReport(
        pair.name, w, status, before.differences, counts, run_id, checks, deferred=deferred
    )


def _window_counts(
    req: Request,
    raw: DiffResult,
    before: DiffResult,
    conf: inflight.Confirmation,
    rechecked: int,
) -> dict[str, Any]:
    """A window's run counts: the diff's statistics, the confirmed differences per kind, and
    what the in-flight rules made of the candidates."""
    counts: dict[str, Any] = {
        **raw.stats.as_dict(),
        **_kinds(before.differences),
        "candidates": len(raw.differences),
        "rechecked": rechecked,
        **conf.counts(),
    }
    counts["deferred"] = raw.stats.deferred + len(conf.deferred)
    if req.reverify:
        counts["reverify"] = True
        counts["found_in_history"] = len(before.differences)
    return counts


def _repair_window(
    env: Env,
    req: Request,
    pair: TablePair,
    ttable: TargetTable,
    w: Window,
    before: DiffResult,
    run_id: uuid.UUID,
    started: datetime,
    counts: dict[str, Any],
    checks: list[dict[str, Any]],
) -> tuple[RunStatus, tuple[Difference, ...]]:
    """Repair the window's confirmed differences, re-verify them (adds to ``counts`` and
    ``checks``), and the status that leaves with the differences remaining."""
    outcome = rp.repair(
        env.source,
        env.target,
        pair,
        ttable,
        before,
        window=w,
        run_id=run_id,
        delete_extra=req.delete_extra,
        now=started,
        replay_hook=env.replay_hook,
    )
    counts.update(outcome.counts())
    # Re-verify the keys this window confirmed, through the same in-flight rules.
    again = _confirm(env, pair, [d.key for d in before.differences])
    remaining = tuple(again.confirmed)
    checks.append(
        {
            "check": "reverify",
            "keys": len(before.differences),
            "result": "equal" if not remaining else f"{len(remaining)} differences",
        }
    )
    reported = {k for k, a in outcome.actions.items() if a == "reported"}
    counts["remaining"] = len(remaining)
    if not remaining:
        return RunStatus.REPAIRED, remaining
    if all(d.kind is Kind.EXTRA and d.key in reported for d in remaining):
        return RunStatus.OPEN_EXTRAS, remaining
    return RunStatus.UNRESOLVED, remaining


def _confirmed(
    env: Env,
    req: Request,
    pair: TablePair,
    raw: DiffResult,
    pending: tuple[Key, ...],
    started: datetime,
) -> tuple[inflight.Confirmation, DiffResult]:
    """Candidates are confirmed before anything is reported, repaired or counted (inflight.py):
    the confirmation, and the confirmed differences in a stable order."""
    conf = _confirm(env, pair, [*(d.key for d in raw.differences), *pending])
    bound = timedelta(seconds=env.settings.reconcile.deferred_bound_s)
    with env.target.begin() as c:
        inflight.apply_bound(c, pair.name, conf, now=started, bound=bound, write=not req.dry_run)
    before = DiffResult(
        tuple(sorted(conf.confirmed, key=lambda x: (x.kind.value, repr(x.key)))), raw.stats
    )
    return conf, before


def _dry_run_status(before: DiffResult, results: list[dict[str, Any]]) -> RunStatus:
    if not chk.passed(results):
        return RunStatus.CHECK_FAILED
    return RunStatus.CLEAN if before.clean else RunStatus.DIFFERENCES


def _set_state(c: sa.Connection, req: Request, table: str, status: RunStatus) -> None:
    """The watermark's state after a run (re-verification leaves it alone)."""
    if not req.reverify:
        wm.set_state(
            c, table, "idle" if status in (*ADVANCING, RunStatus.SUPERSEDED) else str(status)
        )


def _advance(
    c: sa.Connection,
    req: Request,
    table: str,
    w: Window,
    expected: datetime | None,
    status: RunStatus,
) -> RunStatus:
    """Advance the watermark from ``expected`` past ``w`` when the run allows it; a concurrent
    move makes the run ``superseded``."""
    if status in ADVANCING and w.start == expected and not req.reverify:
        try:
            with c.begin_nested():
                wm.advance(c, table, expected, w.end)
        except wm.WatermarkConflict:
            return RunStatus.SUPERSEDED
    return status


def _integrity(
    env: Env,
    pair: TablePair,
    w: Window,
    drift: list[dict[str, Any]],
    configured: list[chk.AnyCheck],
) -> tuple[list[integrity.Orphan], list[dict[str, Any]]]:
    """The window's schema-drift and foreign-key check records (integrity.py), and the
    confirmed orphans."""
    s = env.settings

    def result(found: bool, kind: str) -> str:
        if not found:
            return "pass"
        return "fail" if chk.fails_on(configured, kind) else "warn"

    def progress(tables: Any) -> list[PartitionProgress]:
        with env.target.connect() as c:
            return [
                p
                for t in tables
                for topic in env.topics_of(t)
                for p in partition_progress(c, s.kafka.group_id, topic)
            ]

    def parent_target(source_table: str) -> str:
        return _mapping(s, source_table).target or source_table

    orphans, deferred, notes = integrity.find_orphans(
        env.source,
        env.target,
        pair,
        w,
        parent_target=parent_target,
        progress=progress,
        log_ends=env.log_ends,
        wait_s=s.reconcile.confirm_wait_s,
    )
    return orphans, [
        {"check": "schema_drift", "result": result(bool(drift), "schema_drift"), "drift": drift},
        {
            "check": "foreign_keys",
            "result": result(bool(orphans), "foreign_keys"),
            "orphans": [
                {"fk": o.fk, "key": list(o.key), "values": list(o.values), "parent": o.parent}
                for o in orphans[:100]
            ],
            "orphan_count": len(orphans),
            "deferred": deferred,
            "notes": notes,
        },
    ]


def _record_orphans(
    c: sa.Connection, run_id: uuid.UUID, table: str, orphans: list[integrity.Orphan]
) -> None:
    """Confirmed orphans enter the review queue (kind ``orphan``), once per open key."""
    if not orphans:
        return
    found = [
        NewDiscrepancy(
            key_text(o.key),
            "orphan",
            "reported",
            [o.fk],
            target_row=orjson.dumps(
                {"foreign_key": o.fk, "parent": o.parent, "values": list(o.values)}, default=str
            ).decode(),
        )
        for o in orphans
    ]
    discrepancies.insert_once(c, run_id, table, found)


def _confirm(env: Env, pair: TablePair, keys: list[Key]) -> inflight.Confirmation:
    s = env.settings

    def progress() -> list[PartitionProgress]:
        with env.target.connect() as c:
            return [
                p
                for t in env.topics_of(pair.name)
                for p in partition_progress(c, s.kafka.group_id, t)
            ]

    return inflight.confirm(
        env.source,
        env.target,
        pair,
        keys,
        progress=progress,
        log_ends=env.log_ends,
        wait_s=s.reconcile.confirm_wait_s,
    )


def _check(name: str, result: DiffResult) -> dict[str, Any]:
    return {
        "check": name,
        "source_rows": result.stats.source_rows,
        "target_rows": result.stats.target_rows,
        "result": "equal" if result.clean else f"{len(result.differences)} differences",
    }


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
