"""One public function per command (after alembic's ``command.py``). Each takes the settings,
builds its clients at this edge, and raises CdcrError for anything the user can act on."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from cdc_reconciler import wiring
from cdc_reconciler.config import Settings
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.reconcile import history
from cdc_reconciler.reconcile import repair as rp
from cdc_reconciler.reconcile.diff import DiffOptions
from cdc_reconciler.reconcile.metrics import ReconcileMetrics
from cdc_reconciler.reconcile.review import open_summary as review_summary
from cdc_reconciler.reconcile.run import (
    Env,
    Request,
    TableReport,
    closed_time,
    describe,
    reconcile_table,
    reverify_table,
    table_checks,
)
from cdc_reconciler.reconcile.sample import SampleReport, record_sample, sample_table
from cdc_reconciler.reconcile.segments import Window
from cdc_reconciler.reconcile.topics import AppliedTables, applied_tables
from cdc_reconciler.reconcile.windows import (
    Clock,
    LogEnds,
    PartitionProgress,
    checked_now,
    closed_through,
    floor_to_grid,
    gap_windows,
    kafka_log_ends,
    table_topic,
    utc_now,
    windows_behind,
)
from cdc_reconciler.store import dead_letters as dead_store
from cdc_reconciler.store import discrepancies as review_store
from cdc_reconciler.store import offsets as offsets_store
from cdc_reconciler.store import runs as run_store
from cdc_reconciler.store import watermarks as wm

# Continuous mode waits out a target outage, retrying the pass after this long (doubling).
OUTAGE_RETRY_S = 2.0
OUTAGE_RETRY_MAX_S = 60.0
# How long continuous mode sleeps when no window is closed: a tenth of a window, so a window is
# picked up soon after it closes without polling the databases constantly.
POLL_FRACTION = 0.1


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
        raise CdcrError(f"reconcile failed: {exc.__class__.__name__}: {exc}") from exc
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
        if not any(r.windows for r in reports.reports if not r.reverify):
            time.sleep(env.settings.reconcile.window_s * POLL_FRACTION)


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


def _applied(settings: Settings, target: sa.Engine) -> AppliedTables:
    try:
        with target.connect() as c:
            return applied_tables(c, settings, target)
    except SQLAlchemyError as exc:
        raise CdcrError(
            f"cannot read the applied offsets (is the target migrated? run `cdcr migrate`): "
            f"{exc.__class__.__name__}: {exc}"
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
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
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
        raise CdcrError(f"sample failed: {exc.__class__.__name__}: {exc}") from exc
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


# `cdcr status` asks Kafka for log ends with this timeout per request, and only once per call.
STATUS_KAFKA_TIMEOUT_S = 2.0


def _dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """The store's dataclasses as the plain dicts of ``--json``."""
    return [asdict(r) for r in rows]


MAX_GAP_WINDOWS = 50  # windows listed per table in `cdcr status` (windows_behind counts all)


class LogEndsState(StrEnum):
    """Whether ``cdcr status`` needed Kafka's log-end offsets and got them."""

    NOT_NEEDED = "not_needed"
    OK = "ok"
    UNAVAILABLE = "unavailable"


@dataclass
class KafkaProbe:
    """The one short log-end request of ``cdcr status``: its outcome and Kafka's error."""

    log_ends: LogEndsState = LogEndsState.NOT_NEEDED
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"log_ends": self.log_ends.value, "error": self.error}


@dataclass(frozen=True)
class Gap:
    """A table's windows behind their closure time (ISO instants, as ``--json`` writes them)."""

    table: str
    reconciled_through: str | None
    closed_through: str | None
    behind_s: float | None
    windows_behind: int | None
    windows: list[dict[str, str | None]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StatusReport(Mapping[str, Any]):
    """What ``cdcr status`` shows. Renderers read the fields; ``as_dict()`` is the ``--json``
    document (same keys as before the result was typed). Reading by key still works (a
    Mapping over ``as_dict()``) for callers written against the dict."""

    now: datetime
    kafka: KafkaProbe
    watermarks: list[wm.Watermark]
    gaps: list[Gap]
    verification: list[dict[str, Any]]
    priorities: list[dict[str, Any]]
    priorities_total: int
    applied_offsets: list[dict[str, Any]]
    recent_runs: list[dict[str, Any]]
    integrity: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    blocked: list[dict[str, Any]]
    review_open: list[dict[str, Any]]
    open_counts: list[dict[str, Any]]
    open_latest: list[dict[str, Any]]

    @property
    def kafka_unavailable(self) -> bool:
        return self.kafka.log_ends is LogEndsState.UNAVAILABLE

    def review(self) -> dict[str, Any]:
        q = self.review_open
        return {
            "open": q,
            "open_total": sum(x["open"] for x in q),
            "oldest_age_s": max((x["oldest_age_s"] for x in q), default=None),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "kafka": self.kafka.as_dict(),
            "watermarks": [
                {
                    "table": m.table,
                    "reconciled_through": _iso(m.reconciled_through),
                    "state": m.state,
                    "updated_at": _iso(m.updated_at),
                }
                for m in self.watermarks
            ],
            "gaps": [g.as_dict() for g in self.gaps],
            "verification": self.verification,
            "priorities": self.priorities[:MAX_PRIORITIES],
            "priorities_total": self.priorities_total,
            "applied_offsets": _plain_rows(self.applied_offsets),
            "recent_runs": _plain_rows(self.recent_runs),
            "integrity": self.integrity,
            "dead_letters": _plain_rows(self.dead_letters),
            "blocked": self.blocked,
            "review": self.review(),
            "open_discrepancies": {
                "counts": [dict(r) for r in self.open_counts],
                "latest": _plain_rows(self.open_latest),
            },
        }

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())


