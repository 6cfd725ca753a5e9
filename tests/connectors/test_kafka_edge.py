"""The Kafka edge's pure parts: the one librdkafka config builder (security mapping, per-role
layers, overrides, secrets kept out of reprs and logs) and the one error wrapper (Kafka's code and
name kept)."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from cdc_reconciler import wiring
from cdc_reconciler.config import KafkaSettings
from cdc_reconciler.connectors.kafka import KafkaEdgeError, KafkaError, KafkaException
from cdc_reconciler.connectors.kafka.config import (
    PRODUCER_MAX_BYTES,
    admin_config,
    consumer_config,
    inspect_consumer_config,
    producer_config,
    redacted,
    security,
)
from cdc_reconciler.connectors.kafka.errors import raise_for

SECRET = "s3cr3t-Pa55"
SASL = KafkaSettings(
    bootstrap_servers="b1:9093,b2:9093", sasl_username="svc", sasl_password=SecretStr(SECRET)
)
PLAIN = KafkaSettings(bootstrap_servers="b1:9092")
SECURITY_KEYS = {"security.protocol", "sasl.mechanisms", "sasl.username", "sasl.password"}


def _all_configs(k: KafkaSettings) -> list[dict[str, object]]:
    return [consumer_config(k), producer_config(k), admin_config(k)]


def test_without_a_sasl_user_every_client_is_plaintext() -> None:
    assert security(PLAIN) == {}
    for conf in _all_configs(PLAIN):
        assert conf["bootstrap.servers"] == "b1:9092"
        assert not SECURITY_KEYS & conf.keys()


def test_a_sasl_user_turns_on_sasl_ssl_plain_for_every_client() -> None:
    expected = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "svc",
        "sasl.password": SECRET,
    }
    assert security(SASL) == expected
    for conf in [*_all_configs(SASL), inspect_consumer_config(admin_config(SASL), 1.0)]:
        assert {k: conf[k] for k in SECURITY_KEYS} == expected
        assert conf["bootstrap.servers"] == "b1:9093,b2:9093"


def test_a_sasl_user_without_password_sends_an_empty_one() -> None:
    assert security(KafkaSettings(sasl_username="svc"))["sasl.password"] == ""


def test_role_layers() -> None:
    k = KafkaSettings(group_id="grp", session_timeout_ms=6000, heartbeat_interval_ms=3000)
    c = consumer_config(k)
    assert c["group.id"] == "grp"
    assert c["enable.auto.commit"] is False and c["enable.auto.offset.store"] is False
    assert c["partition.assignment.strategy"] == "cooperative-sticky"
    assert c["session.timeout.ms"] == 6000
    assert c["heartbeat.interval.ms"] == 2000  # at most a third of the session timeout
    assert consumer_config(k, group_id="other")["group.id"] == "other"
    p = producer_config(k)
    assert p["enable.idempotence"] is True and p["message.max.bytes"] == PRODUCER_MAX_BYTES
    assert "group.id" not in p
    a = admin_config(k)
    assert a["log_level"] == 2 and "group.id" not in a
    i = inspect_consumer_config(a, 2.5)
    assert i["socket.timeout.ms"] == 2500 and i["enable.auto.commit"] is False
    assert str(i["group.id"]).startswith("cdcr-inspect-")


def test_overrides_win_over_every_layer() -> None:
    c = consumer_config(
        SASL, overrides={"enable.partition.eof": True, "auto.offset.reset": "latest"}
    )
    assert c["enable.partition.eof"] is True and c["auto.offset.reset"] == "latest"
    assert producer_config(PLAIN, overrides={"linger.ms": 50})["linger.ms"] == 50
    assert admin_config(PLAIN, overrides={"log_level": 7})["log_level"] == 7


def test_secrets_stay_out_of_reprs_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert SECRET not in repr(SASL) and SECRET not in str(SASL)
    for conf in _all_configs(SASL):
        shown = redacted(conf)
        assert SECRET not in repr(shown)
        assert shown["sasl.password"] == "**********"
        assert shown["sasl.username"] == "svc"  # only secrets are masked
    # Building clients logs nothing that carries the secret (the admin client connects lazily).
    admin = wiring.kafka_admin(SASL, timeout_s=0.1)
    assert admin is not None
    assert SECRET not in caplog.text


def test_the_wrapper_keeps_the_kafka_code_and_name() -> None:
    exc = KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "denied"))
    err = KafkaEdgeError.wrap("describe group 'g'", exc)
    assert err.code == KafkaError.GROUP_AUTHORIZATION_FAILED
    assert err.code_name == "GROUP_AUTHORIZATION_FAILED"
    assert str(err) == "describe group 'g': GROUP_AUTHORIZATION_FAILED: denied"


def test_the_wrapper_takes_a_bare_kafka_error_and_hints_at_reachability() -> None:
    err = KafkaEdgeError.wrap("consuming", KafkaError(KafkaError._TRANSPORT, "down"))
    assert (err.code, err.code_name) == (KafkaError._TRANSPORT, "_TRANSPORT")
    assert "is the broker reachable?" in str(err)


def test_the_wrapper_without_a_kafka_error_has_no_code() -> None:
    for failure in (TimeoutError("no answer"), None):
        err = KafkaEdgeError.wrap("list topics", failure)
        assert (err.code, err.code_name) == (None, None)
    assert str(KafkaEdgeError.wrap("x", None)) == "x: unknown error"
    assert str(KafkaEdgeError.wrap("x", TimeoutError("no answer"))) == "x: no answer"


def test_raise_for_chains_the_kafka_exception() -> None:
    exc = KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    with pytest.raises(KafkaEdgeError) as info:
        raise_for("listing topics", exc)
    assert info.value.code == KafkaError._ALL_BROKERS_DOWN
    assert info.value.__cause__ is exc
