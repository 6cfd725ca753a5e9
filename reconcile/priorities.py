"""What `cdcr status` lists to verify next: per-table verification age, the ranked priorities
(unverified and failed windows) and the integrity rows of the latest runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.config import Settings
from cdc_reconciler.reconcile import history
from cdc_reconciler.reconcile.segments import Window
from cdc_reconciler.reconcile.windows import (
    floor_to_grid,
)
from cdc_reconciler.store import watermarks as wm

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