def _plain_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in r.items()} for r in rows]


@dataclass(frozen=True)
class _Stored:
    """What ``status`` reads from the service's tables in one connection."""

    marks: list[wm.Watermark]
    offsets: list[dict[str, Any]]
    recent: list[dict[str, Any]]
    applied: AppliedTables
    queue: list[dict[str, Any]]
    latest_checks: list[dict[str, Any]]
    open_counts: list[dict[str, Any]]
    open_rows: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    dead: list[dict[str, Any]]


def _read_stored(
    engine: sa.Engine, settings: Settings, now: datetime, runs: int, discrepancies: int
) -> _Stored:
    try:
        with engine.connect() as c:
            return _Stored(
                marks=list(wm.read_all(c)),
                offsets=_dicts(offsets_store.all_offsets(c)),
                recent=_dicts(run_store.recent(c, runs)),
                applied=applied_tables(c, settings, engine),
                queue=list(review_summary(c, now)),
                latest_checks=_dicts(run_store.latest_checks(c)),
                open_counts=[
                    {"table_name": o.table, "kind": o.kind, "n": o.n}
                    for o in review_store.open_by_kind(c)
                ],
                open_rows=_dicts(review_store.open_latest(c, discrepancies)),
                failed=list(history.failed_windows(c)),
                dead=_dicts(dead_store.last_day(c)),
            )
    except SQLAlchemyError as exc:
        engine.dispose()
        raise CdcrError(
            f"status failed (is the target migrated? run `cdcr migrate`): "
            f"{exc.__class__.__name__}: {exc}"
        ) from exc


