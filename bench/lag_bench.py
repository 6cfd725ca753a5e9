"""Benchmark: `cdcr lag --json` end to end, process start included, in the two shapes the lag
target names (DESIGN.md, issue 11):

- 3 groups x 64 partitions (target < 0.5 s): one 64-partition topic, 200 messages per
  partition; one group caught up, one half way, one at the start.
- 1 group x 1,000 partitions (target < 2 s): one 1,000-partition topic, 20 messages per
  partition; the group committed half way on 900 partitions and never on the other 100 (they are
  listed with reason no_commit and counted).

Each shape: one warm-up run, then ``--runs`` timed runs of the `cdcr` process; prints the median
and the spread (min, max) and, with ``--json-out``, writes them. The topics are deleted
afterwards. The machine may be shared: say so next to the figures.

    eval "$(scripts/stack env)"; .venv/bin/python bench/lag_bench.py [--runs 3] [--only 64|1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from cdc_reconciler import wiring
from cdc_reconciler.config import KafkaSettings
from cdc_reconciler.connectors.kafka import KafkaEdgeError
from cdc_reconciler.connectors.kafka.admin import KafkaAdmin

PARTITIONS = 64
GROUPS = 3
PER_PARTITION = 200
BIG_PARTITIONS = 1000
BIG_PER_PARTITION = 20
BIG_UNCOMMITTED_EVERY = 10  # every 10th partition of the big topic is never committed


def cdcr_command() -> list[str]:
    script = Path(sys.executable).with_name("cdcr")
    if script.exists():
        return [str(script)]
    found = shutil.which("cdcr")
    return (
        [found] if found else [sys.executable, "-c", "from cdc_reconciler.cli import main; main()"]
    )


def _wait_for_leaders(admin: KafkaAdmin, topic: str, partitions: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if admin.topic_partitions(f"^{topic}$").get(topic) == partitions:
                admin.watermarks([(topic, p) for p in range(partitions)])
                return
        except KafkaEdgeError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"topic {topic}: no leaders for {partitions} partitions after 60 s")


def setup(
    bootstrap: str,
    topic: str,
    groups: list[str],
    *,
    partitions: int = PARTITIONS,
    per_partition: int = PER_PARTITION,
    fractions: list[float] | None = None,
    skip_every: int = 0,
) -> None:
    """Create ``topic``, fill it and have each group commit ``fraction`` of every partition
    (except every ``skip_every``-th partition, left without a commit)."""
    admin = wiring.kafka_admin(KafkaSettings(bootstrap_servers=bootstrap))
    admin.create_topic(topic, partitions)
    _wait_for_leaders(admin, topic, partitions)
    prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for _ in range(per_partition):
        for p in range(partitions):
            prod.produce(topic, value=b"x" * 100, partition=p)
        prod.poll(0)
    prod.flush(60)
    for g, frac in zip(groups, fractions or [1.0, 0.5, 0.0], strict=True):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": g, "enable.auto.commit": False})
        offset = int(per_partition * frac)
        c.commit(
            offsets=[
                TopicPartition(topic, p, offset)
                for p in range(partitions)
                if not (skip_every and p % skip_every == 0)
            ],
            asynchronous=False,
        )
        c.close()


def time_once(cmd: list[str]) -> tuple[float, dict[str, Any]]:
    elapsed, _, doc = time_and_cpu_once(cmd)
    return elapsed, doc


def time_and_cpu_once(cmd: list[str]) -> tuple[float, float, dict[str, Any]]:
    """Wall time, and CPU time (user + system) of the child process: on a shared machine the
    CPU time moves much less with the load than the wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"cdcr lag failed ({out.returncode}): {out.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, json.loads(out.stdout)


def measure(
    cmds: dict[str, list[str]], runs: int
) -> dict[str, tuple[list[float], list[float], Any]]:
    """Time each command ``runs`` times after one warm-up each, alternating between the commands
    run by run so that a shared machine's load changes hit all of them alike. Per command: wall
    times, CPU times, the last JSON document."""
    for cmd in cmds.values():
        time_once(cmd)  # warm the page cache and the broker's group coordinator
    walls: dict[str, list[float]] = {label: [] for label in cmds}
    cpus: dict[str, list[float]] = {label: [] for label in cmds}
    docs: dict[str, Any] = {}
    for _ in range(runs):
        for label, cmd in cmds.items():
            elapsed, cpu, docs[label] = time_and_cpu_once(cmd)
            walls[label].append(elapsed)
            cpus[label].append(cpu)
    return {label: (walls[label], cpus[label], docs[label]) for label in cmds}


