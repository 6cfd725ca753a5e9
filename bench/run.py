"""Run the benchmarks side by side on the native stack and regenerate docs/benchmarks.md.

    eval "$(scripts/stack env)"
    python -m bench.run [--quick] [--only sweep,apply,loaded,scaleout,ceiling,reconcile,...]
                        [--runs 3] [--allow-noisy] [--quiet-wait 150] [--load] [--faust]

Contenders run ONE AT A TIME (the machine has 2 cores), each --runs times (median and spread),
each after waiting (up to --quiet-wait s) for the 1-minute load average to fall to 0.5; a contender
that starts above it is marked NOISY. The JDBC sink runs twice: its defaults and tuned for
PostgreSQL (the best of the `sweep` section). `loaded` repeats cdcr and the better sink next to a
busy loop on one core; `scaleout` runs 1, 2, 3 `cdcr run` processes in one group on a 6-partition
copy of the stream, then a rebalance under load. Results: bench/results/<date>.json,
docs/benchmarks.md and docs/benchmarks.png. Sections not selected with --only are carried over
from the newest earlier result file of the same mode, and say so.

Sizes: --quick is 50,000 records and a 1M-row reconcile pair (about 15 minutes); the full run is
200,000 records and a 10M-row pair (about 40 minutes on 2 idle cores: 29 apply runs — 3 × 3
contenders, 6 sweep settings, 3 × 2 loaded, 4 scale-out — about 20 minutes; the 10M-row
reconcile — build, scan ceiling, 3 alternating repeats of both contenders in both cases — about
12; and up to 7 waits for the load average to fall to 0.5 after the previous section, 1-2 minutes
each). `--only` without `profile` saves one more apply run: the per-stage wall time of every
`cdcr run` is in its own --json output and in the doc either way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import ROOT, Endpoints, cdcr_bin, drop_database, log
from bench.honest import Gate

SECTIONS = (
    "sweep",
    "apply",
    "loaded",
    "scaleout",
    "ceiling",
    "reconcile",
    "redis",
    "lag",
    "replay",
    "profile",
)
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
        if doc.get("quick") == quick and "runs" in doc:  # older files: one run per contender
            doc["_file"] = f.name
            return doc
    return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="50k events, 1M-row reconcile pair (about 15 minutes)",
    )
    ap.add_argument(
        "--only",
        default=None,
        help=f"comma-separated sections: {','.join(SECTIONS)} (default: all)",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per contender (median, spread)")
    ap.add_argument(
        "--allow-noisy",
        action="store_true",
        help="do not wait for a quiet machine (dev runs); contenders started above the load "
        "limit are marked NOISY",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=150.0,
        help="seconds to wait for the 1-minute load average to fall to 0.5 before a contender",
    )
    ap.add_argument(
        "--load", action="store_true", help="add the loaded-machine run (busy loop on one core)"
    )
    ap.add_argument("--faust", action="store_true", help="add the Faust integration contender")
    ap.add_argument("--records", type=int, default=None, help="override the stream size")
    ap.add_argument("--rows", type=int, default=None, help="override the reconcile pair size")
    ap.add_argument("--keep", action="store_true", help="keep topics and bench databases")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite docs/benchmarks.md from a saved bench/results/*.json",
    )
    args = ap.parse_args(argv)
    if args.report is not None:
        from bench.report import write_doc

        write_doc(json.loads(args.report.read_text()), args.report)
        return 0
    # SIGTERM/SIGINT unwind: the busy loop, the bench Connect worker and the topics are cleaned up.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda n, _f: sys.exit(128 + n))
    only = [s.strip() for s in (args.only or ",".join(SECTIONS)).split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r}")
    if args.load and "loaded" not in only:
        only.append("loaded")
    records = args.records or (50_000 if args.quick else 200_000)
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    ep = Endpoints.from_env()
    now = dt.datetime.now(dt.UTC)
    tag = now.strftime("%m%d%H%M") + uuid.uuid4().hex[:4]
    logs = ROOT / "bench" / "results" / "logs" / tag
    logs.mkdir(parents=True, exist_ok=True)
    cmdline = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    gate = Gate(wait_s=args.quiet_wait, allow_noisy=args.allow_noisy)
    res: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "tag": tag,
        "quick": args.quick,
        "command": cmdline,
        "git": git_rev(),
        "machine": machine(),
        "sections_run": only,
        "sections_all": list(SECTIONS),
        "runs": args.runs,
        "allow_noisy": args.allow_noisy,
        "load_limit": gate.max_load,
    }
    prev = previous(args.quick)
    for s in SECTIONS:
        # A section measured on a busy machine is never carried into another run's doc.
        if s not in only and s in prev and not noisy_section(prev[s]):
            res[s] = {**prev[s], "carried_over_from": prev.get("_file")}
    t_start = time.perf_counter()
    stream = None
    try:
        if {"sweep", "apply", "loaded", "scaleout", "ceiling", "redis", "profile", "replay"} & set(
            only
        ):
            from bench import changes

            stream = changes.produce(ep, tag, records)
            res["stream"] = stream_doc(ep, stream)
            apply_sections(ep, stream, tag, logs, only, args, gate, res, prev)
            if "ceiling" in only:
                from bench import apply as ap_

                res["ceiling"] = ap_.copy_ceiling(ep, "bench_cdcr")
            if "replay" in only:
                res["replay"] = replay_section()
                if res["replay"].get("available"):
                    from bench import apply as ap_

                    res["replay"] = ap_.run_replay(
                        ep,
                        stream,
                        tag,
                        logs,
                        res.get("apply", {}).get("cdcr", {}).get("median_run", {}),
                    )
            if "profile" in only:
                from bench.profile import profile_cdcr

                res["profile"] = profile_cdcr(ep, stream, tag, logs)
        if "reconcile" in only:
            from bench.reconcile_cmp import run_reconcile

            g = gate.wait("reconcile")
            res["reconcile"] = run_reconcile(ep, rows, logs)
            res["reconcile"]["gate"] = g
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


def noisy_section(sec: Any) -> bool:
    if not isinstance(sec, dict):
        return False
    return bool(sec.get("noisy")) or any(
        isinstance(v, dict) and v.get("noisy") for v in sec.values()
    )


def stream_doc(ep: Endpoints, stream: Any) -> dict[str, Any]:
    from bench import apply as ap_
    from bench import changes

    return {
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


def tuned_settings(res: dict[str, Any], prev: dict[str, Any], partitions: int) -> dict[str, Any]:
    """The tuned sink's settings: this run's sweep winner, else the last recorded sweep's, else
    the bench's default tuning. Returns the settings and where they come from."""
    from bench.apply import jdbc_tuned

    for doc, where in ((res, "this run's sweep"), (prev, f"the sweep of {prev.get('_file')}")):
        best = doc.get("sweep", {}).get("best")
        if best and doc.get("sweep", {}).get("partitions") == partitions:
            if doc["sweep"].get("noisy"):
                where += " (NOISY: measured on a busy machine)"
            return {"settings": best["settings"], "label": best["label"], "from": where}
    return {
        "settings": jdbc_tuned(partitions),
        "label": "unnest, reduction, batch 5000",
        "from": "the bench's default tuning (no sweep recorded)",
    }


