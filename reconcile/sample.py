"""Sampling: estimate a table's mismatch rate from N random keys (``cdcr reconcile --sample N``).

For tables too large to verify fully every window. Reads only; the caller records one audit row.

The population is the union ``U`` of the source keys ``S`` and the target keys ``T`` (within the
change-time range, for windowed tables). Every key of ``U`` gets the same chance to be sampled:

1. Both sides are sampled with the same Bernoulli rate ``q`` (``TABLESAMPLE BERNOULLI(100·q)
   REPEATABLE(seed)``, one independent seed per side; no TABLESAMPLE at all when ``q = 1``).
   ``q = (N + 3·√N + 10) / max(|S|, |T|)``, capped at 1, so that about N keys come back.
2. A key drawn from the target is kept only when the source has no row with that key (a lookup
   regardless of change time): keys present on both sides enter through the source draw only.
   So a key of ``S`` is drawn with probability ``q`` (through the source), a key of ``T \\ S`` with
   probability ``q`` (through the target) — an equal-probability sample of ``U``, in which rows
   only in the target (``extra``) show up at their true rate.
3. When more than N keys were kept, a uniform random subset of N of them is taken (still equal
   probability). Fewer than N are reported as they are (``sampled`` < ``requested``).

Each sampled key is classified as in the full diff: ``missing`` (source only), ``extra`` (target
only), ``mismatched`` (both, normalized rows differ), or equal. The mismatch rate is
``(missing + extra + mismatched) / sampled`` with a 95 % Wilson score interval. The sample is drawn
without replacement from a finite population, so the interval uses the finite-population
correction (``z² · (|U| − n) / (|U| − 1)``): when the sample is the whole population (a *census*:
``q = 1`` and nothing trimmed) the interval is the exact rate. ``|U|`` is estimated as
``|S| + extras drawn / q``.

Row counts: an exact ``count(*)`` when the planner's estimate (``pg_class.reltuples``) is below
``EXACT_COUNT_BELOW`` rows or unknown, else the estimate (which ignores the change-time range, so
``q`` can come out lower than needed and fewer keys be sampled; the rate stays unbiased).

Both sides are read in one REPEATABLE READ, READ ONLY transaction each, as the diff does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.sql import quote_ident
from cdc_reconciler.reconcile import checksum as ck
from cdc_reconciler.reconcile.checksum import Side, TablePair
from cdc_reconciler.reconcile.diff import Difference, Kind, _snapshot
from cdc_reconciler.reconcile.segments import Key, Segment, Window
from cdc_reconciler.store import runs
from cdc_reconciler.store.runs import RunStatus

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal distribution
EXACT_COUNT_BELOW = 1_000_000
MAX_AUDITED_KEYS = 1000  # differing keys kept in the audit row of a sampling run


def wilson_interval(
    k: int,
    n: int,
    *,
    z: float = Z95,
    population: int | None = None,
) -> tuple[float, float]:
    """The Wilson score interval for ``k`` successes in ``n`` trials (default 95 %).

    With ``population`` (the size of the finite population sampled without replacement) ``z²``
    is scaled by the finite-population correction ``(population − n) / (population − 1)``, so a
    sample of the whole population gives the exact proportion ``[k/n, k/n]``. ``n = 0`` gives
    ``(0, 1)``: nothing is known."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z2 = z * z
    if population is not None:
        if population < n:
            raise ValueError(f"population {population} is smaller than the sample {n}")
        z2 *= (population - n) / (population - 1) if population > 1 else 0.0
    p = k / n
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = math.sqrt(z2) / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    if z2 == 0.0:
        lo = hi = p
    return lo, hi


