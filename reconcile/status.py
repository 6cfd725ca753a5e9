"""`cdcr status`: :func:`status` and its :class:`StatusReport` — the stored state it reads, the
gaps (windows behind their closure time) and the blocked tables."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from cdc_reconciler import wiring
from cdc_reconciler.config import Settings
from cdc_reconciler.errors import CdcrError, db_error_line
from cdc_reconciler.reconcile import history
from cdc_reconciler.reconcile.command import _kafka_log_ends
from cdc_reconciler.reconcile.priorities import (
    MAX_PRIORITIES,
    _integrity,
    _iso,
    _priorities,
    _verification,
)
from cdc_reconciler.reconcile.review import open_summary as review_summary
from cdc_reconciler.reconcile.topics import AppliedTables, applied_tables
from cdc_reconciler.reconcile.windows import (
    Clock,
    LogEnds,
    PartitionProgress,
    checked_now,
    closed_through,
    floor_to_grid,
    gap_windows,
    table_topic,
    utc_now,
    windows_behind,
)
from cdc_reconciler.store import dead_letters as dead_store
from cdc_reconciler.store import discrepancies as review_store
from cdc_reconciler.store import offsets as offsets_store
from cdc_reconciler.store import runs as run_store
from cdc_reconciler.store import watermarks as wm

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
            f"status failed (is the target migrated? run `cdcr migrate`): {db_error_line(exc)}"
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
        raise CdcrError(f"status failed: {db_error_line(exc)}") from exc
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


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, (str, int, float, bool, dict, list)) or v is None:
        return v
    return str(v)