def apply_sections(
    ep: Endpoints,
    stream: Any,
    tag: str,
    logs: Path,
    only: list[str],
    args: argparse.Namespace,
    gate: Gate,
    res: dict[str, Any],
    prev: dict[str, Any],
) -> None:
    """sweep, apply (cdcr, JDBC sink default and tuned, Faust), loaded, scaleout."""
    from bench import apply as ap_
    from bench.honest import BusyLoop, repeat
    from bench.sink_sweep import partitions_of, run_sweep

    runs = args.runs
    if "sweep" in only:
        res["sweep"] = run_sweep(ep, stream, tag, logs, gate)
    tuned = tuned_settings(res, prev, partitions_of(stream))

    def jdbc_rep(g: Gate, w: Any, label: str, settings: dict[str, str]) -> dict[str, Any]:
        def once(i: int) -> dict[str, Any]:
            return ap_.run_jdbc(ep, stream, tag, logs, w, settings, label=label, run=i)

        return repeat(label, runs, g, once)

    def jdbc_pair(g: Gate, w: Any) -> dict[str, Any]:
        out = {
            "jdbc_default": jdbc_rep(g, w, "JDBC sink, defaults", {}),
            "jdbc_tuned": jdbc_rep(g, w, "JDBC sink, tuned", tuned["settings"]),
        }
        out["jdbc_tuned"]["tuning"] = tuned
        return out

    def cdcr_rep(g: Gate, label: str = "cdcr run") -> dict[str, Any]:
        return repeat(label, runs, g, lambda i: ap_.run_cdcr(ep, stream, tag, logs, run=i + 1))

    if "apply" in only or "redis" in only:
        res.setdefault("apply", {})["cdcr"] = cdcr_rep(gate)
        res["redis"] = res["apply"]["cdcr"]["median_run"].get("redis", {})
    if "apply" in only:
        with ap_.bench_worker(ep, tag, logs) as w:
            res["apply"].update(jdbc_pair(gate, w))
        if args.faust:
            res["apply"]["faust"] = repeat(
                "Faust integration", runs, gate, lambda i: ap_.run_faust(ep, stream, tag, logs)
            )
    if "loaded" in only:
        g0 = gate.wait("loaded run (before the busy loop starts)")
        loaded: dict[str, Any] = {"gate": g0, "noisy": g0["noisy"]}
        key, label, settings = better_sink(res, tuned)
        # Inside the busy loop the load is ~1 by design: no waiting, the load is recorded.
        busy = Gate(allow_noisy=True, max_load=gate.max_load + 1.0)
        with BusyLoop() as bl:
            loaded["busy_loop_pid"] = bl.proc.pid if bl.proc else None
            loaded["cdcr"] = cdcr_rep(busy, "cdcr run (loaded)")
            with ap_.bench_worker(ep, tag, logs) as w:
                loaded[key] = jdbc_rep(busy, w, f"{label} (loaded)", settings)
        res["loaded"] = loaded
    if "scaleout" in only:
        from bench.scaleout import run_scaleout

        res["scaleout"] = run_scaleout(ep, stream, tag, logs, gate)


