"""The pieces behind the fault handling, one by one: error classification, the up/down state and
its logging, the health checks with a fake clock, trimming an oversized dead letter, the
libpq settings on real connections, and the alert rules for stalls and outages (promtool)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaError
from pydantic import SecretStr

from cdc_reconciler import wiring
from cdc_reconciler.config import DatabaseSettings, Settings
from cdc_reconciler.connectors.kafka import PRODUCER_MAX_BYTES, Record, is_fatal
from cdc_reconciler.stream import command
from cdc_reconciler.stream.dead_letters import TRIMMED, DeadLetter, _message
from cdc_reconciler.stream.metrics import Bounds, Dependency, Health
from tests.conftest import Services

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_transport_errors_are_transient_and_auth_errors_fatal() -> None:
    for code in (
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.NOT_COORDINATOR,
    ):
        assert not is_fatal(KafkaError(code)), code
    for code in (
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError._AUTHENTICATION,
    ):
        assert is_fatal(KafkaError(code)), code
    assert is_fatal(KafkaError(KafkaError._TRANSPORT, fatal=True))


def test_dependency_logs_once_per_change_with_the_duration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    dep = Dependency("kafka", clock=clock, wall=lambda: 1.7e9 + clock.t)
    caplog.set_level(logging.INFO)
    for _ in range(5):
        dep.mark_down("1/1 brokers are down")
        clock.t += 5
    assert not dep.up and dep.down_for() == 25
    clock.t += 60
    dep.mark_down("1/1 brokers are down")  # past the reminder interval: once more
    dep.mark_up()
    dep.mark_up()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [
        "kafka unreachable (1/1 brokers are down); waiting it out",
        "kafka still unreachable after 85s (1/1 brokers are down)",
        "kafka reachable again after 85s down",
    ]
    assert dep.up and dep.down_for() == 0


class FakeLoop:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.last_loop = clock()
        self.inflight = 0.0

    def inflight_for(self) -> float:
        return self.inflight

    def partitions(self) -> int:
        return 2


def _health(clock: Clock) -> tuple[Health, FakeLoop, Dependency, Dependency]:
    loop = FakeLoop(clock)
    kafka = Dependency("kafka", clock=clock)
    target = Dependency("target", clock=clock)
    bounds = Bounds(
        stall_s=60,
        target_unready_s=15,
        target_unhealthy_s=600,
        kafka_unready_s=15,
        kafka_unhealthy_s=600,
    )
    return (
        Health(
            progress=loop,
            kafka=kafka,
            target=target,
            redis_up=lambda: True,
            bounds=bounds,
            clock=clock,
        ),
        loop,
        kafka,
        target,
    )


def test_health_says_which_check_fails_and_since_when() -> None:
    clock = Clock()
    health, loop, kafka, target = _health(clock)
    assert health.readiness()[0] and health.liveness()[0]

    kafka.mark_down("1/1 brokers are down")
    clock.t += 10
    loop.last_loop = clock()
    assert health.readiness()[0]  # within the readiness bound
    clock.t += 10
    loop.last_loop = clock()
    ok, body = health.readiness()
    assert not ok and body["status"] == "unhealthy"
    assert [(p["check"], p["for_s"]) for p in body["problems"]] == [("kafka", 20.0)]
    assert body["kafka"]["up"] is False and body["kafka"]["reason"] == "1/1 brokers are down"
    assert health.liveness()[0]  # a broker outage is not a reason to restart, until 600 s
    clock.t += 600
    loop.last_loop = clock()
    assert not health.liveness()[0]
    kafka.mark_up()

    # A batch in flight past the bound while the target answers: stalled.
    loop.inflight = 61
    ok, body = health.readiness()
    assert not ok and [p["check"] for p in body["problems"]] == ["stalled"]
    assert health.liveness()[0]  # liveness leaves the watchdog its chance first
    loop.inflight = 121
    assert not health.liveness()[0]
    # The same wait while the target is known down is the outage, not a stall.
    target.mark_down("connection refused")
    clock.t += 16
    loop.last_loop = clock()
    ok, body = health.readiness()
    assert [p["check"] for p in body["problems"]] == ["target"]

    # The loop itself hanging with nothing in flight.
    target.mark_up()
    loop.inflight = 0
    clock.t += 121
    ok, body = health.liveness()
    assert not ok and [p["check"] for p in body["problems"]] == ["loop"]
    # ... unless it waits out an outage (a dead letter for a broker that is down).
    kafka.mark_down("1/1 brokers are down")
    ok, body = health.readiness()
    assert [p["check"] for p in body["problems"]] == []


def test_oversized_dead_letter_is_trimmed_with_full_coordinates() -> None:
    big = b"v" * (5 * 1024 * 1024)
    m = _message(
        DeadLetter(
            Record("cdc.public.t", 3, 123456, b'{"id":1}', big), "decode:not_json", "not JSON"
        ),
        PRODUCER_MAX_BYTES,
    )
    headers = dict(m["headers"])
    assert len(m["key"]) + len(m["value"]) < PRODUCER_MAX_BYTES
    assert big.startswith(m["value"]) and m["key"] == b'{"id":1}'
    assert headers["cdcr.value.trimmed"] == TRIMMED.encode() == b"record_too_large"
    assert headers["cdcr.value.size"] == str(len(big)).encode()
    assert (
        headers["cdcr.source.topic"],
        headers["cdcr.source.partition"],
        headers["cdcr.source.offset"],
    ) == (b"cdc.public.t", b"3", b"123456")
    assert headers["cdcr.error.kind"] == b"decode:not_json"
    small = _message(DeadLetter(Record("t", 0, 1, None, b"x"), "k", "e"), PRODUCER_MAX_BYTES)
    assert small["value"] == b"x" and "cdcr.value.trimmed" not in dict(small["headers"])


@pytest.mark.services
def test_target_connections_carry_keepalives_and_a_statement_timeout(
    services: Services, migrated_target: str
) -> None:
    db = DatabaseSettings(
        url=SecretStr(services.target_url),
        keepalives_idle_s=11,
        keepalives_interval_s=4,
        keepalives_count=2,
        statement_timeout_s=7.5,
    )
    engine = wiring.apply_target_engine(Settings.model_construct(target=db))
    try:
        with engine.connect() as conn:
            params = conn.connection.dbapi_connection.info.dsn_parameters  # type: ignore[union-attr]
            timeout = conn.execute(sa.text("show statement_timeout")).scalar()
            with pytest.raises(sa.exc.OperationalError) as err:
                conn.execute(sa.text("select pg_sleep(8)"))
    finally:
        engine.dispose()
    assert (
        params["keepalives"],
        params["keepalives_idle"],
        params["keepalives_interval"],
        params["keepalives_count"],
    ) == ("1", "11", "4", "2")
    assert params["connect_timeout"] == "4" and params["tcp_user_timeout"] == "30000"
    assert timeout == "7500ms"
    assert err.value.orig.pgcode == "57014"  # type: ignore[union-attr]  # query_canceled


ALERT_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'cdcr_kafka_up{{instance="w1"}}'
        values: '1 0 0 0 0 1 1'
      - series: 'cdcr_target_up{{instance="w1"}}'
        values: '1 1 0 1 1 1 1'
      - series: 'cdcr_stalls_total{{instance="w1"}}'
        values: '0 0 0 1 1 1 1'
      - series: 'up{{job="cdcr",instance="w1"}}'
        values: '1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 2m
        alertname: CdcrKafkaUnreachable
        exp_alerts: []
      - eval_time: 4m
        alertname: CdcrKafkaUnreachable
        exp_alerts:
          - exp_labels: {{severity: critical, instance: w1}}
            exp_annotations:
              summary: "cdcr run on w1 cannot reach the Kafka broker"
              description: "The consumer waits the outage out and resumes by itself; nothing is applied meanwhile. /readyz says since when."
      - eval_time: 6m
        alertname: CdcrKafkaUnreachable
        exp_alerts: []
      - eval_time: 3m
        alertname: CdcrTargetUnreachable
        exp_alerts: []
      - eval_time: 4m
        alertname: CdcrConsumerStalls
        exp_alerts:
          - exp_labels: {{severity: warning, instance: w1}}
            exp_annotations:
              summary: "cdcr run on w1 found 1 stuck batches in 15 minutes"
              description: "A batch made no progress for CDCR_HEALTH__STALL_S; its database connection was dropped and the batch retried. Repeated stalls point at the network path to the target (a firewall or NAT dropping idle connections) or at locks held on the target."
      - eval_time: 6m
        alertname: CdcrConsumerNotScraped
        exp_alerts: []
"""


