"""One public function per command (after alembic's ``command.py``). Each takes the settings,
builds its clients at this edge, and raises CdcrError for anything the user can act on."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from cdc_reconciler import wiring
from cdc_reconciler.config import Settings
from cdc_reconciler.errors import CdcrError, db_error_line
from cdc_reconciler.reconcile import repair as rp
from cdc_reconciler.reconcile.diff import DiffOptions
from cdc_reconciler.reconcile.metrics import ReconcileMetrics
from cdc_reconciler.reconcile.model import Env, Request, TableReport, describe, table_checks
from cdc_reconciler.reconcile.passes import _applied, _one_pass, _Pass, _passes
from cdc_reconciler.reconcile.run import closed_time
from cdc_reconciler.reconcile.sample import SampleReport, record_sample, sample_table
from cdc_reconciler.reconcile.segments import Window
from cdc_reconciler.reconcile.topics import AppliedTables
from cdc_reconciler.reconcile.windows import (
    Clock,
    LogEnds,
    checked_now,
    kafka_log_ends,
    utc_now,
)


def _engines(settings: Settings) -> tuple[sa.Engine, sa.Engine]:
    return wiring.source_engine(settings), wiring.target_engine(settings)


def _kafka_log_ends(settings: Settings, timeout_s: float | None = None) -> LogEnds:
    return kafka_log_ends(settings.kafka, timeout_s=timeout_s)


def _aware(t: datetime | None, what: str) -> datetime | None:
    if t is not None and t.tzinfo is None:
        raise CdcrError(f"{what} must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
    return t


def reconcile(
    settings: Settings,
    *,
    tables: Sequence[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
    once: bool = True,
    dry_run: bool = False,
    delete_extra: bool = False,
    diff_options: DiffOptions | None = None,
    now_getter: Clock = utc_now,
    log_ends: LogEnds | None = None,
    replay_hook: rp.ReplayHook | None = None,
    on_window: Callable[[str, Window], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    metrics: ReconcileMetrics | None = None,
    reverify: bool = False,
    since: timedelta | None = None,
    sample_windows: int | None = None,
    seed: int | None = None,
) -> list[TableReport]:
    """Reconcile the closed windows of ``tables`` (default: every configured table).

    ``once``: one pass over what is closed now, then return the reports. Otherwise keep going
    (sleeping between passes) until ``should_stop()`` or KeyboardInterrupt, returning the last
    pass's reports; each pass then also re-verifies history within the background budget
    (``reconcile.reverify_*`` settings: windows of the last ``reverify_horizon_s`` last verified
    more than ``reverify_every_s`` ago, oldest-verified first, at most
    ``reverify_windows_per_pass`` per table), whose reports are returned too.

    ``reverify``: instead of new windows, one pass re-verifying already-verified windows from
    ``start`` or ``now - since`` (default: ``reverify_horizon_s``) to the watermark (or ``end``),
    all of them or a random ``sample_windows`` of them (``seed``); the watermark never moves
    (run.reverify_table). With ``metrics``, every pass updates them (reconcile/metrics.py).
    Raises CdcrError on configuration or database failures."""
    _check_options(start, end, once, reverify, since, sample_windows)
    source, target, applied, names = _open_tables(settings, tables, "reconcile")
    for name in names:
        table_checks(settings, name)  # invalid checks fail before any work
    req = Request(
        names,
        _aware(start, "--from"),
        _aware(end, "--to"),
        dry_run,
        delete_extra,
        diff_options or DiffOptions(),
        reverify=reverify,
    )
    env = Env(
        settings,
        source,
        target,
        now_getter,
        log_ends or _kafka_log_ends(settings),
        replay_hook
        or rp.make_kafka_replay_hook(
            settings, source, target, log=logging.getLogger(__name__).info
        ),
        on_window,
        applied,
    )

    def one(env: Env, names: tuple[str, ...]) -> _Pass:
        return _one_pass(
            env,
            req,
            names,
            tables,
            once,
            dry_run,
            metrics,
            target,
            reverify=reverify,
            since=since,
            sample_windows=sample_windows,
            seed=seed,
        )

    try:
        return _passes(one, env, names, once, should_stop)
    except SQLAlchemyError as exc:
        raise CdcrError(f"reconcile failed: {db_error_line(exc)}") from exc
    finally:
        source.dispose()
        target.dispose()


def _check_options(
    start: datetime | None,
    end: datetime | None,
    once: bool,
    reverify: bool,
    since: timedelta | None,
    sample_windows: int | None,
) -> None:
    """The option combinations ``reconcile`` refuses, before any connection."""
    if start is not None and end is not None and start >= end:
        raise CdcrError("--from must be before --to")
    if sample_windows is not None and sample_windows < 1:
        raise CdcrError("--sample needs a positive number of windows")
    if (since is not None or sample_windows is not None) and not reverify:
        raise CdcrError("--since and a window sample apply to --reverify only")
    if since is not None and start is not None:
        raise CdcrError("--since and --from are alternatives: pick one")
    if reverify and not once:
        raise CdcrError(
            "--reverify is one pass (use --once); continuous mode re-verifies history on its "
            "own within the reconcile.reverify_* budget"
        )


def _open_tables(
    settings: Settings, tables: Sequence[str], what: str
) -> tuple[sa.Engine, sa.Engine, AppliedTables, tuple[str, ...]]:
    """Both engines, the group's applied tables, and the tables to work on: ``tables``, or by
    default every table the consumer group applies plus the configured ones. Raises CdcrError
    (engines disposed) when the target cannot be read or there is nothing to work on."""
    source, target = _engines(settings)
    try:
        applied = _applied(settings, target)
        names = tuple(tables) or tuple(sorted({*applied.tables(), *settings.tables}))
        if not names:
            raise CdcrError(
                f"no tables to {what}: consumer group {settings.kafka.group_id!r} has applied "
                "nothing yet (cdcr.applied_offsets) and no table is configured; run `cdcr run` "
                "first, check CDCR_KAFKA__GROUP_ID, or pass --table <schema>.<table>"
            )
    except BaseException:
        source.dispose()
        target.dispose()
        raise
    return source, target, applied, names


FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def sample(
    settings: Settings,
    n: int,
    *,
    tables: Sequence[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
    seed: int | None = None,
    dry_run: bool = False,
    now_getter: Clock = utc_now,
    log_ends: LogEnds | None = None,
) -> list[SampleReport]:
    """Check about ``n`` random keys per table and estimate its mismatch rate (reconcile/sample.py).

    Windowed tables are sampled among rows whose change time is in ``[start, end)`` and before
    the table's closure (what the applied offsets prove; rows changed later may still be in
    flight). Writes one ``sampled`` audit row per table unless ``dry_run``; repairs nothing."""
    if n < 1:
        raise CdcrError("--sample needs a positive number of keys")
    start, end = _aware(start, "--from"), _aware(end, "--to")
    if start is not None and end is not None and start >= end:
        raise CdcrError("--from must be before --to")
    source, target, applied, names = _open_tables(settings, tables, "sample")
    env = Env(
        settings, source, target, now_getter, log_ends or _kafka_log_ends(settings), applied=applied
    )
    try:
        return [
            _sample_one(env, table, n, start, end, seed=seed, dry_run=dry_run) for table in names
        ]
    except SQLAlchemyError as exc:
        raise CdcrError(f"sample failed: {db_error_line(exc)}") from exc
    finally:
        source.dispose()
        target.dispose()


@dataclass(frozen=True)
class _SampleRange:
    """Where a windowed table is sampled: ``window`` (None: everywhere), a ``note`` on it, or
    ``not_closed`` (the upper end is not after ``--from``: nothing to sample yet)."""

    window: Window | None = None
    note: str | None = None
    not_closed: datetime | None = None


def _sample_range(
    env: Env, table: str, started: datetime, start: datetime | None, end: datetime | None
) -> _SampleRange:
    closed = closed_time(env, table, started)
    upper = end if closed is None else min(closed, end or closed)
    note = (
        "nothing proves closure (no applied offsets): rows changed recently may still be in flight"
        if closed is None
        else None
    )
    if upper is not None and start is not None and upper <= start:
        return _SampleRange(not_closed=upper)
    if start is not None or upper is not None:
        return _SampleRange(Window(start, upper or FAR_FUTURE), note)
    return _SampleRange(None, note)


def _sample_one(
    env: Env,
    table: str,
    n: int,
    start: datetime | None,
    end: datetime | None,
    *,
    seed: int | None,
    dry_run: bool,
) -> SampleReport:
    """Sample one table and, unless ``dry_run``, write its ``sampled`` audit row."""
    pair, _ = describe(env, table)
    started = checked_now(env.now_getter)
    rng = _sample_range(env, table, started, start, end) if pair.windowed else _SampleRange()
    if rng.not_closed is not None:
        return SampleReport(
            table,
            n,
            "census",
            seed or 0,
            start,
            rng.not_closed,
            note="the change-time range is not closed yet",
        )
    report = sample_table(env.source, env.target, pair, n, seed=seed, window=rng.window)
    report.note = report.note or rng.note
    if not dry_run:
        with env.target.begin() as c:
            record_sample(
                c,
                report,
                run_id=str(uuid.uuid4()),
                started=started,
                finished=checked_now(env.now_getter),
            )
    return report
