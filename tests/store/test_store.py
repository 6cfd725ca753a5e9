"""Every function of cdc_reconciler.store against a real PostgreSQL database of its own."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import sqlalchemy as sa

from cdc_reconciler.errors import CdcrError
from cdc_reconciler.store import dead_letters, deferred, discrepancies, offsets, runs, tombstones
from cdc_reconciler.store import watermarks as wm
from cdc_reconciler.store.dead_letters import DeadLetterRow
from cdc_reconciler.store.deferred import Deferral
from cdc_reconciler.store.discrepancies import ArchivedRow, NewDiscrepancy, ReviewState
from cdc_reconciler.store.runs import RunStatus
from cdc_reconciler.stream.outcomes import BatchOutcome

pytestmark = pytest.mark.services

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _outcome(parts: dict[tuple[str, int], tuple[int, int, int | None]]) -> BatchOutcome:
    out = BatchOutcome()
    for (topic, p), (next_offset, applied, ev_us) in parts.items():
        c = out.counts(topic, p)
        c.consumed = c.applied = applied
        c.next_offset = next_offset
        c.last_event_us = ev_us
    return out


# --- applied offsets ------------------------------------------------------------------------


def test_offsets_accumulate_and_only_move_forward(clean: sa.Engine) -> None:
    us = int(T0.timestamp() * 1_000_000)
    with clean.begin() as c:
        offsets.record_applied(c, "g", _outcome({("t1", 0): (10, 10, us), ("t1", 1): (5, 5, None)}))
        # A batch with an older position (a replay) never moves the offset back.
        offsets.record_applied(c, "g", _outcome({("t1", 0): (7, 2, us - 1)}))
        offsets.record_applied(c, "g", _outcome({("t2", 0): (3, 3, us)}))
        offsets.record_applied(c, "other", _outcome({("t1", 0): (99, 1, us)}))
        # A partition with nothing consumed (next_offset -1) writes nothing.
        offsets.record_applied(c, "g", _outcome({("t3", 0): (-1, 0, None)}))
    with clean.connect() as c:
        assert offsets.applied_offsets(c, "g", [("t1", 0), ("t1", 1), ("t2", 0), ("t3", 0)]) == {
            ("t1", 0): 10,
            ("t1", 1): 5,
            ("t2", 0): 3,
        }
        assert offsets.applied_offsets(c, "g", [("t1", 1)]) == {("t1", 1): 5}
        assert offsets.applied_offsets(c, "g", []) == {}
        assert offsets.applied_topics(c, "g") == ["t1", "t2"]
        progress = offsets.partition_progress(c, "g", "t1")
        assert [(p.partition, p.next_offset, p.last_event_time) for p in progress] == [
            (0, 10, T0),
            (1, 5, None),
        ]
        rows = offsets.all_offsets(c)
    assert [(r.consumer_group, r.topic, r.partition) for r in rows] == [
        ("g", "t1", 0),
        ("g", "t1", 1),
        ("g", "t2", 0),
        ("other", "t1", 0),
    ]
    assert (rows[0].consumed, rows[0].applied) == (12, 12)
    with clean.connect() as c:
        assert offsets.exists(c)
        assert [r.topic for r in offsets.for_groups(c, ["other"])] == ["t1"]
        assert offsets.for_groups(c, ["nobody"]) == []


# --- watermarks -----------------------------------------------------------------------------


def test_watermark_moves_forward_by_compare_and_swap(clean: sa.Engine) -> None:
    with clean.begin() as c:
        wm.ensure(c, "s.t")
        wm.ensure(c, "s.t")  # idempotent
        assert wm.read(c, "s.t") is not None
        wm.advance(c, "s.t", None, T0)
        wm.advance(c, "s.t", T0, T0 + timedelta(minutes=5))
        wm.set_state(c, "s.t", "reconciling")
    with clean.connect() as c:
        mark = wm.read(c, "s.t")
        assert mark is not None
        assert (mark.reconciled_through, mark.state) == (T0 + timedelta(minutes=5), "reconciling")
        assert [m.table for m in wm.read_all(c)] == ["s.t"]
        assert wm.read(c, "s.none") is None
    with clean.begin() as c, pytest.raises(CdcrError, match="would not move forward"):
        wm.advance(c, "s.t", T0 + timedelta(minutes=5), T0)
    with clean.begin() as c, pytest.raises(CdcrError, match="timezone-aware"):
        wm.advance(c, "s.t", None, datetime(2026, 1, 1))  # noqa: DTZ001


def test_watermark_conflict_when_expected_does_not_match(clean: sa.Engine) -> None:
    with clean.begin() as c:
        wm.ensure(c, "s.t")
        wm.advance(c, "s.t", None, T0)
    with clean.begin() as c, pytest.raises(wm.WatermarkConflict, match="no longer None"):
        wm.advance(c, "s.t", None, T0 + timedelta(minutes=5))  # it is at T0, not NULL
    with clean.begin() as c, pytest.raises(wm.WatermarkConflict, match="missing"):
        wm.advance(c, "s.never_ensured", None, T0)
    with clean.connect() as c:
        mark = wm.read(c, "s.t")
    assert mark is not None and mark.reconciled_through == T0  # unchanged by the failures


def test_watermark_conflict_when_another_connection_moves_it_first(clean: sa.Engine) -> None:
    """Two reconcilers read the same watermark; the one that commits first wins, the other's
    compare-and-swap (blocked on the row lock meanwhile) changes nothing and raises."""
    with clean.begin() as c:
        wm.ensure(c, "s.t")
        wm.advance(c, "s.t", None, T0)
    first_moved = threading.Event()
    errors: list[BaseException] = []
    with clean.connect() as a:
        a.begin()
        expected = wm.read(a, "s.t")
        assert expected is not None
        wm.advance(a, "s.t", expected.reconciled_through, T0 + timedelta(minutes=5))

        def second() -> None:
            try:
                with clean.begin() as b:
                    first_moved.set()
                    wm.advance(b, "s.t", expected.reconciled_through, T0 + timedelta(minutes=10))
            except BaseException as exc:
                errors.append(exc)

        other = threading.Thread(target=second)
        other.start()
        first_moved.wait(5)
        # The second waits on the row lock until the first commits, then matches nothing.
        other.join(0.5)
        assert other.is_alive()
        a.commit()
        other.join(10)
    assert len(errors) == 1 and isinstance(errors[0], wm.WatermarkConflict)
    assert "another reconciler moved it" in str(errors[0])
    with clean.connect() as c:
        mark = wm.read(c, "s.t")
    assert mark is not None and mark.reconciled_through == T0 + timedelta(minutes=5)


# --- runs -----------------------------------------------------------------------------------


def test_run_lifecycle_and_reads(clean: sa.Engine) -> None:
    ok, bad, failed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    w1, w2 = T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)
    with clean.begin() as c:
        assert runs.exists(c)
        runs.start(c, bad, "s.t", T0, w1, T0)
        runs.finish(c, bad, RunStatus.UNRESOLVED, T0 + timedelta(seconds=1), {"missing": 1})
        runs.start(c, ok, "s.t", None, w2, T0 + timedelta(seconds=2), {"kind": "x"})
        runs.finish(
            c, ok, RunStatus.CLEAN, T0 + timedelta(seconds=3), {"n": 2}, [{"check": "count"}]
        )
        runs.start(c, failed, "s.u", T0, w1, T0 + timedelta(seconds=4))
        runs.fail(c, failed, T0 + timedelta(seconds=5), "boom " * 200)
    with clean.connect() as c:
        got = runs.get(c, ok)
        assert got is not None
        assert (got.status, got.counts, got.window_start) == (RunStatus.CLEAN, {"n": 2}, None)
        assert got.status == "clean"  # a StrEnum: equal to its value
        f = runs.get(c, failed)
        assert f is not None and f.status is RunStatus.FAILED
        assert len(f.counts["error"]) == 500
        assert runs.get(c, uuid.uuid4()) is None
        assert [r.run_id for r in runs.recent(c, 2)] == [failed, ok]
        latest = {r.table_name: r for r in runs.latest_checks(c)}
        assert latest["s.t"].status is RunStatus.CLEAN
        assert latest["s.t"].checks == [{"check": "count"}]
        # The whole-table clean run covers the unresolved window: only s.u's failure is open.
        assert [r.run_id for r in runs.failed_uncovered(c)] == [failed]
        assert runs.first_verified_end(c, "s.t") == w2
        assert runs.first_verified_end(c, "s.u") is None
        assert [
            (v.window_start, v.window_end) for v in runs.verified_between(c, "s.t", T0, w2)
        ] == [(None, w2)]


def test_recorded_run_keeps_checks_unless_finish_gives_new_ones(clean: sa.Engine) -> None:
    rid = uuid.uuid4()
    with clean.begin() as c:
        runs.record(
            c,
            str(rid),
            "s.t",
            RunStatus.SAMPLED,
            window_start=T0,
            window_end=T0 + timedelta(hours=1),
            started=T0,
            finished=T0,
            counts={"sampled": 3},
            checks=[{"check": "sample"}],
        )
        runs.finish(c, rid, RunStatus.SAMPLED, T0, {"sampled": 4})
        row = c.execute(
            sa.text("SELECT checks, counts, dry_run FROM cdcr.reconcile_runs WHERE run_id = :r"),
            {"r": rid},
        ).one()
    assert (row.checks, row.counts, row.dry_run) == ([{"check": "sample"}], {"sampled": 4}, False)


# --- discrepancies and review items ---------------------------------------------------------


def test_discrepancies_queue_review_and_archive(clean: sa.Engine) -> None:
    rid = uuid.uuid4()
    now = datetime.now(UTC)
    with clean.begin() as c:
        runs.start(c, rid, "s.t", T0, T0 + timedelta(minutes=5), T0)
        discrepancies.insert(
            c,
            rid,
            "s.t",
            [
                NewDiscrepancy("[1]", "missing", "reported", None, '{"id": 1}', None),
                NewDiscrepancy("[2]", "mismatched", "upserted", ["v"], '{"v": 1}', '{"v": 2}'),
                NewDiscrepancy("[3]", "extra", "reported", None, None, '{"id": 3}'),
            ],
        )
        orphan = [NewDiscrepancy("[9]", "orphan", "reported", ["fk"], target_row='{"p": 1}')]
        discrepancies.insert_once(c, rid, "s.t", orphan)
        discrepancies.insert_once(c, rid, "s.t", orphan)  # one open item per key and kind
        discrepancies.insert(c, rid, "s.t", [])
        discrepancies.archive(c, [ArchivedRow(rid, "s.t", "[3]", '{"id": 3, "v": "x"}')])
    with clean.begin() as c:
        items = discrepancies.items(c, table="s.t", kind=None, state="open", limit=10)
        assert [(i.key, i.kind) for i in items] == [
            ("[1]", "missing"),
            ("[2]", "mismatched"),
            ("[3]", "extra"),
            ("[9]", "orphan"),
        ]
        assert all(i.review_state is ReviewState.OPEN for i in items)
        assert [
            i.key for i in discrepancies.items(c, table=None, kind="extra", state="all", limit=5)
        ] == ["[3]"]
        ids = [i.id for i in items]
        assert discrepancies.existing(c, [*ids, 10**9]) == set(ids)
        detail = discrepancies.detail(c, ids[1])
        assert detail is not None
        assert (detail.source_row, detail.target_row) == ({"v": 1}, {"v": 2})
        assert (detail.window_start, detail.window_end) == (T0, T0 + timedelta(minutes=5))
        assert discrepancies.detail(c, 10**9) is None
        locked = discrepancies.lock(c, ids[0])
        assert locked.key == "[1]"
        discrepancies.resolve(c, ids[0], "keep_target", "alice", now, "checked by hand")
        by_kind = {(o.table, o.kind): o for o in discrepancies.open_by_kind(c)}
        assert {k: o.n for k, o in by_kind.items()} == {
            ("s.t", "extra"): 1,
            ("s.t", "mismatched"): 1,
            ("s.t", "orphan"): 1,
        }
        assert by_kind["s.t", "extra"].oldest_age_s >= 0
        assert discrepancies.open_by_kind(c, ["s.other"]) == []
        assert [o.key for o in discrepancies.open_latest(c, 2)] == ["[9]", "[3]"]
        # Re-verification resolves the run's items except the keys still different.
        discrepancies.resolve_run(c, rid, ["[2]"])
        left = discrepancies.items(c, table="s.t", kind=None, state="open", limit=10)
        assert [i.key for i in left] == ["[2]"]
        done = discrepancies.lock(c, ids[0])
        assert (done.review_state, done.resolution, done.resolved_by, done.note) == (
            ReviewState.RESOLVED,
            "keep_target",
            "alice",
            "checked by hand",
        )
        archived = c.execute(sa.text("SELECT key, row FROM cdcr.extra_rows_archive")).all()
    assert [tuple(r) for r in archived] == [("[3]", {"id": 3, "v": "x"})]


# --- dead letters and tombstones ------------------------------------------------------------


def test_dead_letters_insert_once_and_summarise(clean: sa.Engine) -> None:
    row = DeadLetterRow("topic.a", 0, 7, b"k", b"v", "decode:json", "not JSON")
    with clean.begin() as c:
        dead_letters.insert(
            c, [row, DeadLetterRow("topic.a", 0, 8, None, None, "decode:json", "second")]
        )
        dead_letters.insert(c, [row])  # the same record again: nothing new
        dead_letters.insert(c, [])
    with clean.connect() as c:
        summary = dead_letters.last_day(c)
        n = c.execute(sa.text("SELECT count(*) FROM cdcr.dead_letters")).scalar()
    assert n == 2
    assert [(s.topic, s.kind, s.n, s.last_error) for s in summary] == [
        ("topic.a", "decode:json", 2, "second")
    ]


def test_tombstone_positions(clean: sa.Engine) -> None:
    with clean.begin() as c:
        c.execute(
            sa.text(
                "INSERT INTO cdcr.tombstones (table_name, key, position, deleted_at) VALUES "
                "('public.t', '[1]', 100, now()), ('public.t', '[2]', 200, now()), "
                "('public.u', '[1]', 300, now())"
            )
        )
    with clean.connect() as c:
        assert tombstones.positions(c, "public.t", ["[1]", "[3]"]) == {"[1]": 100}
        assert tombstones.positions(c, "public.u", ["[1]", "[2]"]) == {"[1]": 300}
        assert tombstones.positions(c, "public.t", []) == {}


def test_new_discrepancy_json_round_trip(clean: sa.Engine) -> None:
    rid = uuid.uuid4()
    row = {"id": 1, "n": "1.50"}
    with clean.begin() as c:
        runs.start(c, rid, "s.t", None, T0, T0)
        discrepancies.insert(
            c,
            rid,
            "s.t",
            [NewDiscrepancy("[1]", "missing", "reported", source_row=orjson.dumps(row).decode())],
        )
        item = discrepancies.items(c, table="s.t", kind="missing", state="open", limit=1)[0]
        detail = discrepancies.detail(c, item.id)
    assert detail is not None and detail.source_row == row and detail.target_row is None


def test_max_tombstone_position(clean: sa.Engine) -> None:
    with clean.begin() as c:
        assert tombstones.max_position(c, "public.t") is None
        c.execute(
            sa.text(
                "INSERT INTO cdcr.tombstones (table_name, key, position, deleted_at) VALUES "
                "('public.t', '[1]', 100, now()), ('public.t', '[2]', 200, now())"
            )
        )
        assert tombstones.max_position(c, "public.t") == 200


# --- deferred keys --------------------------------------------------------------------------


def test_deferred_keys_count_again_and_restart_when_applying(clean: sa.Engine) -> None:
    later = T0 + timedelta(minutes=1)
    with clean.begin() as c:
        deferred.defer(c, "s.t", [Deferral("[2]", "missing", "changing")], T0)
        deferred.defer(c, "s.t", [Deferral("[1]", "mismatched", "changing")], T0)
        deferred.defer(
            c,
            "s.t",
            [Deferral("[1]", "mismatched", "changing"), Deferral("[2]", "extra", "applying")],
            later,
        )
        deferred.defer(c, "s.t", [], later)
        assert deferred.keys(c, "s.t") == ["[1]", "[2]"]
        # [1] keeps its first deferral; [2] is being applied now, so its clock restarts.
        assert deferred.first_deferred(c, "s.t", ["[1]", "[2]", "[3]"]) == {"[1]": T0, "[2]": later}
        times = c.execute(
            sa.text("SELECT key, times, kind FROM cdcr.deferred_keys ORDER BY key")
        ).all()
        assert [tuple(r) for r in times] == [("[1]", 2, "mismatched"), ("[2]", 2, "extra")]
        deferred.forget(c, "s.t", ["[1]"])
        deferred.forget(c, "s.t", [])
        assert deferred.keys(c, "s.t") == ["[2]"]