def test_alert_rules_cover_stalls_and_outages(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install -y prometheus")
    spec = tmp_path / "always_on_test.yml"
    spec.write_text(ALERT_TESTS.format(rules=REPO / "deploy/prometheus/alerts.yml"))
    result = subprocess.run(
        [promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.services
def test_connection_watch_follows_the_target_and_drops_a_stuck_connection(
    services: Services, migrated_target: str
) -> None:
    import threading
    import time

    from cdc_reconciler.stream.metrics import Dependency

    def engine_for(**db: object) -> tuple[sa.Engine, Dependency, command.ConnectionWatch]:
        settings = DatabaseSettings.model_validate({"url": services.target_url, **db})
        engine = wiring.apply_target_engine(Settings.model_construct(target=settings))
        state = Dependency("target")
        watch = command.ConnectionWatch(state)
        watch.attach(engine)
        return engine, state, watch

    # A statement cancelled by the statement timeout is not an outage.
    engine, state, _ = engine_for(statement_timeout_s=0.5)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.OperationalError):
            conn.execute(sa.text("select pg_sleep(2)"))
        assert state.up
    finally:
        engine.dispose()

    # A refused connection is.
    url = sa.engine.make_url(services.target_url).set(port=1)
    state = Dependency("target")
    refused = wiring.apply_target_engine(
        Settings.model_construct(
            target=DatabaseSettings(url=SecretStr(url.render_as_string(hide_password=False)))
        )
    )
    watch = command.ConnectionWatch(state)
    watch.attach(refused)
    with pytest.raises(sa.exc.OperationalError):
        refused.connect()
    assert not state.up and "refused" in state.reason
    refused.dispose()

    # A statement blocked on its socket fails at once when the watchdog drops the connection,
    # and the next connection marks the target up again.
    engine, state, watch = engine_for(statement_timeout_s=0)
    state.mark_down("test")
    got: dict[str, BaseException] = {}

    def blocked() -> None:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select pg_sleep(8)"))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            got["exc"] = exc

    try:
        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(1)
        assert state.up  # the new connection said so
        started = time.monotonic()
        assert watch.drop() >= 1
        t.join(10)
        assert not t.is_alive() and time.monotonic() - started < 3
        assert isinstance(got["exc"], sa.exc.OperationalError)
    finally:
        engine.dispose()