def better_sink(res: dict[str, Any], tuned: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """The JDBC sink setting with the higher median rate in this run's apply section (the tuned
    one when there is none)."""
    ap = res.get("apply", {})

    def med(key: str) -> float:
        return float(ap.get(key, {}).get("summary", {}).get("events_per_s", {}).get("median") or 0)

    if ap.get("jdbc_default") and med("jdbc_default") > med("jdbc_tuned"):
        return "jdbc_default", "JDBC sink, defaults", {}
    return "jdbc_tuned", "JDBC sink, tuned", tuned["settings"]


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
    topics += [t for t in meta.topics if t.startswith(f"{stream.prefix}p")]  # scale-out copies
    topics = sorted({t for t in topics if t in meta.topics})
    if topics:
        for f in admin.delete_topics(topics).values():
            try:
                f.result(30)
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass
    for db in (
        "bench_cdcr",
        "bench_faust",
        "bench_jdbc",
        "bench_prof",
        "bench_replay",
        "bench_scale",
    ):
        drop_database(ep, db)
    changes.drop_tables(ep)
    import redis

    from bench.apply import REDIS_DB

    for n in sorted(set(REDIS_DB.values())):  # the change IDs the cdcr runs recorded
        redis.Redis.from_url(ep.redis_url(n)).flushdb()
    log(f"cleaned up {len(topics)} topics, bench databases, Redis dbs and source tables")


if __name__ == "__main__":
    sys.exit(main())
