"""Apply contenders, one at a time, on the same topics, each into its own target database:
cdcr run, the Faust integration, the Debezium JDBC sink connector (on a second Kafka Connect
worker the bench starts and stops by PID). Plus the COPY ceiling and the target-vs-source check."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.changes import COLUMNS, TABLES, Stream
from bench.common import (
    KAFKA_JARS,
    ROOT,
    STACK,
    Endpoints,
    cdcr_bin,
    free_port,
    group_lag,
    http,
    log,
    log_ends,
    recreate_database,
    run_measured,
    wait_until,
)

# 3.6.1.Final of the JDBC sink is not published on Maven Central (the connector is): 3.6.0.Final is
# the newest sink, fetched with bench/java/pom.xml (which says why it pins Hibernate ORM). 3.5.0.Final
# (the first with dialect.postgres.unnest.insert.enabled) fails its UNNEST upserts on `date`
# columns here ("invalid input syntax for type date"). Its own plugin directory, so no other
# version is loaded by the bench's Connect worker.
JDBC_VERSION = os.environ.get("CDCR_BENCH_JDBC_VERSION", "3.6.0.Final")
JDBC_PLUGIN_PATH = STACK / "jars" / f"jdbc-sink-{JDBC_VERSION}"
JDBC_PLUGIN_DIR = JDBC_PLUGIN_PATH / "debezium-connector-jdbc"
BENCH_CONNECT_PORT = int(os.environ.get("CDCR_BENCH_CONNECT_PORT", "18084"))
IDLE_S = 5.0
# Redis databases of the bench (each contender's own, so one contender's processed IDs never
# make the next one skip as duplicates). Flushed before use.
REDIS_DB = {"cdcr": 10, "faust": 11, "profile": 12, "replay": 13}


# ------------------------------------------------------------------------- target checking
def compare_with_source(ep: Endpoints, db: str) -> dict[str, Any]:
    """Row-by-row: md5 of every row's text over the source columns, per key, both sides."""
    out: dict[str, Any] = {"tables": {}, "rows_differing": 0}
    for t, cols in COLUMNS.items():
        q = f"select id, md5(row({', '.join(cols)})::text) from public.{t}"
        sides = []
        for d in ("source", db):
            conn = ep.connect_pg(d)
            with conn.cursor() as cur:
                cur.execute("set timezone = 'UTC'")
                cur.execute(q)
                sides.append(dict(cur.fetchall()))
            conn.close()
        src, tgt = sides
        missing = len(src.keys() - tgt.keys())
        extra = len(tgt.keys() - src.keys())
        changed = sum(1 for k in src.keys() & tgt.keys() if src[k] != tgt[k])
        out["tables"][t] = {
            "source_rows": len(src),
            "target_rows": len(tgt),
            "missing": missing,
            "extra": extra,
            "mismatched": changed,
        }
        out["rows_differing"] += missing + extra + changed
    out["correct"] = out["rows_differing"] == 0
    return out


def applied_progress(ep: Endpoints, db: str, group: str) -> tuple[int, float | None]:
    """Records accounted for by ``group`` in the target, and the newest commit's epoch time."""
    conn = ep.connect_pg(db)
    with conn.cursor() as cur:
        cur.execute(
            "select coalesce(sum(consumed), 0), extract(epoch from max(updated_at)) "
            "from cdcr.applied_offsets where consumer_group = %s",
            (group,),
        )
        n, last = cur.fetchone()
    conn.close()
    return int(n), (float(last) if last is not None else None)


def final_rows(ep: Endpoints) -> int:
    conn = ep.connect_pg("source")
    with conn.cursor() as cur:
        n = 0
        for t in TABLES:
            cur.execute(f"select count(*) from public.{t}")
            n += cur.fetchone()[0]
    conn.close()
    return n


# ----------------------------------------------------------------------------------- cdcr
_RUN_IDS = itertools.count(1)


