"""ApplyEngine.apply with a batch of several partitions: one transaction per partition, committed
in parallel, Redis and the outcome only after all of them (no database: the transaction is
replaced)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from cdc_reconciler.stream.dead_letters import DeadLetterSink
from cdc_reconciler.stream.engine import ApplyEngine, Interrupted, Prepared
from cdc_reconciler.stream.plan import Plan, plan_batch
from cdc_reconciler.stream.tables import TableResolver
from cdc_reconciler.stream.timing import Timing
from tests.stream.test_plan_batch import Batch, ev, pending


class Ids:
    """Processed change IDs in memory."""

    def __init__(self) -> None:
        self.recorded: list[bytes] = []
        self.available = True

    def seen(self, ids: list[tuple[bytes, int]]) -> list[bool]:
        return [False] * len(ids)

    def record(self, ids: list[tuple[bytes, int]]) -> bool:
        self.recorded.extend(cid for cid, _ts in ids)
        return True


def engine(writers: int, ids: Ids) -> ApplyEngine:
    target = sa.create_engine("sqlite://")
    return ApplyEngine(
        target=target,
        resolver=TableResolver(target, {}),
        dead_letters=DeadLetterSink(None, "dlq"),
        ids=ids,  # type: ignore[arg-type]
        writers=writers,
    )


def prepared(partitions: int) -> Prepared:
    b = Batch()
    for i in range(partitions):
        b.add(ev("c", i, i, {"id": i}), partition=i)
    plan = plan_batch(
        b.records, decode=b.decode, pending=pending, seen=lambda ids: [False] * len(ids)
    )
    return Prepared(plan, time.perf_counter())


def fake_commit(calls: list[tuple[int, str]], fail: int | None = None, parts: int = 3) -> Any:
    """A transaction that applies every write once all ``parts`` transactions are under way at
    the same time (a barrier: run one after the other, they would time out); partition ``fail``
    is interrupted instead."""
    lock = threading.Lock()
    together = threading.Barrier(parts, timeout=10)

    def commit(plan: Plan, timing: Timing) -> None:
        ((_topic, partition),) = plan.outcome.partitions
        with lock:
            calls.append((partition, threading.current_thread().name))
        together.wait()
        if partition == fail:
            raise Interrupted("stopped")
        timing.db_write += 0.05
        for (table, topic, part), (_route, group) in plan.writes.items():
            plan.outcome.counts(topic, part).applied += len(group)
            plan.outcome.table_add(table, "applied", len(group))

    return commit


def test_each_partition_commits_in_its_own_transaction_in_parallel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = Ids()
    eng = engine(3, ids)
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(eng, "_commit_plan", fake_commit(calls))
    batch = prepared(3)
    outcome = eng.apply(batch)
    eng.close()
    assert sorted(p for p, _t in calls) == [0, 1, 2]
    assert len({t for _p, t in calls}) == 3  # three writer threads, at the same time
    t = outcome.total()
    assert (t.consumed, t.applied) == (3, 3)
    assert all(c.balanced() for c in outcome.partitions.values())
    assert outcome.by_table == {"public.orders": {"applied": 3}}
    assert len(ids.recorded) == 3  # after every part committed
    assert batch.timing.db_write == pytest.approx(0.15)


def test_an_interrupted_partition_fails_the_batch_after_the_others_finished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = Ids()
    eng = engine(3, ids)
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(eng, "_commit_plan", fake_commit(calls, fail=1))
    with pytest.raises(Interrupted):
        eng.apply(prepared(3))
    eng.close()
    assert sorted(p for p, _t in calls) == [0, 1, 2]  # the others were not abandoned
    assert ids.recorded == []  # nothing goes to Redis unless the whole batch committed


def test_one_writer_commits_the_batch_in_one_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = Ids()
    eng = engine(1, ids)
    calls: list[tuple[int, str]] = []
    plans: list[Plan] = []

    def commit(plan: Plan, timing: Timing) -> None:
        plans.append(plan)
        calls.append((len(plan.outcome.partitions), threading.current_thread().name))

    monkeypatch.setattr(eng, "_commit_plan", commit)
    eng.apply(prepared(3))
    assert calls == [(3, threading.current_thread().name)]
    assert len(plans[0].writes) == 3
