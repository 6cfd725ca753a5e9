"""Where `cdcr run` spends its time: py-spy samples the same stream applied into a fresh target
(its own database, group and Redis db), idle samples included (``--idle --threads``), so the
waits show: per thread, the top lines by own time (a thread blocked in a database call shows as
that call), and over all threads the top functions by own and inclusive time. The run's own
wall-time breakdown per stage (stream/timing.py, logged at the end of the run) is added."""

from __future__ import annotations

import collections
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.apply import REDIS_DB, cdcr_env, prepare_cdcr_target
from bench.changes import Stream
from bench.common import Endpoints, cdcr_bin, log, run_measured


def py_spy() -> str | None:
    p = Path(sys.executable).with_name("py-spy")
    return str(p) if p.exists() else shutil.which("py-spy")


def _frame(f: str) -> str:
    """``func (path/file.py:line)`` -> ``func (file.py:line)``."""
    if " (" not in f:
        return f
    name, _, where = f.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit('/', 1)[-1]})"


def by_thread(raw: Path, n: int = 8) -> dict[str, Any]:
    """Per thread (py-spy --threads puts it first in each stack): its samples and the lines it
    spent them on, idle waits included; threads that only ever wait (metrics server) are
    left out."""
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) < 2 or not frames[0].startswith("thread ("):
            continue
        name = frames[0].split(": ", 1)[-1]
        threads[name][_frame(frames[-1])] += int(count)
    out: dict[str, Any] = {}
    for name, lines in sorted(threads.items()):
        total = sum(lines.values())
        top_lines = lines.most_common(n)
        if name.startswith("cdcr-metrics"):
            continue
        out[name] = {
            "samples": total,
            "top": [(f, round(100 * c / total, 1)) for f, c in top_lines],
        }
    return out


def timing_from_log(path: Path) -> dict[str, Any] | None:
    """The run's wall time per stage, from its last "timing over N batches" log line."""
    found = None
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if "timing over" in line and "{" in line:
                found = json.loads(line[line.index("{") :])
    return found


def top(raw: Path, n: int = 15) -> dict[str, Any]:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        parts = stack.split(";")
        if parts[0].startswith("thread ("):  # --threads: the thread comes first, not a frame
            if parts[0].split(": ", 1)[-1].startswith("cdcr-metrics"):
                continue  # the metrics server only ever waits for a scrape
            parts = parts[1:]
        if not parts:
            continue
        c = int(count)
        total += c
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in parts
        ]
        own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c

    def pct(c: int) -> float:
        return round(100 * c / total, 1) if total else 0.0

    return {
        "samples": total,
        "own": [(f, pct(c)) for f, c in own.most_common(n)],
        # CLI plumbing (click/typer, runpy, the command wrappers) is left out of the list.
        "inclusive": [
            (f, pct(c))
            for f, c in incl.most_common(n + 30)
            if not f.endswith(
                (
                    "(core.py)",
                    "(main.py)",
                    "(cli.py)",
                    "(command.py)",
                    "(cdcr)",
                    "(<frozen runpy>)",
                    "(runpy.py)",
                    "(root.py)",
                )
            )
            # the CLI's error guard, the `run` command's wrapper and thread start-up
            and not f.startswith(("GuardedGroup.", "guarded (", "run (stream.py)", "Thread."))
        ][:n],
    }


def profile_cdcr(ep: Endpoints, stream: Stream, tag: str, logs: Path) -> dict[str, Any]:
    spy = py_spy()
    if not spy:
        return {"status": "py-spy not installed"}
    db = "bench_prof"
    env = cdcr_env(ep, stream, db, f"bench-{tag}-prof", REDIS_DB["profile"])
    prepare_cdcr_target(ep, db, env, REDIS_DB["profile"])
    raw = logs / "profile.txt"
    cmd = [
        spy,
        "record",
        "--idle",
        "--threads",
        "--format",
        "raw",
        "--rate",
        "200",
        "-o",
        str(raw),
        "--",
        cdcr_bin(),
        "run",
        "--stop-when-idle",
        "5",
        "--json",
    ]
    log("profile: " + " ".join(cmd[1:]))
    m = run_measured(cmd, env, timeout=3600, stderr_file=logs / "profile.log")
    if m.returncode != 0 or not raw.exists():
        return {"status": "failed", "error": m.stderr_tail[-1500:]}
    out = top(raw)
    out["threads"] = by_thread(raw)
    out["timing"] = timing_from_log(logs / "profile.log")
    out["command"] = (
        "py-spy record --idle --threads --format raw --rate 200 -- cdcr run --stop-when-idle 5 "
        "--json"
    )
    out["note"] = (
        "samples of every thread of the Python process, idle ones included (a thread waiting "
        "on PostgreSQL, Kafka or another thread shows as the call it waits in); the 5 s idle "
        "wait at the end is included too"
    )
    return out