@dataclass(slots=True)
class SampleReport:
    table: str
    requested: int
    method: str  # "census" | "bernoulli"
    seed: int
    change_time_from: datetime | None
    change_time_to: datetime | None
    source_rows: int = 0
    target_rows: int = 0
    bernoulli_rate: float = 1.0
    population: int = 0
    sampled: int = 0
    differences: tuple[Difference, ...] = ()
    run_id: str | None = None
    note: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in Kind})

    @property
    def mismatches(self) -> int:
        return len(self.differences)

    @property
    def rate(self) -> float | None:
        return None if self.sampled == 0 else self.mismatches / self.sampled

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(
            self.mismatches, self.sampled, population=max(self.population, self.sampled)
        )

    def summary(self) -> dict[str, Any]:
        """The numbers (no keys): the ``counts`` of the audit row and part of ``as_json``."""
        lo, hi = self.interval
        return {
            "method": self.method,
            "requested": self.requested,
            "sampled": self.sampled,
            "population": self.population,
            "source_rows": self.source_rows,
            "target_rows": self.target_rows,
            "bernoulli_rate": self.bernoulli_rate,
            "seed": self.seed,
            "mismatches": self.mismatches,
            "rate": self.rate,
            "confidence": 0.95,
            "interval": [lo, hi],
            **self.counts,
        }

    def as_json(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {
            "table": self.table,
            "run_id": self.run_id,
            "change_time_from": iso(self.change_time_from),
            "change_time_to": iso(self.change_time_to),
            "note": self.note,
            **self.summary(),
            "differences": [
                {"kind": d.kind.value, "key": list(d.key), "columns": list(d.columns)}
                for d in self.differences
            ],
        }


def _row_count(conn: sa.Connection, side: Side, where: str, params: dict[str, Any]) -> int:
    est = conn.execute(
        sa.text(
            "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relname = :t"
        ),
        {"s": side.schema, "t": side.name},
    ).scalar()
    if est is None or est < 0 or est < EXACT_COUNT_BELOW:
        return int(
            conn.execute(
                sa.text(f"SELECT count(*) FROM {side.sql_name} WHERE {where}"), params
            ).scalar_one()
        )
    return int(est)


def _draw(
    conn: sa.Connection, side: Side, where: str, params: dict[str, Any], rate: float, seed: int
) -> list[Key]:
    cols = ", ".join(quote_ident(k) for k in side.key_columns)
    sample = ""
    if rate < 1.0:
        # Numbers formatted here, never user text: percent in (0, 100), seed an integer.
        sample = f" TABLESAMPLE BERNOULLI ({100.0 * rate!r}) REPEATABLE ({int(seed)})"
    rows = conn.execute(
        sa.text(f"SELECT {cols} FROM {side.sql_name}{sample} WHERE {where}"), params
    ).all()
    return [tuple(r) for r in rows]


def sample_table(
    source: sa.Engine,
    target: sa.Engine,
    pair: TablePair,
    n: int,
    *,
    seed: int | None = None,
    window: Window | None = None,
) -> SampleReport:
    """Sample about ``n`` keys of ``pair`` (see the module docstring); ``window`` narrows a
    windowed table to rows whose change time lies in it. Reads only."""
    if n < 1:
        raise ValueError("the sample size must be at least 1")
    seed = random.SystemRandom().randrange(1, 2**31 - 1) if seed is None else seed
    rng = random.Random(seed)  # noqa: S311 - statistical sampling, not security
    seg = Segment(pair.name, window=window if pair.windowed else None)
    report = SampleReport(
        pair.name,
        n,
        "bernoulli",
        seed,
        seg.window.start if seg.window else None,
        seg.window.end if seg.window else None,
    )
    with _snapshot(source) as src, _snapshot(target) as tgt:
        sp: dict[str, Any] = {}
        tp: dict[str, Any] = {}
        s_where = ck.segment_where(pair.source, seg, sp)
        t_where = ck.segment_where(pair.target, seg, tp)
        report.source_rows = _row_count(src, pair.source, s_where, sp)
        report.target_rows = _row_count(tgt, pair.target, t_where, tp)
        base = max(report.source_rows, report.target_rows)
        if base == 0:
            report.method = "census"
            return report
        q = min(1.0, (n + 3 * math.sqrt(n) + 10) / base)
        report.bernoulli_rate = q
        from_source = _draw(src, pair.source, s_where, sp, q, seed)
        from_target = _draw(tgt, pair.target, t_where, tp, q, seed + 1)
        in_source = ck.fetch_normalized_by_keys(src, pair.source, from_target)
        extras = [k for k in from_target if k not in in_source]
        s_keys, t_keys = _keep(report, rng, n, q, from_source, extras)
        src_rows = ck.fetch_normalized_by_keys(src, pair.source, s_keys)
        tgt_rows = ck.fetch_normalized_by_keys(tgt, pair.target, [*s_keys, *t_keys])
    report.differences = tuple(
        sorted(
            _classify(pair, s_keys, t_keys, src_rows, tgt_rows),
            key=lambda d: (d.kind.value, repr(d.key)),
        )
    )
    for d in report.differences:
        report.counts[d.kind.value] += 1
    return report


def _keep(
    report: SampleReport,
    rng: random.Random,
    n: int,
    q: float,
    from_source: Sequence[Key],
    extras: Sequence[Key],
) -> tuple[list[Key], list[Key]]:
    """At most ``n`` of the drawn keys (source keys and target-only keys), recording the
    method, sample size and estimated population in ``report``."""
    kept: list[tuple[str, Key]] = [("s", k) for k in from_source] + [("t", k) for k in extras]
    trimmed = len(kept) > n
    if trimmed:
        kept = rng.sample(kept, n)
    report.method = "census" if q >= 1.0 and not trimmed else "bernoulli"
    report.sampled = len(kept)
    report.population = (
        len(from_source) + len(extras)
        if q >= 1.0
        else max(report.sampled, report.source_rows + round(len(extras) / q))
    )
    return [k for side, k in kept if side == "s"], [k for side, k in kept if side == "t"]


def _classify(
    pair: TablePair,
    s_keys: Sequence[Key],
    t_keys: Sequence[Key],
    src_rows: dict[Key, ck.Normalized],
    tgt_rows: dict[Key, ck.Normalized],
) -> list[Difference]:
    def named(row: ck.Normalized) -> dict[str, str | None]:
        return dict(zip(pair.columns, row, strict=True))

    out: list[Difference] = []
    for k in s_keys:
        srow, trow = src_rows.get(k), tgt_rows.get(k)
        if srow is None:  # cannot happen inside one snapshot; be safe
            continue
        if trow is None:
            out.append(Difference(Kind.MISSING, k, source_row=named(srow)))
        elif trow != srow:
            cols = tuple(c for c, a, b in zip(pair.columns, srow, trow, strict=True) if a != b)
            out.append(Difference(Kind.MISMATCHED, k, cols, named(srow), named(trow)))
    for k in t_keys:
        trow = tgt_rows.get(k)
        out.append(Difference(Kind.EXTRA, k, target_row=None if trow is None else named(trow)))
    return out


def record_sample(
    conn: sa.Connection, report: SampleReport, *, run_id: str, started: datetime, finished: datetime
) -> None:
    """The audit row of a sampling run: ``cdcr.reconcile_runs`` with status ``sampled``, the
    numbers in ``counts`` and the sample (with up to ``MAX_AUDITED_KEYS`` differing keys) in
    ``checks``. Nothing else is written."""
    check = {
        "check": "sample",
        "result": "equal" if not report.differences else f"{report.mismatches} differences",
        "differences": [
            {"kind": d.kind.value, "key": list(d.key), "columns": list(d.columns)}
            for d in report.differences[:MAX_AUDITED_KEYS]
        ],
    }
    runs.record(
        conn,
        run_id,
        report.table,
        RunStatus.SAMPLED,
        window_start=report.change_time_from,
        window_end=report.change_time_to or finished,
        started=started,
        finished=finished,
        counts=report.summary(),
        checks=[check],
    )
    report.run_id = run_id
