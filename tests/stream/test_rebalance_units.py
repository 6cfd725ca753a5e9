"""The rebalance callbacks' guard (Runner._guarded), without a broker: a database error of any
kind inside a callback goes to the engine's retry policy and the callback runs again; a stop and
Kafka errors reach the loop unchanged; anything else becomes a CdcrError, never a raw traceback."""

from __future__ import annotations

from typing import Any, cast

import pytest
import sqlalchemy as sa

from cdc_reconciler.connectors.kafka import Consumer, KafkaError, KafkaException, TopicPartition
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.engine import ApplyEngine, Interrupted
from cdc_reconciler.stream.runner import Runner


class _Engine:
    """Records what the retry policy was asked to wait out."""

    def __init__(self) -> None:
        self.waits: list[tuple[str, float]] = []

    def wait_out_target(self, exc: Exception, delay: float) -> None:
        self.waits.append((type(exc).__name__, delay))


def _runner(engine: _Engine) -> Runner:
    return Runner(
        consumer=cast(Consumer, object()),
        engine=cast(ApplyEngine, engine),
        target=cast(sa.Engine, object()),
        group="g",
        topic_pattern="^t$",
        batch_size=1,
        batch_timeout_s=0.1,
    )


def _db_error(cls: type[sa.exc.DBAPIError]) -> sa.exc.DBAPIError:
    return cls("select 1", {}, Exception("boom"))


PARTS = [TopicPartition("t", 0)]


@pytest.mark.parametrize(
    "error", [sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.DatabaseError]
)
def test_a_database_error_in_a_callback_is_retried_by_the_engine_policy(
    error: type[sa.exc.DBAPIError],
) -> None:
    engine = _Engine()
    runner = _runner(engine)
    calls: list[int] = []

    def on_assign(_c: Any, parts: list[TopicPartition]) -> None:
        calls.append(len(parts))
        if len(calls) < 3:
            raise _db_error(error)

    runner._guarded("assign", on_assign)(cast(Consumer, object()), PARTS)
    assert calls == [1, 1, 1]
    assert engine.waits == [(error.__name__, 0.5), (error.__name__, 1.0)]
    assert not runner.target_state.up
    assert "assign callback" in (runner.target_state.reason or "")


def test_stop_and_kafka_errors_reach_the_loop_unchanged() -> None:
    runner = _runner(_Engine())

    def stopped(_c: Any, _p: Any) -> None:
        raise Interrupted("stopped")

    def kafka(_c: Any, _p: Any) -> None:
        raise KafkaException(KafkaError(KafkaError._AUTHENTICATION))

    with pytest.raises(Interrupted):
        runner._guarded("assign", stopped)(cast(Consumer, object()), PARTS)
    with pytest.raises(KafkaException):
        runner._guarded("revoke", kafka)(cast(Consumer, object()), PARTS)


def test_any_other_failure_becomes_a_cdcr_error_naming_the_callback() -> None:
    runner = _runner(_Engine())

    def broken(_c: Any, _p: Any) -> None:
        raise ValueError("bad state")

    with pytest.raises(CdcrError) as info:
        runner._guarded("revoke", broken)(cast(Consumer, object()), PARTS)
    assert str(info.value) == "rebalance (revoke) failed: ValueError: bad state"
    assert isinstance(info.value.__cause__, ValueError)


def test_a_stop_while_preparing_during_a_target_outage_is_a_stop_not_a_failure() -> None:
    """engine.prepare() resolves tables in the target and, stopped while waiting out an outage,
    raises Interrupted: the loop ends as stopped by a signal (the batch in flight is finished on
    the way out), never as a failure of the command."""

    class _Preparing(_Engine):
        def prepare(self, records: Any) -> Any:
            raise Interrupted("stopped while the target is unavailable")

    runner = _runner(_Preparing())
    assert runner._hand_over([]) is False
    assert runner._summary.stopped_by == "signal"
