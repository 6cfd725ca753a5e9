"""Prometheus metrics of the reconciler, and the HTTP endpoint serving them with a health check.

Like ``stream/metrics.py``, each ReconcileMetrics owns its registry (no global state). Names are
referenced by deploy/prometheus/alerts.yml and the Grafana dashboard; keep them.

- ``cdcr_reconcile_windows_behind{table}``: closed windows not yet reconciled (watermark to
  closure, as ``cdcr status`` lists them);
- ``cdcr_reconcile_discrepancies_open{table}``: discrepancies in review state ``open``;
- ``cdcr_reconcile_last_verified_timestamp_seconds{table}``: the watermark
  (``reconciled_through``) as a Unix time: everything changed before it is verified;
- ``cdcr_reconcile_discrepancies_found_total{table,kind}``: differences found by window diffs;
- ``cdcr_reconcile_found_in_history_total{table,kind}``: differences found by re-verifying
  already-verified windows (``cdcr reconcile --reverify`` and the background budget), counted
  here instead of in ``discrepancies_found``;
- ``cdcr_reconcile_repaired_total{table}``: keys repaired (replayed from Kafka, re-read from the
  source, or extra rows deleted with ``--delete-extra``);
- ``cdcr_reconcile_deferred_total{table}``: candidates dropped as in flight (reconcile/inflight.py);
- ``cdcr_reconcile_review_open{table,kind}`` and
  ``cdcr_reconcile_review_oldest_age_seconds{table}``: the review queue (reconcile/review.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge

from cdc_reconciler.reconcile.diff import Kind
from cdc_reconciler.reconcile.model import TableReport
from cdc_reconciler.store import discrepancies
from cdc_reconciler.stream import metrics as stream_metrics


class ReconcileMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.windows_behind = Gauge(
            "cdcr_reconcile_windows_behind",
            "Closed windows not yet reconciled (from the watermark to the closure time)",
            ["table"],
            registry=r,
        )
        self.discrepancies_open = Gauge(
            "cdcr_reconcile_discrepancies_open",
            "Discrepancies recorded for review and still open",
            ["table"],
            registry=r,
        )
        self.last_verified = Gauge(
            "cdcr_reconcile_last_verified_timestamp_seconds",
            "The table's watermark (reconciled_through) as a Unix time",
            ["table"],
            registry=r,
        )
        self.review_open = Gauge(
            "cdcr_reconcile_review_open",
            "Review queue items still open, by table and kind",
            ["table", "kind"],
            registry=r,
        )
        self.review_oldest = Gauge(
            "cdcr_reconcile_review_oldest_age_seconds",
            "Age of the oldest open review queue item of the table (0 when none)",
            ["table"],
            registry=r,
        )
        self.deferred = Counter(
            "cdcr_reconcile_deferred",
            "Candidates dropped as in flight (never reported, repaired or counted as found)",
            ["table"],
            registry=r,
        )
        self.found = Counter(
            "cdcr_reconcile_discrepancies_found",
            "Differences found by window diffs (missing, extra, mismatched)",
            ["table", "kind"],
            registry=r,
        )
        self.found_in_history = Counter(
            "cdcr_reconcile_found_in_history",
            "Differences found by re-verifying already-verified windows (not in "
            "discrepancies_found)",
            ["table", "kind"],
            registry=r,
        )
        self.repaired = Counter(
            "cdcr_reconcile_repaired",
            "Keys repaired (replayed, re-read from the source, or extra rows deleted)",
            ["table"],
            registry=r,
        )

    def observe(self, report: TableReport) -> None:
        """Account one pass over a table."""
        t = report.table
        for kind in Kind:
            self.found.labels(t, kind.value)  # every series exists from the first pass
        self.repaired.labels(t)
        self.deferred.labels(t)
        for kind in Kind:
            self.found_in_history.labels(t, kind.value)
        for w in report.windows:
            found = self.found_in_history if w.counts.get("reverify") else self.found
            for kind in Kind:
                n = int(w.counts.get(kind.value, 0) or 0)
                if n:
                    found.labels(t, kind.value).inc(n)
            if w.counts.get("deferred"):
                self.deferred.labels(t).inc(int(w.counts["deferred"]))
            if w.counts.get("repaired"):
                self.repaired.labels(t).inc(int(w.counts["repaired"]))
        if report.reverify:
            return  # a re-verification pass says nothing about the watermark or windows behind
        if report.windows_behind is not None:
            self.windows_behind.labels(t).set(report.windows_behind)
        if report.reconciled_through is not None:
            self.last_verified.labels(t).set(report.reconciled_through.timestamp())

    def refresh_open(self, target: sa.Engine, tables: Iterable[str]) -> None:
        """Set the open-discrepancy gauges from ``cdcr.discrepancies`` (0 for tables with none)."""
        names = list(tables)
        with target.connect() as c:
            by_kind = discrepancies.open_by_kind(c, names)
        found: dict[str, int] = {}
        kinds = {(o.table, o.kind): o.n for o in by_kind}
        oldest: dict[str, float] = {}
        for o in by_kind:
            found[o.table] = found.get(o.table, 0) + o.n
            oldest[o.table] = max(oldest.get(o.table, 0.0), o.oldest_age_s)
        for name in names:
            self.discrepancies_open.labels(name).set(found.get(name, 0))
            for kind in (*(k.value for k in Kind), "orphan"):
                self.review_open.labels(name, kind).set(kinds.get((name, kind), 0))
            self.review_oldest.labels(name).set(oldest.get(name, 0.0))


# Served by the same HTTP endpoint code as the apply engine's metrics.
serve = stream_metrics.serve
