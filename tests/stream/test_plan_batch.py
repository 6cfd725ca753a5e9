"""plan_batch without a database: what each record of a batch becomes before anything is written."""

from __future__ import annotations

from typing import Any, TypeAlias

import pytest

from cdc_reconciler.config import TableMapping
from cdc_reconciler.connectors.debezium import (
    ChangeEvent,
    DecodeError,
    Tombstone,
    TransactionMarker,
)
from cdc_reconciler.connectors.kafka import Record
from cdc_reconciler.connectors.postgres.table import TargetTable
from cdc_reconciler.stream.errors import ApplyError
from cdc_reconciler.stream.outcomes import OUTCOMES
from cdc_reconciler.stream.plan import (
    Pending,
    Plan,
    merge_outcomes,
    plan_batch,
    split_by_partition,
)
from cdc_reconciler.stream.tables import Route
from cdc_reconciler.stream.timing import Timing

ORDERS = Route.of(TargetTable("public", "orders", ("id",), ("id", "v", "doc")), TableMapping())
LOGS = Route.of(
    TargetTable("public", "logs", (), ("line",)), TableMapping(mode="append", key_columns=[])
)
AUDIT = Route.of(TargetTable("public", "audit", (), ("line",)), TableMapping())

Decoded: TypeAlias = ChangeEvent | Tombstone | TransactionMarker | DecodeError


def ev(
    op: str,
    key: int | None,
    position: int,
    after: dict[str, Any] | None = None,
    *,
    table: str = "orders",
    unavailable: frozenset[str] = frozenset(),
    cid: bytes | None = None,
) -> ChangeEvent:
    return ChangeEvent(
        op=op,
        source_schema="public",
        source_table=table,
        key=None if key is None else {"id": key},
        before=None,
        after=after,
        unavailable=unavailable,
        position=position,
        ts_us=1_700_000_000_000_000 + position,
        snapshot=False,
        change_id=cid or f"{table}:{key}:{position}".encode(),
        column_types=None,
    )