def shape(
    bootstrap: str,
    *,
    name: str,
    partitions: int,
    per_partition: int,
    fractions: list[float],
    skip_every: int,
    runs: int,
    target_s: float,
    extra: list[str],
    compare: str | None = None,
) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:6]
    topic = f"bench-lag-{tag}"
    groups = [f"bench-lag-{tag}-g{i}" for i in range(len(fractions))]
    setup(
        bootstrap,
        topic,
        groups,
        partitions=partitions,
        per_partition=per_partition,
        fractions=fractions,
        skip_every=skip_every,
    )
    args = ["lag", "--json"]
    for g in groups:
        args += ["--group", g]
    args += extra
    cmds = {"this checkout": [*cdcr_command(), *args]}
    if compare:
        cmds[compare] = [compare, *args]
    try:
        measured = measure(cmds, runs)
    finally:
        admin = wiring.kafka_admin(KafkaSettings(bootstrap_servers=bootstrap))
        admin.delete_topics([topic])
        admin.delete_groups(groups)
    results = []
    for label, (times, cpus, doc) in measured.items():
        rows = sum(len(g["partitions"]) for g in doc["groups"])
        med = statistics.median(times)
        res = {
            "shape": name,
            "cdcr": label,
            "groups": len(groups),
            "partitions": partitions,
            "rows": rows,
            "total_offset_lag": [g["total_offset_lag"] for g in doc["groups"]],
            "runs": runs,
            "median_s": round(med, 3),
            "min_s": round(min(times), 3),
            "max_s": round(max(times), 3),
            "times_s": [round(t, 3) for t in times],
            "cpu_median_s": round(statistics.median(cpus), 3),
            "cpu_min_s": round(min(cpus), 3),
            "cpu_max_s": round(max(cpus), 3),
            "target_s": target_s,
            "met": med < target_s,
            "command": "cdcr lag --json "
            + " ".join(f"--group G{i + 1}" for i in range(len(groups))),
        }
        print(
            f"{name} [{label}]: {rows} rows, total_offset_lag {res['total_offset_lag']}, "
            f"median {med:.3f} s over {runs} runs (min {min(times):.3f}, max {max(times):.3f})"
            f"; target < {target_s} s: {'met' if res['met'] else 'MISSED'}; CPU median "
            f"{res['cpu_median_s']:.3f} s ({res['cpu_min_s']:.3f}-{res['cpu_max_s']:.3f})"
        )
        results.append(res)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=["64", "1000"], default=None)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument(
        "--compare",
        default=None,
        metavar="CDCR",
        help="another cdcr executable (e.g. an older checkout's) timed alternately "
        "with this one on the same topics, for a before/after comparison",
    )
    ap.add_argument("extra", nargs="*", help="extra arguments for `cdcr lag`")
    args = ap.parse_args()
    bootstrap = os.environ.get("CDCR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    results = []
    if args.only in (None, "64"):
        results.extend(
            shape(
                bootstrap,
                name=f"{GROUPS} groups x {PARTITIONS} partitions",
                partitions=PARTITIONS,
                per_partition=PER_PARTITION,
                fractions=[1.0, 0.5, 0.0],
                skip_every=0,
                runs=args.runs,
                target_s=0.5,
                extra=args.extra,
                compare=args.compare,
            )
        )
    if args.only in (None, "1000"):
        results.extend(
            shape(
                bootstrap,
                name=f"1 group x {BIG_PARTITIONS} partitions",
                partitions=BIG_PARTITIONS,
                per_partition=BIG_PER_PARTITION,
                fractions=[0.5],
                skip_every=BIG_UNCOMMITTED_EVERY,
                runs=args.runs,
                target_s=2.0,
                extra=args.extra,
                compare=args.compare,
            )
        )
    load = os.getloadavg()
    doc = {
        "results": results,
        "loadavg_at_end": [round(x, 2) for x in load],
        "cpus": os.cpu_count(),
    }
    print(
        f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"on {os.cpu_count()} CPUs"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
