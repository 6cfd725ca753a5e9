"""One window of one table (:func:`reconcile_window`): diff, confirm in-flight candidates,
repair, re-verify, integrity and drift checks, audit, and the watermark's advance
(statuses: reconcile/run.py)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.table import TargetTable, key_text
from cdc_reconciler.reconcile import checks as chk
from cdc_reconciler.reconcile import inflight, integrity
from cdc_reconciler.reconcile import repair as rp
from cdc_reconciler.reconcile.checksum import TablePair
from cdc_reconciler.reconcile.diff import Difference, DiffResult, Kind, diff_table
from cdc_reconciler.reconcile.model import (
    ADVANCING,
    Env,
    Request,
    WindowReport,
    _mapping,
    table_checks,
)
from cdc_reconciler.reconcile.segments import Key, Window
from cdc_reconciler.reconcile.windows import (
    PartitionProgress,
    checked_now,
    partition_progress,
)
from cdc_reconciler.store import discrepancies, runs
from cdc_reconciler.store import watermarks as wm
from cdc_reconciler.store.discrepancies import NewDiscrepancy
from cdc_reconciler.store.runs import RunStatus


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
