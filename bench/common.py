"""Shared plumbing for the benchmarks: endpoints of the native stack, PostgreSQL and Kafka helpers,
child-process measurement (wall, CPU, peak RSS, RSS samples)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent

STACK = Path(os.environ.get("CDCR_STACK_DIR", ROOT / ".stack"))


def _kafka_jars() -> Path:
    """Kafka's jars, which start the bench's own Connect worker: the stack's, else — in a git
    worktree, which has no stack of its own — the main checkout's (where `scripts/stack up` put
    them). Only read; what the bench fetches (the JDBC sink) goes under this checkout's STACK."""
    own = STACK / "jars" / "kafka"
    if own.is_dir() or "CDCR_STACK_DIR" in os.environ:
        return own
    r = subprocess.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    main = Path(r.stdout.strip()).parent / ".stack" / "jars" / "kafka"
    return main if r.returncode == 0 and main.is_dir() else own


KAFKA_JARS = _kafka_jars()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Endpoints:
    pg_host: str
    pg_port: int
    pg_user: str
    pg_password: str
    kafka: str
    connect: str
    redis_host: str
    redis_port: int

    @classmethod
    def from_env(cls) -> Endpoints:
        src = sa.engine.make_url(
            os.environ.get(
                "CDCR_SOURCE__URL", "postgresql+psycopg2://postgres:postgres@127.0.0.1:15432/source"
            )
        )
        r = os.environ.get("CDCR_REDIS__URL", "redis://127.0.0.1:16379/0")
        rhost, rport = r.split("//", 1)[1].split("/", 1)[0].split(":")
        return cls(
            src.host or "127.0.0.1",
            int(src.port or 5432),
            src.username or "postgres",
            src.password or "",
            os.environ.get("CDCR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:19092"),
            os.environ.get("KAFKA_CONNECT_URL", "http://127.0.0.1:18083"),
            rhost,
            int(rport),
        )

    def sa_url(self, db: str) -> str:
        return (
            f"postgresql+psycopg2://{self.pg_user}:{self.pg_password}@{self.pg_host}:"
            f"{self.pg_port}/{db}"
        )

    def pg_url(self, db: str) -> str:
        return f"postgresql://{self.pg_user}:{self.pg_password}@{self.pg_host}:{self.pg_port}/{db}"

    def jdbc_url(self, db: str) -> str:
        return f"jdbc:postgresql://{self.pg_host}:{self.pg_port}/{db}"

    def redis_url(self, db: int) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{db}"

    def connect_pg(self, db: str, autocommit: bool = True) -> Any:
        conn = psycopg2.connect(
            host=self.pg_host,
            port=self.pg_port,
            user=self.pg_user,
            password=self.pg_password,
            dbname=db,
        )
        conn.autocommit = autocommit
        return conn


def recreate_database(ep: Endpoints, name: str) -> None:
    conn = ep.connect_pg("postgres")
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def drop_database(ep: Endpoints, name: str) -> None:
    conn = ep.connect_pg("postgres")
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cdcr_bin() -> str:
    script = Path(sys.executable).with_name("cdcr")
    return str(script) if script.exists() else (shutil.which("cdcr") or "cdcr")


def http(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


# ------------------------------------------------------------------------------------ Kafka
def topic_counts(bootstrap: str, topics: Sequence[str]) -> dict[str, int]:
    """Records per topic, from the low and high watermarks of every partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-count-{uuid.uuid4().hex}"})
    try:
        out = {}
        for t in topics:
            meta = c.list_topics(t, timeout=10)
            if t not in meta.topics or meta.topics[t].error is not None:
                out[t] = 0
                continue
            total = 0
            for p in meta.topics[t].partitions:
                lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                total += hi - lo
            out[t] = total
        return out
    finally:
        c.close()


def log_ends(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-ends-{uuid.uuid4().hex}"})
    try:
        out = {}
        for t in topics:
            meta = c.list_topics(t, timeout=10)
            for p in meta.topics[t].partitions:
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
        return out
    finally:
        c.close()


def group_lag(bootstrap: str, group: str, ends: dict[tuple[str, int], int]) -> int:
    """Total lag of ``group`` against ``ends`` (uncommitted partitions count fully)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for (t, p) in ends]
        committed = c.committed(tps, timeout=10)
        lag = 0
        for tp in committed:
            end = ends[(tp.topic, tp.partition)]
            lag += end - tp.offset if tp.offset >= 0 else end
        return lag
    finally:
        c.close()


# ------------------------------------------------------------------------- child processes
@dataclass
class Measured:
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    peak_rss_mb: float
    stdout: str
    stderr_tail: str
    started_at: float
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (t since start, MB)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def run_measured(
    cmd: Sequence[str],
    env: dict[str, str],
    *,
    timeout: float,
    stderr_file: Path | None = None,
    sample_every: float = 0.25,
    watchdog: Callable[[], bool] | None = None,
) -> Measured:
    """Run ``cmd`` to completion; CPU and peak RSS from wait4's rusage (the child and its
    descendants that were waited for), RSS samples by polling /proc via psutil."""
    err = open(stderr_file, "wb") if stderr_file else None  # noqa: SIM115
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=err if err is not None else subprocess.DEVNULL,
    )
    stdout = proc.stdout
    assert stdout is not None  # stdout=PIPE
    samples: list[tuple[float, float]] = []
    out_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: out_chunks.append(stdout.read()), daemon=True)
    reader.start()
    import psutil  # the bench extra (make bench); tests import this module without it

    ps = psutil.Process(proc.pid)
    rusage = None
    status = 0
    termed_at: float | None = None
    checked = 0.0
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        try:
            samples.append((time.perf_counter() - t0, ps.memory_info().rss / 2**20))
        except psutil.Error:
            pass
        if watchdog and termed_at is None and time.perf_counter() - checked > 1.0:
            checked = time.perf_counter()
            if watchdog():  # the caller says the child is done but did not exit: SIGTERM
                log(f"watchdog: pid {proc.pid} is done but still running; SIGTERM")
                proc.terminate()
                termed_at = time.perf_counter()
        if termed_at and time.perf_counter() - termed_at > 20:
            proc.kill()
            termed_at = float("inf")
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            pid, status, rusage = os.wait4(proc.pid, 0)
            break
        time.sleep(sample_every)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(10)
    if err is not None:
        err.close()
    tail = ""
    if stderr_file and stderr_file.exists():
        tail = stderr_file.read_text(errors="replace")[-3000:]
    return Measured(
        proc.returncode,
        wall,
        rusage.ru_utime,
        rusage.ru_stime,
        rusage.ru_maxrss / 1024,
        b"".join(out_chunks).decode(errors="replace"),
        tail,
        started,
        samples,
    )


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