def cdcr_env(ep: Endpoints, stream: Stream, db: str, group: str, redis_db: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDCR_")}
    env.update(
        {
            "CDCR_KAFKA__BOOTSTRAP_SERVERS": ep.kafka,
            "CDCR_KAFKA__GROUP_ID": group,
            "CDCR_KAFKA__TOPIC_PATTERN": rf"^{re.escape(stream.prefix)}\.public\.bench_[a-z]+$",
            "CDCR_KAFKA__TOPIC_PREFIX": stream.prefix,
            "CDCR_SOURCE__URL": ep.sa_url("source"),
            "CDCR_TARGET__URL": ep.sa_url(db),
            "CDCR_REDIS__URL": ep.redis_url(redis_db),
            "CDCR_METRICS__PORT": str(metrics_port()),
        }
    )
    return env


def metrics_port() -> int:
    """A free port whose successor is free too (the Faust app binds CDCR_METRICS__PORT + 1)."""
    import socket

    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", p + 1)) != 0:
                return p
    return free_port()


def prepare_cdcr_target(ep: Endpoints, db: str, env: dict[str, str], redis_db: int) -> None:
    recreate_database(ep, db)
    redis.Redis.from_url(ep.redis_url(redis_db)).flushdb()
    for args in (["migrate"], ["tables", "sync", *[f"public.{t}" for t in TABLES]]):
        r = subprocess.run(
            [cdcr_bin(), *args], env=env, capture_output=True, text=True, timeout=300
        )
        if r.returncode != 0:
            raise RuntimeError(f"cdcr {' '.join(args)} failed: {r.stderr[-2000:]}")


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except ValueError:
                continue
    return {}


def result_from(
    name: str, m: Any, doc: dict[str, Any], stream: Stream, logs: Path
) -> dict[str, Any]:
    consumed = int(doc.get("consumed") or 0)
    first, last = doc.get("first_record_at"), doc.get("last_commit_at")
    span = (last - first) if first and last else None
    res: dict[str, Any] = {
        "contender": name,
        "returncode": m.returncode,
        "output": doc,
        "consumed": consumed,
        "records": stream.records,
        "wall_s": round(m.wall_s, 2),
        "cpu_s": round(m.cpu_s, 2),
        "user_s": round(m.user_s, 2),
        "sys_s": round(m.sys_s, 2),
        "peak_rss_mb": round(m.peak_rss_mb, 1),
        "rss_samples": [(round(t, 2), round(r, 1)) for t, r in m.rss_samples[::4]],
        "log": str(logs),
        "loadavg_before": list(os.getloadavg()),
    }
    if span:
        res["span_s"] = round(span, 2)
        res["events_per_s"] = round(consumed / span)
        # From process start (interpreter, connections, group join) to the last commit.
        res["catchup_from_start_s"] = round(last - m.started_at, 2)
        res["events_per_s_from_start"] = round(stream.records / (last - m.started_at))
    else:
        # No timestamps in the output: wall time minus the idle wait.
        res["span_s"] = round(m.wall_s - IDLE_S, 2)
        res["events_per_s"] = round(consumed / max(m.wall_s - IDLE_S, 1e-3))
        res["note"] = "no first_record_at/last_commit_at in the output: wall time minus idle"
    if m.returncode != 0:
        res["error"] = m.stderr_tail[-1500:]
    return res


def run_cdcr(
    ep: Endpoints, stream: Stream, tag: str, logs: Path, run: int = 0, db: str = "bench_cdcr"
) -> dict[str, Any]:
    """One `cdcr run --stop-when-idle` from the start of the stream (fresh group, database and
    Redis db) until it has caught up."""
    # Unique per run: a reused group would start at its committed offsets (the log ends).
    group = f"bench-{tag}-cdcr-{next(_RUN_IDS)}" + (f"-{run}" if run else "")
    env = cdcr_env(ep, stream, db, group, REDIS_DB["cdcr"])
    prepare_cdcr_target(ep, db, env, REDIS_DB["cdcr"])
    cmd = [cdcr_bin(), "run", "--stop-when-idle", str(IDLE_S), "--json"]
    log(f"cdcr: {' '.join(cmd)} (group {group}, target {db})")
    logf = logs / f"cdcr-run-{db}-{run}.log"
    m = run_measured(cmd, env, timeout=3600, stderr_file=logf)
    res = result_from("cdcr run", m, last_json(m.stdout), stream, logf)
    res["command"] = " ".join(cmd)
    res["database"] = db
    res["check"] = compare_with_source(ep, db)
    res["redis"] = redis_bytes_per_id(ep, REDIS_DB["cdcr"])
    log(f"cdcr: {res.get('events_per_s')} events/s, check {res['check']['correct']}")
    return res


def redis_bytes_per_id(ep: Endpoints, db: int) -> dict[str, Any]:
    r = redis.Redis.from_url(ep.redis_url(db))
    keys = list(r.scan_iter("cdcr:*ids:*", count=1000))
    ids = sum(int(r.scard(k)) for k in keys)
    mem = sum(int(r.memory_usage(k, samples=0) or 0) for k in keys)
    enc = {r.object("encoding", k).decode() for k in keys} if keys else set()
    return {
        "keys": len(keys),
        "ids": ids,
        "bytes": mem,
        "bytes_per_id": round(mem / ids, 1) if ids else None,
        "encodings": sorted(enc),
    }


# ---------------------------------------------------------------------------------- Faust
def faust_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("cdc_reconciler.stream.faust_app") is not None
    except ImportError:
        return False


def run_faust(ep: Endpoints, stream: Stream, tag: str, logs: Path) -> dict[str, Any]:
    if not faust_available():
        return {"contender": "Faust integration", "status": "not yet available"}
    db, group = "bench_faust", f"bench-{tag}-{next(_RUN_IDS)}"  # unique per run
    env = cdcr_env(ep, stream, db, group, REDIS_DB["faust"])
    prepare_cdcr_target(ep, db, env, REDIS_DB["faust"])
    cmd = [sys.executable, "-m", "cdc_reconciler.stream.faust_app", "--stop-when-idle", str(IDLE_S)]
    log(f"faust: {' '.join(cmd)} (group {group}-faust, target {db})")
    state = {"n": -1, "since": time.perf_counter()}

    def done_but_running() -> bool:
        # --stop-when-idle of the Faust app did not always end the process: stop it once the
        # target holds every record's outcome and nothing changed for IDLE_S + 10 s.
        n, _ = applied_progress(ep, db, f"{group}-faust")
        if n != state["n"]:
            state.update(n=n, since=time.perf_counter())
            return False
        return n >= stream.records and time.perf_counter() - state["since"] > IDLE_S + 10

    m = run_measured(
        cmd, env, timeout=3600, stderr_file=logs / "faust.log", watchdog=done_but_running
    )
    doc = last_json(m.stdout)
    if not doc.get("last_commit_at"):
        n, last = applied_progress(ep, db, f"{group}-faust")
        doc = {
            "consumed": n,
            "first_record_at": None,
            "last_commit_at": last,
            "note": "no JSON summary (stopped by the bench's watchdog); consumed and last "
            "commit from cdcr.applied_offsets",
        }
    res = result_from("Faust integration", m, doc, stream, logs / "faust.log")
    if doc.get("note"):
        res["stop_note"] = doc["note"]
        if doc.get("last_commit_at"):
            res["catchup_from_start_s"] = round(doc["last_commit_at"] - m.started_at, 2)
            res["events_per_s_from_start"] = round(stream.records / res["catchup_from_start_s"])
            res.pop("events_per_s", None)
            res.pop("span_s", None)
    res["command"] = "python -m cdc_reconciler.stream.faust_app --stop-when-idle 5"
    res["database"] = db
    res["check"] = compare_with_source(ep, db)
    log(f"faust: {res.get('events_per_s')} events/s, check {res['check']['correct']}")
    return res


# ---------------------------------------------------------------------- Debezium JDBC sink
def ensure_jdbc_plugin() -> None:
    if any(JDBC_PLUGIN_DIR.glob("debezium-connector-jdbc-*.jar")):
        return
    log(f"fetching the Debezium JDBC sink {JDBC_VERSION} into {JDBC_PLUGIN_DIR} (Maven, cached)")
    JDBC_PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(ROOT / "bench" / "java" / "pom.xml"),
            f"-Ddebezium.jdbc.version={JDBC_VERSION}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={JDBC_PLUGIN_DIR}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )


class BenchConnect:
    """A second Kafka Connect worker (distributed mode, its own group and storage topics, the
    stack's Kafka), started and stopped by its PID; the stack's own worker is left alone."""

    def __init__(self, ep: Endpoints, tag: str, logs: Path) -> None:
        self.ep, self.tag, self.logs = ep, tag, logs
        self.url = f"http://127.0.0.1:{BENCH_CONNECT_PORT}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.logs / "connect-bench.properties"
        conf.write_text(f"""bootstrap.servers={self.ep.kafka}
group.id=bench-connect-{self.tag}
listeners={self.url}
rest.advertised.host.name=127.0.0.1
rest.advertised.port={BENCH_CONNECT_PORT}
plugin.path={JDBC_PLUGIN_PATH}
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter.schemas.enable=true
config.storage.topic=_bench_{self.tag}_configs
offset.storage.topic=_bench_{self.tag}_offsets
status.storage.topic=_bench_{self.tag}_status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
offset.storage.partitions=1
status.storage.partitions=1
offset.flush.interval.ms=1000
scheduled.rebalance.max.delay.ms=0
connector.client.config.override.policy=All
""")
        cmd = [
            "java",
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={ROOT / 'scripts/stack.d/log4j2.xml'}",
            f"-Dcdcr.log.file={self.logs / 'connect-bench.log'}",
            f"-Dkafka.logs.dir={self.logs}",
            "-cp",
            f"{KAFKA_JARS}/*",
            "org.apache.kafka.connect.cli.ConnectDistributed",
            str(conf),
        ]
        out = open(self.logs / "connect-bench.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        log(f"bench Connect worker pid {self.proc.pid} on {self.url}")

        def ready() -> bool:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"bench Connect worker exited: see {self.logs}")
            code, body = (
                http("GET", f"{self.url}/connector-plugins", timeout=5)
                if _port_open(BENCH_CONNECT_PORT)
                else (0, None)
            )
            return (
                code == 200
                and body is not None
                and any("JdbcSinkConnector" in p["class"] for p in body)
            )

        wait_until("bench Connect worker with the JDBC sink plugin", ready, 180)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
            log(f"bench Connect worker pid {self.proc.pid} stopped")


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# What the sink needs to work on this stream, and nothing else: upserts, deletes (they need the
# record key as the primary key), and <prefix>.public.<table> -> <table>.
def jdbc_base_config(ep: Endpoints, stream: Stream, db: str) -> dict[str, str]:
    return {
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "topics": ",".join(stream.topics),
        "connection.url": ep.jdbc_url(db),
        "connection.username": ep.pg_user,
        "connection.password": ep.pg_password,
        "insert.mode": "upsert",
        "delete.enabled": "true",
        "primary.key.mode": "record_key",
        "transforms": "route",
        "transforms.route.type": "org.apache.kafka.connect.transforms.RegexRouter",
        "transforms.route.regex": r"[^.]+\.public\.(.+)",
        "transforms.route.replacement": "$1",
        "collection.name.format": "${topic}",
    }


def jdbc_tuned(
    partitions: int,
    batch: int = 5000,
    poll: int | None = None,
    unnest: bool = True,
    reduction: bool = True,
) -> dict[str, str]:
    """The sink tuned for PostgreSQL: multi-row UNNEST upserts, the per-key reduction buffer
    (hot keys), a batch size and max.poll.records to match, one task per partition."""
    return {
        "tasks.max": str(partitions),
        "dialect.postgres.unnest.insert.enabled": str(unnest).lower(),
        "use.reduction.buffer": str(reduction).lower(),
        "batch.size": str(batch),
        "consumer.override.max.poll.records": str(poll or batch),
        "consumer.override.fetch.max.bytes": str(64 * 2**20),
        "consumer.override.max.partition.fetch.bytes": str(16 * 2**20),
    }


def jdbc_once(
    ep: Endpoints,
    stream: Stream,
    tag: str,
    logs: Path,
    settings: dict[str, str] | None = None,
    *,
    label: str = "Debezium JDBC sink",
    run: int = 0,
    worker: BenchConnect | None = None,
) -> dict[str, Any]:
    """One JDBC sink run on a bench Connect worker (``worker``, or one started and stopped for
    this run) from the start of the stream into a fresh ``bench_jdbc``."""
    if worker is None:
        with bench_worker(ep, tag, logs) as w:
            return jdbc_once(ep, stream, tag, logs, settings, label=label, run=run, worker=w)
    return run_jdbc(ep, stream, tag, logs, worker, settings or {}, label=label, run=run)


class bench_worker:  # noqa: N801 - used as a context manager
    def __init__(self, ep: Endpoints, tag: str, logs: Path) -> None:
        ensure_jdbc_plugin()
        self.worker = BenchConnect(ep, tag, logs)

    def __enter__(self) -> BenchConnect:
        self.worker.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()


def _root_cause(trace: str) -> str:
    """The first line of a Connect task's trace and its innermost "Caused by"."""
    lines = trace.strip().splitlines()
    causes = [ln.strip() for ln in lines if ln.strip().startswith("Caused by:")]
    return "\n".join([*lines[:1], *causes[-1:]])[:1500]


def run_jdbc(
    ep: Endpoints,
    stream: Stream,
    tag: str,
    logs: Path,
    worker: BenchConnect,
    settings: dict[str, str],
    *,
    label: str = "Debezium JDBC sink",
    run: int = 0,
) -> dict[str, Any]:
    db = "bench_jdbc"
    recreate_database(ep, db)
    conn = ep.connect_pg(db)
    with conn.cursor() as cur:  # pre-created with the source's definitions
        for t, ddl in TABLES.items():
            cur.execute(f"create table public.{t} ({ddl})")
    conn.close()
    # Unique per run: a reused name would find its group's offsets already at the log ends.
    slug = re.sub("[^a-z0-9]+", "-", label.lower()).strip("-")
    name = f"bench-{tag}-jdbc-{next(_RUN_IDS)}-{slug}-{run}"
    config = {**jdbc_base_config(ep, stream, db), **settings}
    res: dict[str, Any] = {
        "contender": label,
        "database": db,
        "loadavg_before": list(os.getloadavg()),
        "connector": name,
        "config": {k: v for k, v in config.items() if "password" not in k},
        "settings": settings,
        "records": stream.records,
        "version": JDBC_VERSION,
    }
    assert worker.proc is not None
    ps = psutil.Process(worker.proc.pid)
    cpu0 = sum(ps.cpu_times()[:4])
    ends = log_ends(ep.kafka, stream.topics)
    t0 = time.perf_counter()
    started = time.time()
    code, body = http("PUT", f"{worker.url}/connectors/{name}/config", config)
    if code not in (200, 201):
        raise RuntimeError(f"JDBC sink refused: {code} {body}")
    first_row_at = None
    peak = 0.0
    samples = []
    done_at = None
    failed = None
    pg = ep.connect_pg(db)
    cur = pg.cursor()
    while time.perf_counter() - t0 < 3600:
        time.sleep(0.5)
        rss = ps.memory_info().rss / 2**20
        peak = max(peak, rss)
        samples.append((round(time.perf_counter() - t0, 2), round(rss, 1)))
        if first_row_at is None:
            cur.execute(" union all ".join(f"(select 1 from public.{t} limit 1)" for t in TABLES))
            if cur.fetchone():
                first_row_at = time.perf_counter()
        lag = group_lag(ep.kafka, f"connect-{name}", ends)
        if lag == 0:
            done_at = time.perf_counter()
            break
        code, st = http("GET", f"{worker.url}/connectors/{name}/status")
        if code == 200 and any(tk["state"] == "FAILED" for tk in st.get("tasks", [])):
            failed = [
                _root_cause(tk.get("trace", "")) for tk in st["tasks"] if tk["state"] == "FAILED"
            ]
            break
    cpu = sum(ps.cpu_times()[:4]) - cpu0
    cur.close()
    pg.close()
    res.update(
        {
            "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(peak, 1),
            "rss_samples": samples[::2],
            "started_at": started,
        }
    )
    if failed:
        res["error"] = failed
    if done_at:
        res["catchup_from_start_s"] = round(done_at - t0, 2)
        res["events_per_s_from_start"] = round(stream.records / (done_at - t0))
        if first_row_at:
            res["span_s"] = round(done_at - first_row_at, 2)
            res["events_per_s"] = round(stream.records / (done_at - first_row_at))
        res["note"] = (
            "caught up = the sink's group connect-<name> committed every log end "
            "(offsets flushed every 1 s); span starts at the first row seen in the "
            "target (polled every 0.5 s)"
        )
    else:
        res.setdefault("error", "did not catch up within the time limit")
    http("DELETE", f"{worker.url}/connectors/{name}")
    res["check"] = compare_with_source(ep, db)
    log(f"jdbc ({label}): {res.get('events_per_s')} events/s, check {res['check']['correct']}")
    return res


# ---------------------------------------------------------------------------------- ceiling
def copy_ceiling(ep: Endpoints, db: str, runs: int = 3) -> dict[str, Any]:
    """COPY the final source rows of the three tables into unlogged tables in the target
    (median of ``runs``): the target's physical write limit on this machine."""
    src = ep.connect_pg("source")
    data: dict[str, bytes] = {}
    with src.cursor() as cur:
        for t, cols in COLUMNS.items():
            buf = io.BytesIO()
            cur.copy_expert(f"copy (select {', '.join(cols)} from public.{t}) to stdout", buf)
            data[t] = buf.getvalue()
    src.close()
    rows = sum(d.count(b"\n") for d in data.values())
    tgt = ep.connect_pg(db)
    times = []
    with tgt.cursor() as cur:
        for _ in range(runs):
            for t, ddl in TABLES.items():
                cur.execute(f"drop table if exists public.{t}_ceiling")
                cur.execute(f"create unlogged table public.{t}_ceiling ({ddl})")
            t0 = time.perf_counter()
            for t, cols in COLUMNS.items():
                cur.copy_expert(
                    f"copy public.{t}_ceiling ({', '.join(cols)}) from stdin", io.BytesIO(data[t])
                )
            times.append(time.perf_counter() - t0)
        for t in TABLES:
            cur.execute(f"drop table if exists public.{t}_ceiling")
    tgt.close()
    med = sorted(times)[len(times) // 2]
    return {
        "rows": rows,
        "runs_s": [round(x, 3) for x in times],
        "median_s": round(med, 3),
        "rows_per_s": round(rows / med),
    }


# ----------------------------------------------------------------------------------- replay
def run_replay(
    ep: Endpoints, stream: Stream, tag: str, logs: Path, live: dict[str, Any]
) -> dict[str, Any]:
    """`cdcr replay` of the whole stream's time range into a fresh target (its own database and
    Redis db), against the live `cdcr run` rate measured the same way (process start to done)."""
    import datetime as dt

    db = "bench_replay"
    env = cdcr_env(ep, stream, db, f"bench-{tag}-replay", REDIS_DB["replay"])
    prepare_cdcr_target(ep, db, env, REDIS_DB["replay"])

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    cmd = [
        cdcr_bin(),
        "replay",
        "--from",
        iso(stream.started_at - 120),
        "--to",
        iso(time.time() + 120),
        "--json",
    ]
    log("replay: " + " ".join(cmd))
    m = run_measured(cmd, env, timeout=3600, stderr_file=logs / "replay.log")
    res: dict[str, Any] = {
        "command": "cdcr replay --from <stream start - 2 min> --to <now + 2 min> --json",
        "returncode": m.returncode,
        "wall_s": round(m.wall_s, 2),
        "cpu_s": round(m.cpu_s, 2),
        "peak_rss_mb": round(m.peak_rss_mb, 1),
        "events_per_s_from_start": round(stream.records / m.wall_s),
        "database": db,
    }
    if m.returncode != 0:
        res["error"] = m.stderr_tail[-1500:]
    live_rate = live.get("events_per_s_from_start")
    if live_rate:
        res["live_events_per_s_from_start"] = live_rate
        res["fraction_of_live"] = round(res["events_per_s_from_start"] / live_rate, 3)
        res["status"] = (
            f"{res['events_per_s_from_start']:,} events/s vs live "
            f"{live_rate:,} events/s (both from process start to done, into a fresh "
            f"target): {res['fraction_of_live']:.0%} of live"
        )
    res["check"] = compare_with_source(ep, db)
    log(f"replay: {res.get('status')}, check {res['check']['correct']}")
    return res
