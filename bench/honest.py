"""Honest figures: a quiet-machine gate before each contender, repeated runs summarised as median
and spread, and a competing CPU load (a busy loop on one core) for the loaded-machine run."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any


def log(msg: str) -> None:  # bench.common's, without its imports (this module is unit-tested)
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


MAX_LOAD = 0.5  # 1-minute load average above which a contender does not start


@dataclass(frozen=True)
class Gate:
    """How long to wait for a quiet machine before a contender, and whether to wait at all."""

    max_load: float = MAX_LOAD
    wait_s: float = 150.0
    allow_noisy: bool = False

    def wait(self, label: str, extra_load: float = 0.0) -> dict[str, Any]:
        """Wait until the 1-minute load average is at most ``max_load + extra_load`` (at most
        ``wait_s``; not at all with ``allow_noisy``). Returns the load seen when the contender
        starts and ``noisy`` when it was still above the limit."""
        limit = self.max_load + extra_load
        t0 = time.monotonic()
        load = os.getloadavg()[0]
        if load > limit and not self.allow_noisy:
            log(f"{label}: load {load:.2f} > {limit:.2f}; waiting up to {self.wait_s:.0f}s")
            while load > limit and time.monotonic() - t0 < self.wait_s:
                time.sleep(5)
                load = os.getloadavg()[0]
        noisy = load > limit
        out = {
            "label": label,
            "loadavg_1m": round(load, 2),
            "limit": limit,
            "waited_s": round(time.monotonic() - t0, 1),
            "noisy": noisy,
        }
        if noisy:
            log(f"{label}: starting NOISY (load {load:.2f} > {limit:.2f})")
        return out


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min and max of ``values`` (the runs that produced a figure)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "n": len(values),
    }


FIGURES = ("events_per_s", "events_per_s_from_start", "cpu_s", "peak_rss_mb", "span_s")


def repeat(
    label: str,
    runs: int,
    gate: Gate,
    once: Callable[[int], dict[str, Any]],
    extra_load: float = 0.0,
) -> dict[str, Any]:
    """Run one contender ``runs`` times, gated once before the first run (later runs record the
    load they start at: the previous run's own load decays over a minute). Every run's result is
    kept; the summary is median and spread of each figure over the runs that completed."""
    g = gate.wait(label, extra_load)
    results = []
    for i in range(runs):
        la = round(os.getloadavg()[0], 2)
        r = once(i)
        r["run"] = i + 1
        r["loadavg_1m_at_start"] = la
        results.append(r)
        log(f"{label} run {i + 1}/{runs}: {r.get('events_per_s')} events/s")
    ok = [r for r in results if not r.get("error")]
    summary = {f: spread([r[f] for r in ok if r.get(f) is not None]) for f in FIGURES}
    rated = sorted((r for r in ok if r.get("events_per_s")), key=lambda r: r["events_per_s"])
    return {
        # The run at the median rate: its accounting, RSS samples and config stand for all.
        "median_run": rated[len(rated) // 2] if rated else (results[0] if results else {}),
        "contender": label,
        "gate": g,
        "noisy": g["noisy"],
        "runs": results,
        "summary": summary,
        "correct": all(r.get("check", {}).get("correct") for r in results),
        "failed_runs": len(results) - len(ok),
    }


class BusyLoop:
    """A competing CPU load: one child process spinning on one core, started on enter and
    stopped by its PID on exit."""

    CODE = "while True:\n    pass\n"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BusyLoop:
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE])
        log(f"busy loop pid {self.proc.pid} started (one core)")
        return self

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        log(f"busy loop pid {self.proc.pid} stopped")