def _probe(kafka: KafkaProbe, real: LogEnds) -> LogEnds:
    """``real`` asked at most until it fails once; the outcome is recorded in ``kafka``."""

    def guarded(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if kafka.log_ends is LogEndsState.UNAVAILABLE:
            return {}
        try:
            ends: dict[tuple[str, int], int] = real(tps)
        except CdcrError as exc:
            kafka.log_ends, kafka.error = LogEndsState.UNAVAILABLE, str(exc)
            return {}
        kafka.log_ends = LogEndsState.OK
        return ends

    return guarded


def _progress(offsets: Sequence[dict[str, Any]], group: str) -> dict[str, list[PartitionProgress]]:
    """The applied progress of ``group`` per topic."""
    progress: dict[str, list[PartitionProgress]] = {}
    for o in offsets:
        if o["consumer_group"] == group:
            progress.setdefault(o["topic"], []).append(
                PartitionProgress(
                    o["topic"], o["partition"], o["next_offset"], o["last_event_time"]
                )
            )
    return progress


def _gap(table: str, mark: datetime | None, closed: datetime, size: timedelta) -> Gap | None:
    windows = gap_windows(mark, closed, size, limit=MAX_GAP_WINDOWS)
    if not windows:
        return None
    grid = floor_to_grid(closed, size)
    return Gap(
        table=table,
        reconciled_through=_iso(mark),
        closed_through=_iso(grid),
        behind_s=None if mark is None else (grid - mark).total_seconds(),
        windows_behind=windows_behind(mark, closed, size),
        windows=[{"start": _iso(w.start), "end": _iso(w.end)} for w in windows],
    )


def _gaps(
    settings: Settings,
    stored: _Stored,
    reconciled: dict[str, datetime | None],
    now: datetime,
    log_ends: LogEnds,
) -> list[Gap]:
    """Per table, the windows behind their closure time, most recent first (they hold the
    freshest data back; ``priorities`` ranks them)."""
    grace = timedelta(seconds=settings.reconcile.grace_s)
    size = timedelta(seconds=settings.reconcile.window_s)
    progress = _progress(stored.offsets, settings.kafka.group_id)
    gaps = []
    for table in sorted({*reconciled, *settings.tables, *stored.applied.tables()}):
        topics = stored.applied.topics_of(table) or (
            table_topic(settings.kafka.topic_prefix, table),
        )
        parts = [p for t in topics for p in progress.get(t, [])]
        closed = closed_through(parts, grace, now, log_ends)
        gap = None if closed is None else _gap(table, reconciled.get(table), closed, size)
        if gap is not None:
            gaps.append(gap)
    gaps.sort(key=lambda g: (g.closed_through or "", g.table), reverse=True)
    return gaps


def status(
    settings: Settings,
    *,
    now_getter: Clock = utc_now,
    runs: int = 20,
    discrepancies: int = 50,
    log_ends: LogEnds | None = None,
) -> StatusReport:
    """Watermarks, gaps (windows behind their closure time, newest first), applied offsets,
    recent runs and open discrepancies, as a typed report (``as_dict()`` is the ``--json``
    form).

    Closure is computed as ``cdcr reconcile`` does (windows.closed_through over the applied
    offsets). Partitions whose event time lags the clock need Kafka's log ends to tell "idle at
    its end" from "behind"; they are asked with a short timeout, once. When Kafka does not
    answer, every such partition is taken as behind (closure can only come out earlier, never
    later) and ``kafka.log_ends`` says ``unavailable``."""
    engine = wiring.target_engine(settings)
    now = checked_now(now_getter)
    stored = _read_stored(engine, settings, now, runs, discrepancies)
    kafka = KafkaProbe()
    real = log_ends or _kafka_log_ends(settings, STATUS_KAFKA_TIMEOUT_S)
    reconciled = {m.table: m.reconciled_through for m in stored.marks}
    gaps = _gaps(settings, stored, reconciled, now, _probe(kafka, real))
    gap_rows = [g.as_dict() for g in gaps]
    try:
        with engine.connect() as c:
            verification = _verification(c, settings, stored.marks, now)
            priorities = _priorities(c, settings, gap_rows, stored.failed, reconciled, now)
    except SQLAlchemyError as exc:
        raise CdcrError(f"status failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        engine.dispose()
    return StatusReport(
        now=now,
        kafka=kafka,
        watermarks=stored.marks,
        gaps=gaps,
        verification=verification,
        priorities=priorities,
        priorities_total=len(priorities),
        applied_offsets=stored.offsets,
        recent_runs=stored.recent,
        integrity=_integrity(stored.latest_checks),
        dead_letters=stored.dead,
        blocked=_blocked(stored.dead, now),
        review_open=stored.queue,
        open_counts=stored.open_counts,
        open_latest=stored.open_rows,
    )


# Dead-letter kinds that stop a whole table, not one record: every event of its topic goes to
# the dead letters until someone acts (docs/fidelity.md, docs/apply.md).
TABLE_LEVEL_KINDS = frozenset({"target_ddl_failed", "no_target_table", "no_key"})
BLOCKED_WITHIN = timedelta(hours=1)


def _blocked(dead: Sequence[Any], now: datetime) -> list[dict[str, Any]]:
    """Topics whose table is blocked: a table-level dead letter within the last hour."""
    out = []
    for d in dead:
        if d["kind"] in TABLE_LEVEL_KINDS and d["last_seen"] >= now - BLOCKED_WITHIN:
            out.append(
                {
                    "topic": d["topic"],
                    "kind": d["kind"],
                    "dead_lettered": d["n"],
                    "last_seen": _iso(d["last_seen"]),
                    "last_error": d["last_error"],
                }
            )
    return out


MAX_PRIORITIES = 100  # windows listed in `priorities` (priorities_total counts them all)


def _verification(
    c: sa.Connection, settings: Settings, marks: Sequence[wm.Watermark], now: datetime
) -> list[dict[str, Any]]:
    """Per table with a watermark: the window of the re-verification horizon (the last
    ``reverify_horizon_s`` up to the watermark) verified longest ago, and how long ago
    (reconcile/history.py)."""
    r = settings.reconcile
    size = timedelta(seconds=r.window_s)
    horizon = timedelta(seconds=r.reverify_horizon_s)
    out = []
    for m in marks:
        if m.reconciled_through is None:
            continue
        lo = floor_to_grid(now - horizon, size)
        past = (
            history.last_verified(c, m.table, lo, m.reconciled_through, size)
            if lo < m.reconciled_through
            else []
        )
        due = now - timedelta(seconds=r.reverify_every_s)
        out.append(
            {
                "table": m.table,
                "horizon_s": r.reverify_horizon_s,
                **history.oldest_verification(past, now),
                "due": sum(1 for v in past if v.last_verified is None or v.last_verified < due)
                if r.reverify_every_s
                else 0,
            }
        )
    return out


def _overlaps_any(bad: Sequence[tuple[str, Window]], table: str, x: Window) -> bool:
    """Whether ``x`` of ``table`` overlaps a failed window (listed once, as failed)."""
    return any(
        t == table and (x.start is None or y.end > x.start) and (y.start is None or x.end > y.start)
        for t, y in bad
    )


def _unverified_items(
    gaps: Sequence[dict[str, Any]], bad: Sequence[tuple[str, Window]]
) -> list[dict[str, Any]]:
    """The gaps' windows, as priority items, except those that failed."""
    items: list[dict[str, Any]] = []
    for g in gaps:
        for gw in g["windows"]:
            x = Window(
                None if gw["start"] is None else datetime.fromisoformat(gw["start"]),
                datetime.fromisoformat(gw["end"]),
            )
            if _overlaps_any(bad, g["table"], x):
                continue
            items.append(
                {
                    "table": g["table"],
                    "window": x,
                    "status": "unverified",
                    "run_id": None,
                    "found": None,
                }
            )
    return items


def _failed_item(f: dict[str, Any]) -> dict[str, Any]:
    counts = f["counts"] or {}
    return {
        "table": f["table_name"],
        "window": Window(f["window_start"], f["window_end"]),
        "status": f["status"],
        "run_id": str(f["run_id"]),
        "found": sum(int(counts.get(k, 0) or 0) for k in ("missing", "extra", "mismatched")),
    }


def _add_rows_changed(
    c: sa.Connection, settings: Settings, items: Sequence[dict[str, Any]]
) -> None:
    """Set each item's ``rows_changed`` (target rows changed in its window), one query set
    per table."""
    size = timedelta(seconds=settings.reconcile.window_s)
    by_table: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_table.setdefault(it["table"], []).append(it)
    for table, its in by_table.items():
        mapping = settings.tables.get(table)
        ct = mapping.change_time_column if mapping else None
        target = (mapping.target if mapping else None) or table
        n = history.rows_changed(c, target, ct, [it["window"] for it in its], size)
        for it, rows in zip(its, n, strict=True):
            it["rows_changed"] = rows


def _ranked_item(
    it: dict[str, Any], reconciled: dict[str, datetime | None], now: datetime
) -> dict[str, Any]:
    w: Window = it["window"]
    age = (now - w.end).total_seconds()
    mark = reconciled.get(it["table"])
    behind = mark is not None and w.end <= mark
    return {
        "table": it["table"],
        "window_start": _iso(w.start),
        "window_end": _iso(w.end),
        "status": it["status"],
        "age_s": age,
        "rows_changed": it["rows_changed"],
        "differences": it["found"],
        "run_id": it["run_id"],
        "priority": history.priority(it["status"], age, it["rows_changed"]),
        "next": history.next_command(it["table"], w, it["status"], behind_watermark=behind),
    }


def _priorities(
    c: sa.Connection,
    settings: Settings,
    gaps: Sequence[dict[str, Any]],
    failed: Sequence[dict[str, Any]],
    reconciled: dict[str, datetime | None],
    now: datetime,
) -> list[dict[str, Any]]:
    """Unverified windows (the gaps) and failed windows (their latest run unresolved,
    check_failed or failed, not verified since), highest priority first
    (history.priority: status, age since the window closed, target rows changed in it), each
    with the command that would verify it next."""
    bad = [(f["table_name"], Window(f["window_start"], f["window_end"])) for f in failed]
    items = _unverified_items(gaps, bad) + [_failed_item(f) for f in failed]
    _add_rows_changed(c, settings, items)
    out = [_ranked_item(it, reconciled, now) for it in items]
    out.sort(key=lambda x: (-x["priority"], x["window_end"] or "", x["table"]))
    return out


def _integrity(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Per table, the schema drift and orphan count of its latest finished run (only tables
    where either was found)."""
    out = []
    for r in rows:
        drift: list[Any] = []
        orphans = 0
        for c in r["checks"] or []:
            if c.get("check") == "schema_drift":
                drift = c.get("drift") or []
            elif c.get("check") == "foreign_keys":
                orphans = int(c.get("orphan_count") or 0)
        if drift or orphans:
            out.append(
                {
                    "table": r["table_name"],
                    "checked_at": _iso(r["started"]),
                    "schema_drift": drift,
                    "orphans": orphans,
                }
            )
    return out


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, (str, int, float, bool, dict, list)) or v is None:
        return v
    return str(v)
