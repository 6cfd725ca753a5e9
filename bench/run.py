"""Run the benchmarks side by side on the native stack and regenerate docs/benchmarks.md.

    eval "$(scripts/stack env)"
    python -m bench.run [--quick] [--only apply,ceiling,reconcile,redis,lag,replay,profile]

Contenders run ONE AT A TIME (the machine has 2 cores). Results: bench/results/<date>.json,
docs/benchmarks.md and docs/benchmarks.png. Sections not selected with --only are carried over
from the newest earlier result file of the same mode, and say so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import ROOT, Endpoints, cdcr_bin, drop_database, log

SECTIONS = ("apply", "ceiling", "reconcile", "redis", "lag", "replay", "profile")
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    cpu = Path("/proc/cpuinfo").read_text()
    models = [ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("model name")]
    mhz = [ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("cpu MHz")]
    free = subprocess.run(["free", "-m"], capture_output=True, text=True).stdout
    mem_total = next((ln.split()[1] for ln in free.splitlines() if ln.startswith("Mem:")), "?")
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu_model": models[0] if models else "?",
        "cpus": len(models),
        "cpu_mhz": mhz[0] if mhz else "?",
        "mem_total_mb": int(mem_total),
        "free_m": free.rstrip(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "psql": pg,
        "hypervisor": "yes" if " hypervisor" in cpu else "no",
    }


def git_rev() -> str:
    r = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return r.stdout.strip() + ("+dirty" if dirty else "")


def previous(quick: bool) -> dict[str, Any]:
    files = sorted(RESULTS.glob("*.json"), reverse=True)
    for f in files:
        doc: dict[str, Any] = json.loads(f.read_text())
        if doc.get("quick") == quick:
            doc["_file"] = f.name
            return doc
    return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="~200k events, 1M-row reconcile pair (under 10 minutes)",
    )
    ap.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections: {','.join(SECTIONS)}"
    )
    ap.add_argument("--records", type=int, default=None, help="override the stream size")
    ap.add_argument("--rows", type=int, default=None, help="override the reconcile pair size")
    ap.add_argument("--keep", action="store_true", help="keep topics and bench databases")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r}")
    records = args.records or (200_000 if args.quick else 1_000_000)
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    ep = Endpoints.from_env()
    now = dt.datetime.now(dt.UTC)
    tag = now.strftime("%m%d%H%M") + uuid.uuid4().hex[:4]
    logs = ROOT / "bench" / "results" / "logs" / tag
    logs.mkdir(parents=True, exist_ok=True)
    cmdline = (
        "python -m bench.run"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only != ",".join(SECTIONS) else "")
    )
    res: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "tag": tag,
        "quick": args.quick,
        "command": cmdline,
        "git": git_rev(),
        "machine": machine(),
        "sections_run": only,
    }
    prev = previous(args.quick)
    for s in SECTIONS:
        if s not in only and s in prev:
            res[s] = {**prev[s], "carried_over_from": prev.get("_file")}
    t_start = time.perf_counter()
    stream = None
    try:
        if {"apply", "ceiling", "redis", "profile", "replay"} & set(only):
            from bench import apply as ap_
            from bench import changes

            stream = changes.produce(ep, tag, records)
            res["stream"] = {
                "prefix": stream.prefix,
                "topics": stream.topics,
                "records": stream.records,
                "changes": stream.changes,
                "kinds": stream.counts,
                "produce_s": round(stream.produce_s, 1),
                "final_rows": ap_.final_rows(ep),
                "per_round": {
                    "inserts": changes.INSERTS,
                    "updates": changes.UPDATES,
                    "hot_keys": changes.HOT_KEYS,
                    "hot_repeats": changes.HOT_REPEATS,
                    "deletes": changes.DELETES,
                },
            }
            if "apply" in only or "redis" in only:
                cd = ap_.run_cdcr(ep, stream, tag, logs)
                res.setdefault("apply", {})["cdcr"] = cd
                res["redis"] = cd["redis"]
            if "apply" in only:
                res["apply"]["faust"] = ap_.run_faust(ep, stream, tag, logs)
                res["apply"]["jdbc"] = ap_.run_jdbc(ep, stream, tag, logs)
            if "ceiling" in only:
                res["ceiling"] = ap_.copy_ceiling(ep, "bench_cdcr")
            if "replay" in only:
                res["replay"] = replay_section()
                if res["replay"].get("available"):
                    res["replay"] = ap_.run_replay(
                        ep, stream, tag, logs, res.get("apply", {}).get("cdcr", {})
                    )
            if "profile" in only:
                from bench.profile import profile_cdcr

                res["profile"] = profile_cdcr(ep, stream, tag, logs)
        if "reconcile" in only:
            from bench.reconcile_cmp import run_reconcile

            res["reconcile"] = run_reconcile(ep, rows, logs)
        if "lag" in only:
            from bench.lag import run_lag

            res["lag"] = run_lag(ep)
    finally:
        res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        out = RESULTS / f"{now.strftime('%Y-%m-%dT%H%M%S')}{'-quick' if args.quick else ''}.json"
        out.write_text(json.dumps(res, indent=1, default=str))
        log(f"results: {out.relative_to(ROOT)} ({res['elapsed_s']}s)")
        if stream and not args.keep:
            cleanup(ep, stream)
    if not args.no_doc:
        from bench.report import write_doc

        write_doc(res, out)
    return 0


def replay_section() -> dict[str, Any]:
    r = subprocess.run([cdcr_bin(), "replay", "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        return {"status": "not available: `cdcr replay` does not exist yet"}
    return {"available": True}


def cleanup(ep: Endpoints, stream: Any) -> None:
    from confluent_kafka.admin import AdminClient

    from bench import changes

    admin = AdminClient({"bootstrap.servers": ep.kafka})
    topics = [*stream.topics, f"{stream.prefix}.cdcr.dlq"]
    meta = admin.list_topics(timeout=10)
    topics += [t for t in meta.topics if t.startswith(f"_bench_{stream.prefix[5:]}_")]
    topics = [t for t in topics if t in meta.topics]
    if topics:
        for f in admin.delete_topics(topics).values():
            try:
                f.result(30)
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass
    for db in ("bench_cdcr", "bench_faust", "bench_jdbc", "bench_prof", "bench_replay"):
        drop_database(ep, db)
    changes.drop_tables(ep)
    log(f"cleaned up {len(topics)} topics, bench databases and source tables")


if __name__ == "__main__":
    sys.exit(main())
