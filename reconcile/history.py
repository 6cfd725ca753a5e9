"""Re-verifying history, and the priority of the windows still to verify (issue 15, items 3-4).

*When a window was last verified* is read from the audit trail, ``cdcr.reconcile_runs``: every
finished, non-dry-run run whose status says the rows agreed (``clean``, ``repaired``,
``open_extras``) verified each grid window inside ``[window_start, window_end)`` at its
``finished`` time (a run of the first window, ``window_start`` NULL, covers everything before its
end). Incremental runs and re-verification runs (``counts->>'reverify' = 'true'``) both count,
so no extra table is needed: the newest covering run is the window's last verification.

Re-verification walks grid windows behind the watermark, oldest-verified first, and never moves
the watermark (reconcile/run.py, ``Request.reverify``). Adjacent chosen windows are merged into
one diff of at most ``MAX_SPAN`` grid windows: the diff bisects by key range inside it anyway,
and a table whose change-time column has no index is then scanned once per span instead of once
per five minutes.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.errors import CdcrError
from cdc_reconciler.reconcile.segments import Window
from cdc_reconciler.reconcile.windows import floor_to_grid
from cdc_reconciler.store import runs

# Grid windows of history looked at per table (35 days of 5-minute windows): bounds the work
# of `cdcr status` and of one re-verification pass.
MAX_HISTORY = 10_000
MAX_SPAN = 12  # grid windows merged into one re-verification diff (an hour of 5-minute windows)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or sums of them (``1d12h``); CdcrError otherwise."""
    t = text.strip().lower()
    parts = _PART.findall(t)
    if not t or "".join(n + u for n, u in parts) != t:
        raise CdcrError(f"not a duration: {text!r} (e.g. 90s, 30m, 12h, 7d, 2w, 1d12h)")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise CdcrError(f"the duration must be positive: {text!r}")
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class Verified:
    """A grid window behind the watermark and when it was last verified (None: no run of the
    audit trail covers it, e.g. a watermark set by hand)."""

    window: Window
    last_verified: datetime | None


def grid_windows(lo: datetime, hi: datetime, size: timedelta) -> list[Window]:
    """Grid windows covering ``[lo, hi)``, the first and last clipped to it."""
    out: list[Window] = []
    start = lo
    while start < hi:
        end = min(floor_to_grid(start, size) + size, hi)
        out.append(Window(start, end))
        start = end
    return out


