"""``cdcr review list / show / resolve`` round trip against real PostgreSQL: extra rows found by a
reconcile land in the queue; each decision is recorded with who and when, written through the
versioned writer (archive before delete), and resolving again changes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.connectors.postgres.table import key_text

from .helpers import BASE_POS, Case, applied, cli, run


def items(*args: str) -> list[dict[str, Any]]:
    code, out = cli("review", "list", "--json", *args)
    assert code == 0, out
    found: list[dict[str, Any]] = json.loads(out)["items"]
    return found


def count(target: sa.Engine, sql: str, **params: object) -> int:
    with target.connect() as c:
        return int(c.execute(sa.text(sql), params).scalar_one())


def test_review_round_trip(source_engine: sa.Engine, target_engine: sa.Engine, case: Case) -> None:
    t = case.table
    applied(target_engine, case, datetime.now(UTC) + timedelta(hours=1))
    for k in (9001, 9002, 9003):  # rows only in the target (window 00:10-00:15)
        run(
            target_engine,
            f"INSERT INTO {t} (id, v, amount, updated_at, _cdc_pos) VALUES "
            f"({k}, 'ghost', 1, '2026-01-01 00:12Z', {BASE_POS})",
        )
    code, out = cli("reconcile", "--table", t, "--once", "--config", str(case.config))
    assert code == 0, out

    queue = items("--table", t)
    assert [(i["kind"], i["key"], i["review_state"]) for i in queue] == [
        ("extra", "[9001]", "open"),
        ("extra", "[9002]", "open"),
        ("extra", "[9003]", "open"),
    ]
    assert items("--table", t, "--kind", "missing") == []
    ids = {i["key"]: i["id"] for i in queue}

    # A difference repair could not fix, recorded as reconcile records it (for --apply-source).
    run(target_engine, f"UPDATE {t} SET v = 'corrupt' WHERE id = 120")
    with target_engine.begin() as c:
        mism = c.execute(
            sa.text(
                "INSERT INTO cdcr.discrepancies (run_id, table_name, key, kind, columns, action, "
                "review_state) SELECT run_id, table_name, :k, 'mismatched', ARRAY['v'], 'upserted', "
                "'open' FROM cdcr.discrepancies WHERE id = :i RETURNING id"
            ),
            {"k": key_text([120]), "i": ids["[9001]"]},
        ).scalar_one()

    code, out = cli("review", "show", str(ids["[9002]"]), "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["kind"] == "extra" and shown["now"]["source_row"] is None
    assert shown["now"]["target_row"]["v"] == "ghost"
    code, out = cli("review", "show", str(ids["[9002]"]))
    assert code == 0 and "target row now" in out, out

    # keep-target: recorded, nothing written.
    code, out = cli(
        "review",
        "resolve",
        str(ids["[9001]"]),
        "--keep-target",
        "--by",
        "alice",
        "--note",
        "a test row we keep",
    )
    assert code == 0, out
    assert count(target_engine, f"SELECT count(*) FROM {t} WHERE id = 9001") == 1

    # delete-target: archived, then deleted through the versioned writer (tombstone).
    code, out = cli("review", "resolve", str(ids["[9002]"]), "--delete-target", "--by", "bob")
    assert code == 0 and "deleted" in out, out
    assert count(target_engine, f"SELECT count(*) FROM {t} WHERE id = 9002") == 0
    archived = "SELECT count(*) FROM cdcr.extra_rows_archive WHERE table_name = :t AND key = :k"
    assert count(target_engine, archived, t=t, k=key_text([9002])) == 1
    assert (
        count(
            target_engine,
            "SELECT count(*) FROM cdcr.tombstones WHERE table_name = :t AND key = :k",
            t=t,
            k=key_text([9002]),
        )
        == 1
    )

    # apply-source on an extra row (the source has none) deletes it; on a mismatch it upserts.
    code, out = cli("review", "resolve", str(ids["[9003]"]), str(mism), "--apply-source", "--json")
    assert code == 0, out
    outcomes = {r["key"]: r["outcome"] for r in json.loads(out)["resolved"]}
    assert outcomes == {"[9003]": "deleted", "[120]": "upserted"}
    assert count(target_engine, f"SELECT count(*) FROM {t} WHERE id = 9003") == 0
    with target_engine.connect() as c, source_engine.connect() as s:
        q = sa.text(f"SELECT v FROM {t} WHERE id = 120")
        assert c.execute(q).scalar() == s.execute(q).scalar() != "corrupt"

    # Idempotent: again, nothing more is written and the first decision stands.
    code, out = cli("review", "resolve", str(ids["[9002]"]), "--delete-target", "--json")
    assert code == 0, out
    [again] = json.loads(out)["resolved"]
    assert again["outcome"] == "already_resolved" and "delete_target by bob" in again["detail"]
    assert count(target_engine, archived, t=t, k=key_text([9002])) == 1

    done = {i["key"]: i for i in items("--table", t, "--state", "resolved")}
    assert done["[9001]"]["resolution"] == "keep_target"
    assert done["[9001]"]["resolved_by"] == "alice"
    assert done["[9001]"]["note"] == "a test row we keep"
    assert done["[9001]"]["resolved_at"] is not None
    assert done["[9002]"]["resolved_by"] == "bob"
    assert items("--table", t) == []

    # Unknown ids and a missing decision fail in one line, exit 1.
    code, out = cli("review", "resolve", "999999999", "--keep-target")
    assert code == 1 and "FAILED: no review item 999999999" in out
    code, out = cli("review", "resolve", str(ids["[9001]"]))
    assert code == 1 and "choose exactly one" in out


def test_status_shows_the_open_queue(target_engine: sa.Engine, case: Case) -> None:
    t = case.table
    applied(target_engine, case, datetime.now(UTC) + timedelta(hours=1))
    run(
        target_engine,
        f"INSERT INTO {t} (id, v, amount, updated_at, _cdc_pos) VALUES "
        f"(9001, 'ghost', 1, '2026-01-01 00:12Z', {BASE_POS})",
    )
    code, out = cli("reconcile", "--table", t, "--once", "--config", str(case.config))
    assert code == 0, out
    code, out = cli("status", "--json")
    assert code == 0, out
    review = json.loads(out)["review"]
    [mine] = [q for q in review["open"] if q["table"] == t]
    assert mine["kind"] == "extra" and mine["open"] == 1 and mine["oldest_age_s"] >= 0


def test_review_show_result_is_typed_and_its_json_keeps_the_keys() -> None:
    import uuid

    from cdc_reconciler.reconcile.review import RowsNow, Shown, item_json
    from cdc_reconciler.store.discrepancies import ReviewDetail, ReviewItem, ReviewState

    at = datetime(2026, 1, 1, tzinfo=UTC)
    item = ReviewItem(
        7, uuid.UUID(int=1), "t", "[1]", "extra", None, "reported", ReviewState.OPEN, at,
        None, None, None, None,
    )  # fmt: skip
    detail = ReviewDetail(item, None, {"v": "x"}, None, at + timedelta(minutes=5))
    doc = Shown(detail, RowsNow(None, {"v": "x"})).as_json()
    assert doc == {
        **item_json(item),
        "source_row": None,
        "target_row": {"v": "x"},
        "window_start": None,
        "window_end": "2026-01-01T00:05:00+00:00",
        "now": {"source_row": None, "target_row": {"v": "x"}},
    }
    assert item_json(item)["created_at"] == "2026-01-01T00:00:00+00:00"
    assert item_json(item)["run_id"] == str(uuid.UUID(int=1))
    assert Shown(detail, RowsNow(error="no such table")).as_json()["now"] == {
        "error": "no such table"
    }
