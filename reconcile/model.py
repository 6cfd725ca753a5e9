"""What one reconcile pass takes and gives: its :class:`Request` and :class:`Env`, the
:class:`WindowReport` / :class:`TableReport` it returns, and the table description
(:func:`describe`, :func:`table_checks`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.config import Settings, TableMapping
from cdc_reconciler.connectors.postgres.reflect import reflect_table
from cdc_reconciler.connectors.postgres.table import TargetTable
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.reconcile import checks as chk
from cdc_reconciler.reconcile import repair as rp
from cdc_reconciler.reconcile.checksum import TablePair, describe_pair, split_name
from cdc_reconciler.reconcile.diff import Difference, DiffOptions
from cdc_reconciler.reconcile.segments import Key, Window
from cdc_reconciler.reconcile.topics import AppliedTables
from cdc_reconciler.reconcile.windows import (
    Clock,
    LogEnds,
    table_topic,
)
from cdc_reconciler.store import runs

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
