"""Monitoring proven against a real Prometheus server, not only with promtool.

A native Prometheus (Debian package ``prometheus``: /usr/bin/prometheus; without it this test
FAILS, never skips) runs on 127.0.0.1 on a free port with its own data directory and is stopped
by PID. It scrapes a real `cdcr run` consumer's /metrics (the apply engine on a Debezium topic)
and `cdcr lag --serve`, and evaluates the project's alert rules (deploy/prometheus/alerts.yml)
every second. Asserted through Prometheus' HTTP query API:

1. the series exist with the right values while the consumer keeps up;
2. with the consumer stopped and records pending, the consumer-stopped and lag alerts fire;
3. once the consumer is back and has caught up, they resolve.

Only the rules' timing is shortened for the test: every ``for:`` becomes FOR_S seconds, and the
two lag thresholds (5 minutes, 100,000 messages) become 1 s and 5 messages, so that a handful of
records written 1.5 s apart cross them. Each rewrite is checked to have matched exactly once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from cdc_reconciler.stream import command
from tests.helpers import count_records, wait_for
from tests.stream.pipeline import Pipeline, free_port

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
FOR_S = 2
# (alert, production threshold, test threshold) in the rule's expression.
THRESHOLDS = [
    ("CdcrConsumerTimeLagHigh", "> 300", "> 1"),
    ("CdcrConsumerOffsetLagHigh", "> 100000", "> 5"),
]
LAG_ALERTS = {"CdcrConsumerStopped", "CdcrConsumerTimeLagHigh", "CdcrConsumerOffsetLagHigh"}
# Inserted while the consumer is stopped: two transactions, SECOND_AFTER_S apart.
BATCH = 10
SECOND_AFTER_S = 1.5


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        pytest.fail(
            "prometheus not found: install the Debian package with `apt-get install -y prometheus`"
        )
    return found


def rules_for_test(dest: Path) -> Path:
    """A copy of the production rules with short ``for:`` and the lag thresholds lowered."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert LAG_ALERTS <= set(rules), sorted(rules)
    for r in rules.values():
        if "for" in r:
            r["for"] = f"{FOR_S}s"
    for alert, prod, test in THRESHOLDS:
        expr = rules[alert]["expr"]
        assert expr.count(prod) == 1, (alert, expr)
        rules[alert]["expr"] = expr.replace(prod, test)
    out = dest / "alerts.yml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return out


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, q: str) -> list[tuple[dict[str, str], float]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": q}, timeout=5)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]

    def value(self, q: str) -> float | None:
        res = self.query(q)
        assert len(res) <= 1, (q, res)
        return res[0][1] if res else None

    def alerts(self) -> dict[str, dict[str, Any]]:
        """Active alerts (pending or firing) by name; a resolved alert is not listed."""
        r = httpx.get(f"{self.url}/api/v1/alerts", timeout=5)
        r.raise_for_status()
        return {a["labels"]["alertname"]: a for a in r.json()["data"]["alerts"]}

    def firing(self) -> set[str]:
        return {n for n, a in self.alerts().items() if a["state"] == "firing"}


@pytest.fixture()
def prometheus_factory(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(targets: dict[str, int]) -> Prometheus:
        rules = rules_for_test(tmp_path)
        port = free_port()
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]}
                for job, p in targets.items()
            ],
        }
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
        check = subprocess.run(
            ["promtool", "check", "config", str(cfg)], capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with (tmp_path / "prometheus.log").open("wb") as log:  # the child keeps its own fd
            proc = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        prom = Prometheus(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(
                    f"prometheus exited with {proc.returncode}: "
                    f"{(tmp_path / 'prometheus.log').read_text()[-2000:]}"
                )
            try:
                return httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for("prometheus ready", ready, timeout=60, every=0.2)
        return prom

    yield start
    for proc in procs:  # stopped by PID: only what this test started
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture()
def lag_exporter() -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> subprocess.Popen[bytes]:
        # The pipeline's CDCR_* environment: kafka.group_id is `cdcr run`'s group, with its
        # topic pattern, as an operator would deploy the exporter next to the consumer.
        cmd = [
            sys.executable,
            "-c",
            "from cdc_reconciler.cli import main; main()",
            "lag",
            "--serve",
            str(port),
            "--refresh",
            "1",
        ]
        proc = subprocess.Popen(
            cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


class Consumer:
    """`cdcr run` in a thread, stopped as SIGTERM would (the stop event)."""

    def __init__(self, p: Pipeline) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(p,), name="cdcr-run")
        self.thread.start()

    def _run(self, p: Pipeline) -> None:
        try:
            command.run(p.settings, stop=self.stop, serve_metrics=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "cdcr run did not stop within 60 s"
        assert self.error is None, repr(self.error)


def insert(engine: sa.Engine, table: str, first: int, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"insert into public.{table} (id, name) "
                "select g, 'late' || g from generate_series(:a, :b) g"
            ),
            {"a": first, "b": first + n - 1},
        )


def test_prometheus_scrapes_cdcr_and_lag_alerts_fire_and_resolve(
    pipeline: Pipeline,
    services: Any,
    source_engine: sa.Engine,
    prometheus_factory: Any,
    lag_exporter: Any,
) -> None:
    group, topic, table = pipeline.settings.kafka.group_id, pipeline.topic, pipeline.qualified
    wait_for("snapshot in Kafka", lambda: count_records(services.kafka_bootstrap, topic) >= 20)
    run_port, lag_port = pipeline.settings.metrics.port, free_port()

    consumer = Consumer(pipeline)
    try:
        exporter = lag_exporter(lag_port)
        prom = prometheus_factory({"cdcr": run_port, "cdcr-lag": lag_port})
        sel = f'group="{group}",topic="{topic}",partition="0"'

        # 1. Both targets are scraped and the series carry the right values.
        applied = f'cdcr_events_total{{job="cdcr",table="{table}",outcome="applied"}}'
        wait_for(
            "20 snapshot events applied, seen by Prometheus",
            lambda: prom.value(applied) == 20.0,
            timeout=120,
        )
        wait_for(
            "caught up, seen through the lag exporter",
            lambda: prom.value(f"cdcr_consumer_offset_lag{{{sel}}}") == 0.0,
            timeout=60,
        )
        assert exporter.poll() is None
        assert prom.value('up{job="cdcr"}') == 1.0 and prom.value('up{job="cdcr-lag"}') == 1.0
        assert prom.value('cdcr_lag_up{job="cdcr-lag"}') == 1.0
        assert prom.value('cdcr_redis_up{job="cdcr"}') == 1.0
        assert prom.value(f"cdcr_consumer_time_lag_seconds{{{sel}}}") == 0.0
        assert prom.value(f'cdcr_consumer_status{{{sel},status="OK"}}') == 1.0
        assert prom.value(f'cdcr_consumer_group_status{{group="{group}",status="OK"}}') == 1.0
        assert prom.value(f'cdcr_records_consumed_total{{job="cdcr",topic="{topic}"}}') == 20.0
        assert not (prom.firing() & LAG_ALERTS)

        # 2. The consumer stops; records arrive, 1.5 s apart: the alerts fire.
        consumer.close()
        insert(source_engine, pipeline.table, 1001, BATCH)
        wait_for(
            "first late batch in Kafka",
            lambda: count_records(services.kafka_bootstrap, topic) >= 20 + BATCH,
        )
        time.sleep(SECOND_AFTER_S)
        insert(source_engine, pipeline.table, 2001, BATCH)
        wait_for(
            "second late batch in Kafka",
            lambda: count_records(services.kafka_bootstrap, topic) >= 20 + 2 * BATCH,
        )
        wait_for(
            "consumer-stopped and lag alerts firing",
            lambda: LAG_ALERTS <= prom.firing(),
            timeout=90,
        )
        alerts = prom.alerts()
        assert alerts["CdcrConsumerStopped"]["labels"]["partition"] == "0"
        assert alerts["CdcrConsumerStopped"]["labels"]["group"] == group
        assert alerts["CdcrConsumerStopped"]["labels"]["severity"] == "critical"
        assert alerts["CdcrConsumerOffsetLagHigh"]["labels"]["topic"] == topic
        assert prom.value(f"cdcr_consumer_offset_lag{{{sel}}}") == float(2 * BATCH)
        assert prom.value(f'cdcr_consumer_status{{{sel},status="STOP"}}') == 1.0
        lag_s = prom.value(f"cdcr_consumer_time_lag_seconds{{{sel}}}")
        assert lag_s is not None and lag_s >= SECOND_AFTER_S - 0.1, lag_s
        # The stopped worker is not scraped any more: its series went stale, `up` says why.
        assert prom.value('up{job="cdcr"}') == 0.0
        assert prom.value(applied) is None

        # 3. The consumer comes back and catches up: the alerts resolve. Its counters start
        # again at 0 in the new process: it applies exactly the late records.
        consumer = Consumer(pipeline)
        wait_for(
            "late records applied, seen by Prometheus",
            lambda: prom.value(applied) == float(2 * BATCH),
            timeout=120,
        )
        wait_for("lag alerts resolved", lambda: not (set(prom.alerts()) & LAG_ALERTS), timeout=60)
        assert prom.value(f"cdcr_consumer_offset_lag{{{sel}}}") == 0.0
        assert prom.value(f'cdcr_consumer_status{{{sel},status="OK"}}') == 1.0
        assert prom.value('ALERTS{alertname="CdcrConsumerStopped",alertstate="firing"}') is None
        assert exporter.poll() is None
    finally:
        consumer.close()


def test_rules_copy_only_shortens_timing() -> None:
    """The test rules differ from production only in ``for:`` and the two lag thresholds."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        test_doc = yaml.safe_load(rules_for_test(Path(d)).read_text(encoding="utf-8"))
    prod_doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    lowered = {a: (p, t) for a, p, t in THRESHOLDS}
    for pg, tg in zip(prod_doc["groups"], test_doc["groups"], strict=True):
        for pr, tr in zip(pg["rules"], tg["rules"], strict=True):
            if "for" in pr:
                assert tr["for"] == f"{FOR_S}s"
            expected = pr["expr"]
            if pr.get("alert") in lowered:
                expected = expected.replace(*lowered[pr["alert"]])
            assert tr["expr"] == expected
            assert {k: v for k, v in tr.items() if k not in ("for", "expr")} == {
                k: v for k, v in pr.items() if k not in ("for", "expr")
            }
    assert re.search(r"for: \d+m", RULES.read_text(encoding="utf-8"))  # production untouched