def last_verified(
    conn: sa.Connection, table: str, lo: datetime, hi: datetime, size: timedelta
) -> list[Verified]:
    """The grid windows of ``[lo, hi)`` with their last verification (see the module docstring),
    oldest window first. At most ``MAX_HISTORY`` windows: ``lo`` moves up to ``hi`` minus that
    many windows."""
    lo = max(lo, hi - MAX_HISTORY * size)
    # The table's first verified window ends one grid window after its first change (or is the
    # whole table): nothing before that window's grid start is history worth listing.
    first_end = runs.first_verified_end(conn, table)
    if first_end is not None:
        lo = max(lo, floor_to_grid(first_end - size, size))
    if lo >= hi:
        return []
    verified = runs.verified_between(conn, table, lo, hi)
    windows = grid_windows(lo, hi, size)
    base = floor_to_grid(lo, size)
    seen: list[datetime | None] = [None] * len(windows)
    for v in verified:  # oldest first: a later run overwrites
        ws, we, finished = v.window_start, v.window_end, v.finished
        # Window i is [max(base + i*size, lo), min(base + (i+1)*size, hi)); the run covers it
        # when it starts at or before the window's start and ends at or after its end.
        first = 0 if ws is None or ws <= lo else -(-(ws - base) // size)
        last = len(windows) if we >= hi else (we - base) // size
        for i in range(first, min(last, len(windows))):
            seen[i] = finished
    return [Verified(w, seen[i]) for i, w in enumerate(windows)]


def choose(
    history: Sequence[Verified],
    *,
    due_before: datetime | None = None,
    budget: int | None = None,
    sample: int | None = None,
    seed: int | None = None,
) -> list[Window]:
    """The windows to re-verify: those last verified before ``due_before`` (all when None),
    oldest-verified first (never-recorded ones first of all), at most ``budget`` of them, or
    ``sample`` of them drawn at random with ``seed``; then merged (``merge``)."""
    due = [
        v
        for v in history
        if due_before is None or v.last_verified is None or v.last_verified < due_before
    ]
    if sample is not None:
        due = random.Random(seed).sample(  # noqa: S311 - which windows, not secrets
            due, min(sample, len(due))
        )
    due.sort(key=lambda v: (v.last_verified is not None, v.last_verified or v.window.end))
    if budget is not None:
        due = due[:budget]
    return merge(sorted((v.window for v in due), key=lambda w: w.end))


def merge(windows: Sequence[Window], max_span: int = MAX_SPAN) -> list[Window]:
    """Adjacent windows (in order) joined, at most ``max_span`` of them into one."""
    out: list[Window] = []
    n = 0
    for w in windows:
        if out and out[-1].end == w.start and n < max_span:
            out[-1] = Window(out[-1].start, w.end)
            n += 1
        else:
            out.append(w)
            n = 1
    return out


def oldest_verification(history: Sequence[Verified], now: datetime) -> dict[str, Any]:
    """Per table for ``cdcr status``: the window verified longest ago and how long ago."""
    if not history:
        return {
            "oldest_verified_at": None,
            "oldest_verified_age_s": None,
            "window": None,
            "windows": 0,
            "never_recorded": 0,
        }
    never = [v for v in history if v.last_verified is None]
    known = [v for v in history if v.last_verified is not None]
    oldest = never[0] if never else min(known, key=lambda v: v.last_verified or now)
    at = oldest.last_verified
    return {
        "oldest_verified_at": None if at is None else at.isoformat(),
        "oldest_verified_age_s": None if at is None else (now - at).total_seconds(),
        "window": _window_json(oldest.window),
        "windows": len(history),
        "never_recorded": len(never),
    }


# --- gaps with priorities ---------------------------------------------------------------------

# How much more a window that failed counts than one not yet verified: a known difference
# nobody resolved outranks a window that is merely waiting its turn.
STATUS_WEIGHT = {"unresolved": 4.0, "failed": 4.0, "check_failed": 3.0, "unverified": 1.0}


def priority(status: str, age_s: float, rows_changed: int | None) -> float:
    """``weight(status) × (1 + age in hours) × (1 + log10(1 + rows changed))``, rounded to
    0.01: failed windows first, then older ones, then larger ones. Unknown row counts count as 0.
    """
    rows = max(rows_changed or 0, 0)
    score = STATUS_WEIGHT[status] * (1 + max(age_s, 0) / 3600) * (1 + math.log10(1 + rows))
    return round(score, 2)


def failed_windows(conn: sa.Connection) -> list[dict[str, Any]]:
    """Windows whose latest run failed (``unresolved``, ``check_failed``, ``failed``) and that no
    later verifying run covers: still to be resolved, whether ahead of or behind the watermark."""
    rows: list[dict[str, Any]] = [
        {
            "run_id": r.run_id,
            "table_name": r.table_name,
            "window_start": r.window_start,
            "window_end": r.window_end,
            "status": r.status,
            "finished": r.finished,
            "counts": r.counts,
        }
        for r in runs.failed_uncovered(conn)
    ]
    # Several failed runs of the same window: the latest speaks for it.
    latest: dict[tuple[str, Any, Any], dict[str, Any]] = {}
    for r in rows:
        k = (r["table_name"], r["window_start"], r["window_end"])
        if k not in latest or (r["finished"] or r["window_end"]) >= (
            latest[k]["finished"] or latest[k]["window_end"]
        ):
            latest[k] = r
    return list(latest.values())


# `cdcr status` counts rows changed per window for at most this long per table; past it the
# priorities leave rows out (an unindexed change-time column on a huge table must not hang it).
ROWS_CHANGED_TIMEOUT_MS = 5000


def rows_changed(
    conn: sa.Connection,
    qualified_target: str,
    change_time_column: str | None,
    windows: Sequence[Window],
    size: timedelta,
) -> list[int | None]:
    """Target rows whose change time falls in each window, counted per grid window of ``size``
    in one scan over the windows' whole range (a window off the grid counts the grid windows it
    touches whole). None for every window when the table has no change-time column, or the count
    fails or takes longer than ``ROWS_CHANGED_TIMEOUT_MS``: the priority then leaves rows out."""
    if change_time_column is None or not windows:
        return [None] * len(windows)
    from cdc_reconciler.connectors.postgres.sql import quote_ident
    from cdc_reconciler.reconcile.checksum import split_name

    schema, name = split_name(qualified_target)
    ct = quote_ident(change_time_column)
    rel = f"{quote_ident(schema)}.{quote_ident(name)}"
    step = size.total_seconds()
    buckets = _count_buckets(conn, ct, rel, windows, step)
    if buckets is None:
        return [None] * len(windows)
    return _per_window(buckets, windows, step)


def _count_buckets(
    conn: sa.Connection, ct: str, rel: str, windows: Sequence[Window], step: float
) -> dict[int, int] | None:
    """Rows of ``rel`` per grid bucket of ``step`` seconds over the windows' whole range, in one
    scan bounded by ``ROWS_CHANGED_TIMEOUT_MS``; None when the count fails or times out."""
    starts = [w.start for w in windows]
    lo = None if any(x is None for x in starts) else min(x for x in starts if x is not None)
    hi = max(w.end for w in windows)
    sql = (
        f"SELECT floor(extract(epoch FROM {ct}) / :step)::bigint, count(*) FROM {rel} "
        f"WHERE {ct} < :hi" + ("" if lo is None else f" AND {ct} >= :lo") + " GROUP BY 1"
    )
    try:
        with conn.begin_nested():
            conn.execute(sa.text(f"SET LOCAL statement_timeout = {ROWS_CHANGED_TIMEOUT_MS}"))
            buckets = {
                int(b): int(n)
                for b, n in conn.execute(sa.text(sql), {"step": step, "hi": hi, "lo": lo}).all()
                if b is not None
            }
    except sa.exc.DBAPIError:
        return None
    return buckets


def _per_window(
    buckets: dict[int, int], windows: Sequence[Window], step: float
) -> list[int | None]:
    """Each window's rows: the buckets it touches."""

    def bucket(t: datetime) -> int:
        return math.floor(t.timestamp() / step)

    out: list[int | None] = []
    for w in windows:
        first = None if w.start is None else bucket(w.start)
        last = bucket(w.end - timedelta(microseconds=1))
        out.append(
            sum(n for b, n in buckets.items() if (first is None or b >= first) and b <= last)
        )
    return out


def next_command(table: str, w: Window, status: str, *, behind_watermark: bool) -> str:
    """What would verify the window next, as a command to run."""
    rng = (f"--from {w.start.isoformat()} " if w.start is not None else "") + (
        f"--to {w.end.isoformat()}"
    )
    if status == "unverified" and not behind_watermark:
        # The reconciler takes the oldest window after the watermark next; a continuous
        # `cdcr reconcile` does so on its own.
        return f"cdcr reconcile --table {table} --once"
    if status == "unverified":
        return f"cdcr reconcile --table {table} --reverify {rng}"
    review = f"cdcr review list --table {table}"
    if behind_watermark:
        return f"{review}; then cdcr reconcile --table {table} --reverify {rng}"
    return f"{review}; then cdcr reconcile --table {table} --once {rng}"


def _window_json(w: Window) -> dict[str, str | None]:
    return {"start": None if w.start is None else w.start.isoformat(), "end": w.end.isoformat()}
