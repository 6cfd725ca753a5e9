"""A small sweep of the Debezium JDBC sink's PostgreSQL settings on the bench stream: UNNEST
multi-row upserts on/off, the reduction buffer on/off, batch.size (= max.poll.records), with
tasks.max = partitions. One run per setting on one bench Connect worker; the fastest setting whose
target equals the source is the "tuned" sink of the apply comparison.

    python -m bench.run --only sweep --allow-noisy      # or as part of the full run
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.apply import bench_worker, jdbc_tuned, run_jdbc
from bench.changes import Stream
from bench.common import Endpoints, log
from bench.honest import Gate

# (label, batch.size = max.poll.records, UNNEST, reduction buffer). UNNEST fails on this stream's
# `date` columns in the sink 3.5.0.Final and 3.6.0.Final ("invalid input syntax for type date":
# the io.debezium.time.Date day number is bound as text into the date[] array); the two UNNEST
# settings stay in the sweep so that each run records whether it still does.
GRID: tuple[tuple[str, int, bool, bool], ...] = (
    ("unnest, reduction, batch 5000", 5000, True, True),
    ("unnest, no reduction, batch 5000", 5000, True, False),
    ("no unnest, reduction, batch 2000", 2000, False, True),
    ("no unnest, reduction, batch 5000", 5000, False, True),
    ("no unnest, reduction, batch 10000", 10000, False, True),
    ("no unnest, no reduction, batch 5000", 5000, False, False),
)


def partitions_of(stream: Stream) -> int:
    return len(stream.topics) * max(1, getattr(stream, "partitions", 1))


def run_sweep(
    ep: Endpoints, stream: Stream, tag: str, logs: Path, gate: Gate, grid: Any = GRID
) -> dict[str, Any]:
    parts = partitions_of(stream)
    out: dict[str, Any] = {"records": stream.records, "partitions": parts, "configs": []}
    with bench_worker(ep, tag, logs) as worker:
        out["gate"] = gate.wait("JDBC sink sweep")
        out["noisy"] = out["gate"]["noisy"]
        for i, (label, batch, unnest, reduction) in enumerate(grid):
            settings = jdbc_tuned(parts, batch=batch, unnest=unnest, reduction=reduction)
            r = run_jdbc(ep, stream, tag, logs, worker, settings, label=f"sweep {label}", run=i)
            out["configs"].append(
                {
                    "label": label,
                    "settings": settings,
                    "events_per_s": r.get("events_per_s"),
                    "cpu_s": r.get("cpu_s"),
                    "peak_rss_mb": r.get("peak_rss_mb"),
                    "correct": r.get("check", {}).get("correct"),
                    "loadavg_before": r.get("loadavg_before"),
                    "error": r.get("error"),
                }
            )
    ok = [c for c in out["configs"] if c["correct"] and c["events_per_s"]]
    if ok:
        best = max(ok, key=lambda c: c["events_per_s"])
        out["best"] = {"label": best["label"], "settings": best["settings"]}
        log(f"sweep: best {best['label']} at {best['events_per_s']} events/s")
    return out
