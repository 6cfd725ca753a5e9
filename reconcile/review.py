"""The review queue: discrepancies a person decides (``cdcr review list / show / resolve``).

What lands in the queue (``cdcr.discrepancies`` with ``review_state = 'open'``): rows found only
in the target (``extra``; deleted by reconcile only with ``--delete-extra``), orphan child rows
(``orphan``: the target row's foreign-key parent is missing in the target), and any difference
that repair could not fix (still different when re-verified).

Decisions, each recorded with who (``--by``, default the OS user) and when, and an optional note:

- ``apply_source``: make the target row what the source row is now — upsert it, or, when the
  source has no such row, archive the target row to ``cdcr.extra_rows_archive`` and delete it;
- ``delete_target``: archive the target row, then delete it;
- ``keep_target``: leave the target as it is.

Writes go through the versioned writer (``connectors.postgres.write.write_batch``) at the repair position
(reconcile/repair.py): any later real change still wins, no older event replayed later undoes the
decision, and a delete leaves a tombstone. Resolving is idempotent: an item already resolved is
reported as such and nothing is written again. The item, the writes and the archive commit in one
target transaction.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from cdc_reconciler import wiring
from cdc_reconciler.config import Settings
from cdc_reconciler.connectors.postgres.table import key_text
from cdc_reconciler.connectors.postgres.write import RowWrite, write_batch
from cdc_reconciler.errors import CdcrError, db_error_line
from cdc_reconciler.reconcile import checksum as ck
from cdc_reconciler.reconcile import repair as rp
from cdc_reconciler.reconcile.model import Env, describe
from cdc_reconciler.reconcile.windows import checked_now, utc_now
from cdc_reconciler.store import discrepancies as store
from cdc_reconciler.store.discrepancies import ArchivedRow, ReviewDetail, ReviewItem, ReviewState

DECISIONS = ("apply_source", "keep_target", "delete_target")
STATES = ("open", "resolved", "all")
KINDS = ("missing", "extra", "mismatched", "orphan")


def default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return os.environ.get("USER") or "unknown"


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if v is None or isinstance(v, (str, int, float, bool, list, dict)):
        return v
    return str(v)


def _plain_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in d.items()}


def list_items(
    settings: Settings,
    *,
    table: str | None = None,
    kind: str | None = None,
    state: str = "open",
    limit: int = 200,
) -> list[ReviewItem]:
    """Queue items, oldest first, filtered by table, kind and review state (``all``: any);
    ``item_json`` is the ``--json`` form of each."""
    if state not in STATES:
        raise CdcrError(f"--state must be one of {', '.join(STATES)}")
    if kind is not None and kind not in KINDS:
        raise CdcrError(f"--kind must be one of {', '.join(KINDS)}")
    target = wiring.target_engine(settings)
    try:
        with target.connect() as c:
            return list(store.items(c, table=table, kind=kind, state=state, limit=limit))
    except SQLAlchemyError as exc:
        raise CdcrError(f"review list failed: {db_error_line(exc)}") from exc
    finally:
        target.dispose()


def item_json(item: ReviewItem) -> dict[str, Any]:
    """A queue item as ``--json`` writes it (instants ISO, ids as text)."""
    return _plain_dict(asdict(item))


@dataclass(frozen=True, slots=True)
class RowsNow:
    """Both rows of an item's key as they are now, or why they could not be read."""

    source_row: dict[str, Any] | None = None
    target_row: dict[str, Any] | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {"source_row": self.source_row, "target_row": self.target_row}


@dataclass(frozen=True, slots=True)
class Shown:
    """``cdcr review show``: the item, the rows recorded when it was found, its run's window,
    and both rows now."""

    detail: ReviewDetail
    now: RowsNow

    @property
    def item(self) -> ReviewItem:
        return self.detail.item

    def as_json(self) -> dict[str, Any]:
        row = self.detail
        doc = _plain_dict(
            {
                **asdict(row.item),
                "source_row": row.source_row,
                "target_row": row.target_row,
                "window_start": row.window_start,
                "window_end": row.window_end,
            }
        )
        doc["now"] = self.now.as_json()
        return doc


