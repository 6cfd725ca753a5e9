"""`cdcr lag --json` for 3 groups x 64 partitions, reusing bench/lag_bench.py's setup and timing
(imported, not copied): median of 5 runs after one warm-up, interpreter start included."""

from __future__ import annotations

import statistics
import uuid
from typing import Any

from bench import lag_bench as lb
from bench.common import Endpoints, log
from cdc_reconciler import wiring
from cdc_reconciler.config import KafkaSettings


def run_lag(ep: Endpoints, runs: int = 5) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    topic = f"bench-lag-{tag}"
    groups = [f"bench-lag-{tag}-g{i}" for i in range(lb.GROUPS)]
    lb.setup(ep.kafka, topic, groups)
    try:
        cmd = [*lb.cdcr_command(), "lag", "--json"]
        for g in groups:
            cmd += ["--group", g]
        lb.time_once(cmd)
        times = []
        doc: dict[str, Any] = {}
        for _ in range(runs):
            elapsed, doc = lb.time_once(cmd)
            times.append(elapsed)
        rows = sum(len(g["partitions"]) for g in doc["groups"])
    finally:
        wiring.kafka_admin(KafkaSettings(bootstrap_servers=ep.kafka)).delete_topics([topic])
    med = statistics.median(times)
    log(f"lag: median {med:.3f}s over {runs} runs")
    return {
        "groups": lb.GROUPS,
        "partitions": lb.PARTITIONS,
        "rows": rows,
        "runs": runs,
        "median_s": round(med, 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "command": "cdcr lag --json --group G1 --group G2 --group G3 (bench/lag_bench.py setup)",
    }
