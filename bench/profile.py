"""Where `cdcr run` spends its time: py-spy samples the same stream applied into a fresh target
(its own database, group and Redis db). Top functions by own time and by inclusive time."""

from __future__ import annotations

import collections
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


def top(raw: Path, n: int = 15) -> dict[str, Any]:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
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
                )
            )
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
    out["command"] = "py-spy record --format raw --rate 200 -- cdcr run --stop-when-idle 5 --json"
    out["note"] = (
        "samples of the Python process only (active, non-idle threads); the 5 s idle "
        "wait at the end is mostly excluded (py-spy drops idle samples by default)"
    )
    return out
