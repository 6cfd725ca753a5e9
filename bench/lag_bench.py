"""Benchmark: `cdcr lag --json` end to end for 3 groups x 64 partitions (target: under 1 s).

Creates one 64-partition topic, produces messages to every partition, has 3 groups commit
different offsets (one caught up, one half way, one at the start), then times the `cdcr` process
(interpreter start included) 5 times and prints the median. The topic is deleted afterwards.

    eval "$(scripts/stack env)"; .venv/bin/python bench/lag_bench.py [--runs 5] [-- extra args]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from cdc_reconciler.connectors.kafka_admin import KafkaAdmin, client_config

PARTITIONS = 64
GROUPS = 3
PER_PARTITION = 200


def cdcr_command() -> list[str]:
    script = Path(sys.executable).with_name("cdcr")
    if script.exists():
        return [str(script)]
    found = shutil.which("cdcr")
    return [found] if found else [sys.executable, "-c",
                                   "from cdc_reconciler.cli import main; main()"]


def setup(bootstrap: str, topic: str, groups: list[str]) -> None:
    admin = KafkaAdmin(client_config(bootstrap))
    admin.create_topic(topic, PARTITIONS)
    time.sleep(1.0)  # leaders for 64 new partitions
    prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for _ in range(PER_PARTITION):
        for p in range(PARTITIONS):
            prod.produce(topic, value=b"x" * 100, partition=p)
        prod.poll(0)
    prod.flush(30)
    fractions = [1.0, 0.5, 0.0]
    for g, frac in zip(groups, fractions, strict=True):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": g,
                      "enable.auto.commit": False})
        offset = int(PER_PARTITION * frac)
        c.commit(offsets=[TopicPartition(topic, p, offset) for p in range(PARTITIONS)],
                 asynchronous=False)
        c.close()


def time_once(cmd: list[str]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"cdcr lag failed ({out.returncode}): {out.stderr}")
    return elapsed, json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("extra", nargs="*", help="extra arguments for `cdcr lag`")
    args = ap.parse_args()
    bootstrap = os.environ.get("CDCR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    tag = uuid.uuid4().hex[:6]
    topic = f"bench-lag-{tag}"
    groups = [f"bench-lag-{tag}-g{i}" for i in range(GROUPS)]
    setup(bootstrap, topic, groups)
    try:
        cmd = [*cdcr_command(), "lag", "--json"]
        for g in groups:
            cmd += ["--group", g]
        cmd += args.extra
        time_once(cmd)  # warm the page cache and the broker's group coordinator
        times = []
        doc: dict[str, Any] = {}
        for _ in range(args.runs):
            elapsed, doc = time_once(cmd)
            times.append(elapsed)
        parts = sum(len(g["partitions"]) for g in doc["groups"])
        print(f"cdcr lag --json {' '.join(args.extra)}: {GROUPS} groups x {PARTITIONS} partitions"
              f" ({parts} rows): median {statistics.median(times):.3f} s over {args.runs} runs "
              f"(min {min(times):.3f}, max {max(times):.3f})")
    finally:
        KafkaAdmin(client_config(bootstrap)).delete_topics([topic])


if __name__ == "__main__":
    main()
