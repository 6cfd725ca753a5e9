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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from cdc_reconciler.config import Settings
from cdc_reconciler.connectors.postgres.table import key_text
from cdc_reconciler.connectors.postgres.write import RowWrite, write_batch
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.reconcile import checksum as ck
from cdc_reconciler.reconcile import repair as rp
from cdc_reconciler.reconcile.run import Env, describe
from cdc_reconciler.reconcile.windows import checked_now, utc_now

DECISIONS = ("apply_source", "keep_target", "delete_target")
STATES = ("open", "resolved", "all")
KINDS = ("missing", "extra", "mismatched", "orphan")
_COLUMNS = (
    "d.id, d.run_id, d.table_name, d.key, d.kind, d.columns, d.action, d.review_state, "
    "d.created_at, d.resolution, d.resolved_by, d.resolved_at, d.note"
)


def default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return os.environ.get("USER") or "unknown"


def _engine(url: str, what: str) -> sa.Engine:
    if not url:
        raise CdcrError(f"CDCR_{what}__URL is not set")
    return sa.create_engine(url, pool_pre_ping=True)


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if v is None or isinstance(v, (str, int, float, bool, list, dict)):
        return v
    return str(v)


def list_items(
    settings: Settings,
    *,
    table: str | None = None,
    kind: str | None = None,
    state: str = "open",
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Queue items, oldest first, filtered by table, kind and review state (``all``: any)."""
    if state not in STATES:
        raise CdcrError(f"--state must be one of {', '.join(STATES)}")
    if kind is not None and kind not in KINDS:
        raise CdcrError(f"--kind must be one of {', '.join(KINDS)}")
    target = _engine(settings.target.url_str(), "TARGET")
    try:
        with target.connect() as c:
            rows = c.execute(
                sa.text(
                    f"SELECT {_COLUMNS} FROM cdcr.discrepancies d WHERE "
                    "(CAST(:t AS text) IS NULL OR d.table_name = :t) AND "
                    "(CAST(:k AS text) IS NULL OR d.kind = :k) AND "
                    "(CAST(:s AS text) = 'all' OR d.review_state = :s) "
                    "ORDER BY d.created_at, d.id LIMIT :n"
                ),
                {"t": table, "k": kind, "s": state, "n": limit},
            ).mappings()
            return [{k: _plain(v) for k, v in r.items()} for r in rows]
    except SQLAlchemyError as exc:
        raise CdcrError(f"review list failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        target.dispose()


def show(settings: Settings, item_id: int) -> dict[str, Any]:
    """One item with the rows recorded when it was found, and both rows as they are now."""
    source = _engine(settings.source.url_str(), "SOURCE")
    target = _engine(settings.target.url_str(), "TARGET")
    try:
        with target.connect() as c:
            row = (
                c.execute(
                    sa.text(
                        f"SELECT {_COLUMNS}, d.source_row, d.target_row, r.window_start, "
                        "r.window_end FROM cdcr.discrepancies d LEFT JOIN cdcr.reconcile_runs r "
                        "ON r.run_id = d.run_id WHERE d.id = :i"
                    ),
                    {"i": item_id},
                )
                .mappings()
                .first()
            )
        if row is None:
            raise CdcrError(f"no review item {item_id}")
        item = {k: _plain(v) for k, v in row.items()}
        env = Env(settings, source, target, utc_now, lambda tps: {})
        try:
            pair, _ = describe(env, item["table_name"])
        except CdcrError as exc:
            item["now"] = {"error": str(exc)}
            return item
        key = tuple(orjson.loads(item["key"]))
        with source.connect() as s, target.connect() as t:
            src = ck.fetch_normalized_by_keys(s, pair.source, [key]).get(key)
            tgt = ck.fetch_normalized_by_keys(t, pair.target, [key]).get(key)
        item["now"] = {
            "source_row": None if src is None else dict(zip(pair.columns, src, strict=True)),
            "target_row": None if tgt is None else dict(zip(pair.columns, tgt, strict=True)),
        }
        return item
    except SQLAlchemyError as exc:
        raise CdcrError(f"review show failed: {exc.__class__.__name__}: {exc}") from exc
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
    source = _engine(settings.source.url_str(), "SOURCE")
    target = _engine(settings.target.url_str(), "TARGET")
    env = Env(settings, source, target, now_getter, lambda tps: {})
    try:
        with target.connect() as c:
            found = {
                int(r[0])
                for r in c.execute(
                    sa.text("SELECT id FROM cdcr.discrepancies WHERE id = ANY(:i)"),
                    {"i": list(ids)},
                )
            }
        missing = [i for i in ids if i not in found]
        if missing:
            raise CdcrError(f"no review item {', '.join(map(str, missing))}")
        return [_resolve_one(env, i, decision, who, note) for i in dict.fromkeys(ids)]
    except SQLAlchemyError as exc:
        raise CdcrError(f"review resolve failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        source.dispose()
        target.dispose()


def _resolve_one(env: Env, item_id: int, decision: str, who: str, note: str | None) -> Resolved:
    with env.target.begin() as c:
        item = (
            c.execute(
                sa.text(
                    "SELECT id, run_id, table_name, key, review_state, resolution, resolved_by, "
                    "resolved_at FROM cdcr.discrepancies WHERE id = :i FOR UPDATE"
                ),
                {"i": item_id},
            )
            .mappings()
            .one()
        )
        if item["review_state"] != "open":
            how = item["resolution"] or "by reconcile (re-verified equal)"
            when = "" if item["resolved_at"] is None else f" at {item['resolved_at'].isoformat()}"
            by = "" if item["resolved_by"] is None else f" by {item['resolved_by']}"
            return Resolved(
                item_id, item["table_name"], item["key"], "already_resolved", f"{how}{by}{when}"
            )
        outcome, detail = "kept", ""
        if decision != "keep_target":
            outcome, detail = _write(env, c, item, decision)
        c.execute(
            sa.text(
                "UPDATE cdcr.discrepancies SET review_state = 'resolved', resolution = :d, "
                "resolved_by = :b, resolved_at = :at, note = :n WHERE id = :i"
            ),
            {"d": decision, "b": who, "at": checked_now(env.now_getter), "n": note, "i": item_id},
        )
    return Resolved(item_id, item["table_name"], item["key"], outcome, detail)


def _write(env: Env, c: sa.Connection, item: Any, decision: str) -> tuple[str, str]:
    pair, ttable = describe(env, item["table_name"])
    key = tuple(orjson.loads(item["key"]))
    row: dict[str, Any] | None = None
    if decision == "apply_source":
        with env.source.connect() as s:
            row = ck.fetch_text_by_keys(s, pair.source, [key]).get(key)
    position = rp.repair_position(c, ttable)
    ts = int(checked_now(env.now_getter).timestamp() * 1_000_000)
    if row is None:
        whole = ck.fetch_json_by_keys(c, pair.target, [key])
        if key in whole:
            c.execute(
                sa.text(
                    "INSERT INTO cdcr.extra_rows_archive (run_id, table_name, key, row) "
                    "VALUES (:r, :t, :k, CAST(:row AS jsonb))"
                ),
                {
                    "r": item["run_id"],
                    "t": item["table_name"],
                    "k": key_text(key),
                    "row": whole[key],
                },
            )
        result = write_batch(c, ttable, [RowWrite(key, None, position, ts)])
        why = "the source has no such row; " if decision == "apply_source" else ""
        return "deleted", f"{why}archived then deleted ({result.applied} applied)"
    result = write_batch(c, ttable, [RowWrite(key, row, position, ts)])
    return "upserted", f"target row set to the source row ({result.applied} applied)"


def open_summary(conn: sa.Connection, now: datetime) -> list[dict[str, Any]]:
    """Open items per table and kind, with the age of the oldest (for status and metrics)."""
    rows = conn.execute(
        sa.text(
            "SELECT table_name, kind, count(*) AS n, min(created_at) AS oldest "
            "FROM cdcr.discrepancies WHERE review_state = 'open' GROUP BY 1, 2 ORDER BY 1, 2"
        )
    ).mappings()
    return [
        {
            "table": r["table_name"],
            "kind": r["kind"],
            "open": int(r["n"]),
            "oldest": r["oldest"].isoformat(),
            "oldest_age_s": max(0.0, (now - r["oldest"]).total_seconds()),
        }
        for r in rows
    ]