def show(settings: Settings, item_id: int) -> Shown:
    """One item with the rows recorded when it was found, and both rows as they are now."""
    source = wiring.source_engine(settings)
    target = wiring.target_engine(settings)
    try:
        with target.connect() as c:
            row = store.detail(c, item_id)
        if row is None:
            raise CdcrError(f"no review item {item_id}")
        env = Env(settings, source, target, utc_now, lambda tps: {})
        try:
            pair, _ = describe(env, row.item.table_name)
        except CdcrError as exc:
            return Shown(row, RowsNow(error=str(exc)))
        key = tuple(orjson.loads(row.item.key))
        with source.connect() as s, target.connect() as t:
            src = ck.fetch_normalized_by_keys(s, pair.source, [key]).get(key)
            tgt = ck.fetch_normalized_by_keys(t, pair.target, [key]).get(key)
        return Shown(
            row,
            RowsNow(
                None if src is None else dict(zip(pair.columns, src, strict=True)),
                None if tgt is None else dict(zip(pair.columns, tgt, strict=True)),
            ),
        )
    except SQLAlchemyError as exc:
        raise CdcrError(f"review show failed: {db_error_line(exc)}") from exc
    finally:
        source.dispose()
        target.dispose()


@dataclass(frozen=True, slots=True)
class Resolved:
    id: int
    table: str
    key: str
    outcome: str  # upserted | deleted | kept | already_resolved
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "table": self.table,
            "key": self.key,
            "outcome": self.outcome,
            "detail": self.detail,
        }


def resolve(
    settings: Settings,
    ids: list[int],
    decision: str,
    *,
    by: str | None = None,
    note: str | None = None,
    now_getter: Any = utc_now,
) -> list[Resolved]:
    """Apply ``decision`` to each item (module docstring). Items are processed one transaction
    each, in the order given; an unknown id fails before anything is written."""
    if decision not in DECISIONS:
        raise CdcrError(f"decision must be one of {', '.join(DECISIONS)}")
    if not ids:
        raise CdcrError("give at least one review item id")
    who = by or default_user()
    source = wiring.source_engine(settings)
    target = wiring.target_engine(settings)
    env = Env(settings, source, target, now_getter, lambda tps: {})
    try:
        with target.connect() as c:
            found = store.existing(c, ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise CdcrError(f"no review item {', '.join(map(str, missing))}")
        return [_resolve_one(env, i, decision, who, note) for i in dict.fromkeys(ids)]
    except SQLAlchemyError as exc:
        raise CdcrError(f"review resolve failed: {db_error_line(exc)}") from exc
    finally:
        source.dispose()
        target.dispose()


def _resolve_one(env: Env, item_id: int, decision: str, who: str, note: str | None) -> Resolved:
    with env.target.begin() as c:
        item = store.lock(c, item_id)
        if item.review_state != ReviewState.OPEN:
            how = item.resolution or "by reconcile (re-verified equal)"
            when = "" if item.resolved_at is None else f" at {item.resolved_at.isoformat()}"
            by = "" if item.resolved_by is None else f" by {item.resolved_by}"
            return Resolved(
                item_id, item.table_name, item.key, "already_resolved", f"{how}{by}{when}"
            )
        outcome, detail = "kept", ""
        if decision != "keep_target":
            outcome, detail = _write(env, c, item, decision)
        store.resolve(c, item_id, decision, who, checked_now(env.now_getter), note)
    return Resolved(item_id, item.table_name, item.key, outcome, detail)


def _write(env: Env, c: sa.Connection, item: ReviewItem, decision: str) -> tuple[str, str]:
    pair, ttable = describe(env, item.table_name)
    key = tuple(orjson.loads(item.key))
    row: dict[str, Any] | None = None
    if decision == "apply_source":
        with env.source.connect() as s:
            row = ck.fetch_text_by_keys(s, pair.source, [key]).get(key)
    position = rp.repair_position(c, ttable)
    ts = int(checked_now(env.now_getter).timestamp() * 1_000_000)
    if row is None:
        whole = ck.fetch_json_by_keys(c, pair.target, [key])
        if key in whole:
            store.archive(c, [ArchivedRow(item.run_id, item.table_name, key_text(key), whole[key])])
        result = write_batch(c, ttable, [RowWrite(key, None, position, ts)])
        why = "the source has no such row; " if decision == "apply_source" else ""
        return "deleted", f"{why}archived then deleted ({result.applied} applied)"
    result = write_batch(c, ttable, [RowWrite(key, row, position, ts)])
    return "upserted", f"target row set to the source row ({result.applied} applied)"


def open_summary(conn: sa.Connection, now: datetime) -> list[dict[str, Any]]:
    """Open items per table and kind, with the age of the oldest (for status and metrics)."""
    return [
        {
            "table": r.table,
            "kind": r.kind,
            "open": r.n,
            "oldest": r.oldest.isoformat(),
            "oldest_age_s": max(0.0, (now - r.oldest).total_seconds()),
        }
        for r in store.open_by_kind(conn)
    ]
