"""Scale-out on Kafka: `cdcr run` processes in ONE consumer group on a partitioned copy of the
bench stream (every topic with PARTITIONS partitions, records keyed as Debezium keyed them, so
each key keeps its order). 1, 2 and 3 processes started together, then a rebalance under load:
2 processes, and the 3rd started once a third of the stream is applied. Per process: records,
events/s, CPU s and µs of CPU per event; in total: events/s, the target against the source, and
cdcr's accounting (records consumed twice across the rebalance must be counted as duplicates or
stale, never applied twice)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bench.apply import (
    IDLE_S,
    REDIS_DB,
    applied_progress,
    cdcr_env,
    compare_with_source,
    last_json,
    prepare_cdcr_target,
)
from bench.changes import Stream
from bench.common import Endpoints, cdcr_bin, log, run_measured
from bench.honest import Gate

PARTITIONS = 6
DB = "bench_scale"
# A process that joins mid-run needs a rebalance before its first record: idle longer than that.
SCALE_IDLE_S = IDLE_S + 5


def partitioned_copy(ep: Endpoints, stream: Stream, partitions: int = PARTITIONS) -> Stream:
    """Copy the stream's topics into ``<prefix>p<N>.public.*`` with ``partitions`` partitions,
    same keys (murmur2 like Kafka's Java producer), values, headers and timestamps, in order."""
    prefix = f"{stream.prefix}p{partitions}"
    topics = [t.replace(stream.prefix, prefix, 1) for t in stream.topics]
    admin = AdminClient({"bootstrap.servers": ep.kafka})
    for f in admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
    ).values():
        f.result(30)
    prod = Producer(
        {
            "bootstrap.servers": ep.kafka,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "enable.idempotence": True,
        }
    )
    t0 = time.perf_counter()
    n = 0
    for src, dst in zip(stream.topics, topics, strict=True):
        c = Consumer(
            {
                "bootstrap.servers": ep.kafka,
                "group.id": f"bench-copy-{prefix}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        c.assign([TopicPartition(src, 0, 0)])
        while True:
            msgs = c.consume(10_000, timeout=1)
            eof = False
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof = True
                        continue
                    raise KafkaException(err)
                ts_type, ts = m.timestamp()
                while True:
                    try:
                        prod.produce(
                            dst,
                            value=m.value(),
                            key=m.key(),
                            headers=m.headers(),
                            timestamp=ts if ts_type else 0,
                        )
                        break
                    except BufferError:
                        prod.poll(0.1)
                n += 1
            prod.poll(0)
            if eof or not msgs:
                break
        c.close()
    prod.flush(120)
    log(
        f"partitioned copy: {n:,} records into {partitions} partitions per topic in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    return dataclasses.replace(stream, prefix=prefix, topics=topics, records=n)


def _one_process(
    ep: Endpoints, stream: Stream, group: str, logs: Path, name: str, out: dict[str, Any]
) -> None:
    env = cdcr_env(ep, stream, DB, group, REDIS_DB["cdcr"])
    cmd = [cdcr_bin(), "run", "--stop-when-idle", str(SCALE_IDLE_S), "--json"]
    m = run_measured(cmd, env, timeout=3600, stderr_file=logs / f"scale-{group}-{name}.log")
    doc = last_json(m.stdout)
    consumed = int(doc.get("consumed") or 0)
    first, last = doc.get("first_record_at"), doc.get("last_commit_at")
    span = (last - first) if first and last else None
    out[name] = {
        "returncode": m.returncode,
        "output": doc,
        "consumed": consumed,
        "wall_s": round(m.wall_s, 2),
        "cpu_s": round(m.cpu_s, 2),
        "peak_rss_mb": round(m.peak_rss_mb, 1),
        "span_s": round(span, 2) if span else None,
        "events_per_s": round(consumed / span) if span else None,
        "cpu_us_per_event": round(m.cpu_s / consumed * 1e6, 1) if consumed else None,
        "started_at": m.started_at,
        **({"error": m.stderr_tail[-1500:]} if m.returncode != 0 else {}),
    }


def run_group(
    ep: Endpoints,
    stream: Stream,
    tag: str,
    logs: Path,
    processes: int,
    late: int = 0,
) -> dict[str, Any]:
    """``processes`` `cdcr run` processes in one group started together, plus ``late`` more
    started once a third of the stream is applied (a rebalance under load)."""
    group = f"bench-{tag}-scale-{processes}-{late}"
    env = cdcr_env(ep, stream, DB, group, REDIS_DB["cdcr"])
    prepare_cdcr_target(ep, DB, env, REDIS_DB["cdcr"])
    procs: dict[str, Any] = {}
    threads = []
    t0 = time.perf_counter()
    for i in range(processes):
        th = threading.Thread(
            target=_one_process, args=(ep, stream, group, logs, f"p{i + 1}", procs)
        )
        th.start()
        threads.append(th)
    joined_at = None
    if late:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n, _ = applied_progress(ep, DB, group)
            if n >= stream.records // 3:
                break
            time.sleep(0.2)
        joined_at = applied_progress(ep, DB, group)[0]
        log(f"scale-out: starting {late} more process(es) at {joined_at:,} records applied")
        for i in range(late):
            th = threading.Thread(
                target=_one_process,
                args=(ep, stream, group, logs, f"p{processes + i + 1}", procs),
            )
            th.start()
            threads.append(th)
    for th in threads:
        th.join()
    res: dict[str, Any] = {
        "processes": processes + late,
        "started_late": late,
        "late_joined_at_records": joined_at,
        "group": group,
        "records": stream.records,
        "per_process": dict(sorted(procs.items())),
        "wall_s": round(time.perf_counter() - t0, 2),
        **summarise(procs, stream.records),
        "check": compare_with_source(ep, DB),
        "errors": [p["error"] for p in procs.values() if p.get("error")],
    }
    totals = res["totals"]
    log(
        f"scale-out {processes}+{late}: {res['events_per_s']} events/s total, consumed "
        f"{totals['consumed']:,} of {stream.records:,} records, duplicates "
        f"{totals['skipped_duplicate']:,}, target correct {res['check']['correct']}"
    )
    return res


def summarise(procs: dict[str, Any], records: int) -> dict[str, Any]:
    """Totals over the processes of one group: events/s from the first record any process read
    to the last commit any process made, cdcr's accounting, CPU per event."""
    firsts = [f for p in procs.values() if (f := p["output"].get("first_record_at"))]
    lasts = [x for p in procs.values() if (x := p["output"].get("last_commit_at"))]
    span = (max(lasts) - min(firsts)) if firsts and lasts else None
    keys = (
        "consumed",
        "applied",
        "skipped_stale",
        "skipped_duplicate",
        "skipped_noop",
        "dead_lettered",
    )
    totals = {k: sum(int(p["output"].get(k) or 0) for p in procs.values()) for k in keys}
    cpu = sum(p["cpu_s"] for p in procs.values())
    return {
        "totals": totals,
        "span_s": round(span, 2) if span else None,
        "events_per_s": round(records / span) if span else None,
        "cpu_s": round(cpu, 2),
        "cpu_us_per_event": round(cpu / totals["consumed"] * 1e6, 1)
        if totals["consumed"]
        else None,
        "consumed_more_than_once": totals["consumed"] - records,
        # Every consumed record has exactly one outcome in cdcr's accounting.
        "accounting_balanced": sum(totals[k] for k in keys[1:]) == totals["consumed"],
    }


def run_scaleout(
    ep: Endpoints,
    stream: Stream,
    tag: str,
    logs: Path,
    gate: Gate,
    counts: tuple[int, ...] = (1, 2, 3),
) -> dict[str, Any]:
    part = partitioned_copy(ep, stream)
    out: dict[str, Any] = {
        "partitions_per_topic": PARTITIONS,
        "topics": part.topics,
        "records": part.records,
        "idle_s": SCALE_IDLE_S,
    }
    out["gate"] = gate.wait("scale-out")
    out["noisy"] = out["gate"]["noisy"]
    out["runs"] = [run_group(ep, part, tag, logs, n) for n in counts]
    out["rebalance"] = run_group(ep, part, tag, logs, 2, late=1)
    return out