class Batch:
    """Records whose values name a prepared decode result (an event, or a DecodeError)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._decoded: dict[bytes, Decoded] = {}

    def add(self, decoded: Decoded, *, topic: str = "p.public.orders", partition: int = 0) -> None:
        value = f"{len(self.records)}".encode()
        self._decoded[value] = decoded
        self.records.append(Record(topic, partition, len(self.records), b"k", value))

    def decode(
        self, _key: bytes | None, value: bytes | None
    ) -> ChangeEvent | Tombstone | TransactionMarker:
        assert value is not None
        got = self._decoded[value]
        if isinstance(got, DecodeError):
            raise got
        return got


def pending(r: Record, e: ChangeEvent) -> Pending:
    """The resolver's part, without a database: route by source table; keyless tables get a key
    of their own (as the engine does)."""
    route = {"orders": ORDERS, "logs": LOGS, "audit": AUDIT}[e.source_table or ""]
    if e.op == "t":
        return Pending(r, e, route, (), None)
    if not route.table.key_columns:
        return Pending(r, e, route, ("\x00keyless", r.offset), e.after, "i")
    if e.key is None:
        raise ApplyError("missing_key", "no key")
    key = (e.key["id"],)
    if e.op == "d":
        return Pending(r, e, route, key, None)
    return Pending(r, e, route, key, dict(e.after or {}))


def plan(batch: Batch, seen: set[bytes] | frozenset[bytes] | None = frozenset(), **kw: Any) -> Plan:
    return plan_batch(
        batch.records,
        decode=batch.decode,
        pending=pending,
        seen=None if seen is None else (lambda ids: [cid in seen for cid, _ts in ids]),
        **kw,
    )


def writes(p: Plan) -> dict[Any, list[tuple[Any, dict[str, Any] | None, int]]]:
    return {
        gk: [(w.key, w.values, w.event.position) for w in group]
        for gk, (_route, group) in p.writes.items()
    }


def totals(p: Plan) -> dict[str, int]:
    t = p.outcome.total()
    return {"consumed": t.consumed, **{o: getattr(t, o) for o in OUTCOMES}}


def test_newest_position_wins_per_key_and_older_ones_are_stale() -> None:
    b = Batch()
    b.add(ev("c", 1, 10, {"id": 1, "v": "a", "doc": "x"}))
    b.add(ev("u", 1, 30, {"id": 1, "v": "c", "doc": "x"}))
    b.add(ev("u", 1, 20, {"id": 1, "v": "b", "doc": "x"}))  # reordered: older than the one before
    b.add(ev("c", 2, 15, {"id": 2, "v": "z", "doc": "y"}))
    p = plan(b)
    assert writes(p) == {
        ("public.orders", "p.public.orders", 0): [
            ((1,), {"id": 1, "v": "c", "doc": "x"}, 30),
            ((2,), {"id": 2, "v": "z", "doc": "y"}, 15),
        ]
    }
    assert totals(p)["skipped_stale"] == 2
    assert p.outcome.by_table["public.orders"] == {"skipped_stale": 2}
    # Every change not known as processed is recorded in Redis after the commit, stale ones too.
    assert len(p.fresh_ids) == 4


def test_a_tie_goes_to_the_later_record() -> None:
    b = Batch()
    b.add(ev("r", 1, 5, {"id": 1, "v": "first"}, cid=b"a"))
    b.add(ev("r", 1, 5, {"id": 1, "v": "second"}, cid=b"b"))
    assert writes(plan(b))[("public.orders", "p.public.orders", 0)] == [
        ((1,), {"id": 1, "v": "second"}, 5)
    ]


def test_a_delete_collapses_like_an_upsert_and_writes_no_values() -> None:
    b = Batch()
    b.add(ev("c", 1, 10, {"id": 1, "v": "a"}))
    b.add(ev("d", 1, 11))
    b.add(Tombstone({"id": 1}))
    b.add(ev("d", 2, 40))
    b.add(ev("c", 2, 41, {"id": 2, "v": "again"}))  # re-inserted after its delete
    p = plan(b)
    assert writes(p)[("public.orders", "p.public.orders", 0)] == [
        ((1,), None, 11),
        ((2,), {"id": 2, "v": "again"}, 41),
    ]
    assert totals(p) == {
        "consumed": 5,
        "applied": 0,  # decided by the target's position guard, after the plan
        "skipped_duplicate": 0,
        "skipped_stale": 2,
        "dead_lettered": 0,
        "skipped_noop": 1,  # the tombstone
    }


def test_tombstones_markers_and_logical_messages_are_no_ops() -> None:
    b = Batch()
    b.add(Tombstone({"id": 1}))
    b.add(TransactionMarker("BEGIN", "7:1"))
    b.add(ev("m", None, 3))
    p = plan(b)
    assert p.writes == {} and p.fresh_ids == [] and p.dead == []
    assert totals(p)["skipped_noop"] == 3
    c = p.outcome.counts("p.public.orders", 0)
    assert c.next_offset == 3 and c.last_event_us is None


def test_duplicates_known_to_redis_are_skipped_before_collapsing() -> None:
    b = Batch()
    b.add(ev("u", 1, 50, {"id": 1, "v": "seen"}, cid=b"old"))
    b.add(ev("u", 1, 20, {"id": 1, "v": "fresh"}, cid=b"new"))
    p = plan(b, seen={b"old"})
    # The processed change does not take part in collapsing: the fresh, older one is written
    # (the target's position guard then keeps the newer row).
    assert writes(p)[("public.orders", "p.public.orders", 0)] == [
        ((1,), {"id": 1, "v": "fresh"}, 20)
    ]
    assert totals(p)["skipped_duplicate"] == 1 and totals(p)["skipped_stale"] == 0
    assert [cid for cid, _ts in p.fresh_ids] == [b"new"]
    assert p.outcome.by_table["public.orders"] == {"skipped_duplicate": 1}


def test_undecodable_and_unroutable_records_are_dead_lettered() -> None:
    b = Batch()
    b.add(DecodeError("bad_json", "not JSON"))
    b.add(ev("c", None, 3, {"v": 1}))  # no key: the resolver refuses it
    b.add(ev("c", 1, 4, {"id": 1, "v": "ok"}))
    p = plan(b)
    assert [(d.record.offset, d.kind) for d in p.dead] == [
        (0, "decode:bad_json"),
        (1, "missing_key"),
    ]
    assert totals(p)["dead_lettered"] == 2
    assert p.outcome.by_table["p.public.orders"] == {"dead_lettered": 2}
    assert len(writes(p)[("public.orders", "p.public.orders", 0)]) == 1


def test_truncates_are_kept_in_order_and_never_collapsed() -> None:
    b = Batch()
    b.add(ev("c", 1, 1, {"id": 1, "v": "a"}))
    b.add(ev("t", None, 2, cid=b"t1"))
    b.add(ev("t", None, 3, cid=b"t2"))
    p = plan(b)
    assert [t.event.change_id for t in p.truncates] == [b"t1", b"t2"]
    assert len(p.fresh_ids) == 3
    assert totals(p)["skipped_stale"] == 0


def test_groups_per_table_topic_and_partition() -> None:
    b = Batch()
    b.add(ev("c", 1, 1, {"id": 1}), partition=0)
    b.add(ev("c", 2, 2, {"id": 2}), partition=1)
    # The same key in another partition: collapsed, the write goes with the newest (order of
    # groups: the key's first appearance).
    b.add(ev("c", 1, 3, {"id": 1}), partition=1)
    p = plan(b)
    assert writes(p) == {
        ("public.orders", "p.public.orders", 1): [((1,), {"id": 1}, 3), ((2,), {"id": 2}, 2)]
    }
    assert p.outcome.counts("p.public.orders", 0).skipped_stale == 1
    assert p.outcome.counts("p.public.orders", 1).next_offset == 3


def test_offsets_and_event_times_per_partition() -> None:
    b = Batch()
    b.add(ev("c", 1, 100, {"id": 1}))
    b.add(ev("c", 2, 50, {"id": 2}))
    c = plan(b).outcome.counts("p.public.orders", 0)
    assert c.consumed == 2 and c.next_offset == 2
    assert c.last_event_us == 1_700_000_000_000_000 + 100


def test_a_newer_upsert_without_toasted_columns_keeps_the_older_values() -> None:
    b = Batch()
    b.add(ev("c", 1, 1, {"id": 1, "v": "a", "doc": "big"}))
    b.add(ev("u", 1, 2, {"id": 1, "v": "b"}, unavailable=frozenset({"doc"})))
    assert writes(plan(b))[("public.orders", "p.public.orders", 0)] == [
        ((1,), {"id": 1, "v": "b", "doc": "big"}, 2)
    ]


def test_keyless_changes_without_change_ids_are_stale_unless_append_only() -> None:
    b = Batch()
    b.add(ev("c", None, 1, {"line": "x"}, table="audit"), topic="p.public.audit")
    b.add(ev("c", None, 2, {"line": "y"}, table="logs"), topic="p.public.logs")
    told: list[str] = []
    p = plan(b, seen=None, keyless_skipped=lambda pe: told.append(pe.route.table.qualified))
    assert told == ["public.audit"]
    assert p.outcome.by_table["public.audit"] == {"skipped_stale": 1}
    assert list(writes(p)) == [("public.logs", "p.public.logs", 0)]
    # With change IDs (the live loop) the same change is written.
    told.clear()
    assert len(plan(b, keyless_skipped=lambda pe: told.append("x")).writes) == 2
    assert told == []


def test_every_record_ends_in_exactly_one_outcome_or_write() -> None:
    b = Batch()
    for i in range(20):
        b.add(ev("u", i % 3, i, {"id": i % 3, "v": i}, cid=str(i).encode()))
    b.add(Tombstone(None))
    b.add(DecodeError("bad_json", "x"))
    p = plan(b, seen={b"4", b"5"})
    t = totals(p)
    written = sum(len(g) for _r, g in p.writes.values())
    assert t["consumed"] == 22
    assert (
        written
        + t["skipped_stale"]
        + t["skipped_duplicate"]
        + t["skipped_noop"]
        + t["dead_lettered"]
        == 22
    )


def test_timing_is_filled_when_given() -> None:
    b = Batch()
    b.add(ev("c", 1, 1, {"id": 1}))
    timing = Timing()
    plan(b, timing=timing)
    assert timing.decode > 0 and timing.redis_seen > 0


@pytest.mark.parametrize("positions", [(1, 2, 3), (3, 2, 1), (2, 3, 1)])
def test_order_in_the_batch_does_not_change_the_winner(positions: tuple[int, ...]) -> None:
    b = Batch()
    for pos in positions:
        b.add(ev("u", 7, pos, {"id": 7, "v": pos}))
    assert writes(plan(b))[("public.orders", "p.public.orders", 0)] == [
        ((7,), {"id": 7, "v": 3}, 3)
    ]


def test_split_by_partition_keeps_each_partitions_part_together() -> None:
    b = Batch()
    b.add(ev("c", 1, 1, {"id": 1}), partition=0)
    b.add(DecodeError("bad_json", "x"), partition=0)
    b.add(ev("c", 2, 2, {"id": 2}), partition=1)
    b.add(ev("t", None, 3, cid=b"t"), partition=1)
    b.add(Tombstone(None), partition=2)  # a partition with nothing to write still commits
    p = plan(b)
    parts = {next(iter(x.outcome.partitions)): x for x in split_by_partition(p)}
    assert set(parts) == {("p.public.orders", 0), ("p.public.orders", 1), ("p.public.orders", 2)}
    p0, p1, p2 = (parts[("p.public.orders", i)] for i in range(3))
    assert list(p0.writes) == [("public.orders", "p.public.orders", 0)]
    assert [d.record.offset for d in p0.dead] == [1] and p1.dead == []
    assert [t.event.change_id for t in p1.truncates] == [b"t"] and p0.truncates == []
    assert p2.writes == {} and p2.outcome.partitions[("p.public.orders", 2)].skipped_noop == 1
    # Counts are copies: a part's transaction accounts on its own.
    p0.outcome.partitions[("p.public.orders", 0)].applied += 1
    assert p.outcome.partitions[("p.public.orders", 0)].applied == 0


def test_merge_outcomes_adds_the_parts_to_the_planned_counts() -> None:
    b = Batch()
    b.add(ev("c", 1, 1, {"id": 1}), partition=0)
    b.add(ev("c", 1, 2, {"id": 1}), partition=0)  # stale, counted while planning
    b.add(ev("c", 2, 3, {"id": 2}), partition=1)
    p = plan(b)
    parts = split_by_partition(p)
    for part in parts:
        for (topic, partition), c in part.outcome.partitions.items():
            c.applied += 1
            part.outcome.table_add("public.orders", "applied")
            assert (topic, partition) in p.outcome.partitions
    merged = merge_outcomes(p.outcome, [x.outcome for x in parts])
    assert merged.by_table == {"public.orders": {"skipped_stale": 1, "applied": 2}}
    t = merged.total()
    assert (t.consumed, t.applied, t.skipped_stale) == (3, 2, 1)
    assert all(c.balanced() for c in merged.partitions.values())
