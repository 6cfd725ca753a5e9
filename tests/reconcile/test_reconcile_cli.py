"""``cdcr reconcile`` and ``cdcr status`` against real PostgreSQL (source and target).

The consumer is not running for these tables: the tests plant differences directly in the
target, and write the applied-offsets rows that prove (or deny) window closure themselves."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
import yaml

from cdc_reconciler.config import Settings
from cdc_reconciler.connectors.postgres.reflect import reflect_table
from cdc_reconciler.connectors.postgres.table import key_text
from cdc_reconciler.connectors.postgres.write import RowWrite, write_batch
from cdc_reconciler.reconcile import command

from .helpers import BASE_POS, T0, Case, applied, cli, run


def plant(source: sa.Engine, target: sa.Engine, c: Case) -> None:
    t = c.table
    run(target, f"DELETE FROM {t} WHERE id IN (5, 250)")  # missing (windows 0 and 2)
    run(target, f"UPDATE {t} SET v = 'corrupt' WHERE id = 120")  # mismatched (window 1)
    run(target, f"UPDATE {t} SET amount = 0 WHERE id = 480")  # mismatched (window 4)
    run(
        target,
        f"INSERT INTO {t} (id, v, amount, updated_at, _cdc_pos) VALUES "
        f"(9001, 'ghost', 1, '2026-01-01 00:12Z', {BASE_POS})",
    )  # extra (window 2)


def snapshot(engine: sa.Engine, table: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(f"SELECT id, v, amount::text, updated_at FROM {table} ORDER BY id")
            )
        ]


def service_rows(target: sa.Engine, table: str) -> dict[str, int]:
    out = {}
    with target.connect() as conn:
        for t in ("watermarks", "reconcile_runs", "discrepancies", "extra_rows_archive"):
            out[t] = conn.execute(
                sa.text(f"SELECT count(*) FROM cdcr.{t} WHERE table_name = :t"), {"t": table}
            ).scalar_one()
    return out


EXPECTED = {
    ("missing", 5),
    ("missing", 250),
    ("mismatched", 120),
    ("mismatched", 480),
    ("extra", 9001),
}


def test_dry_run_reports_exactly_and_writes_nothing(
    source_engine: sa.Engine, target_engine: sa.Engine, case: Case
) -> None:
    applied(target_engine, case, datetime.now(UTC) + timedelta(hours=1))
    plant(source_engine, target_engine, case)
    before = snapshot(target_engine, case.table)
    code, out = cli(
        "reconcile",
        "--table",
        case.table,
        "--once",
        "--dry-run",
        "--json",
        "--config",
        str(case.config),
    )
    assert code == 0, out
    data = json.loads(out)
    windows = data["tables"][0]["windows"]
    found = {(d["kind"], d["key"][0]) for w in windows for d in w["differences"]}
    assert found == EXPECTED
    mism = {
        d["key"][0]: d["columns"]
        for w in windows
        for d in w["differences"]
        if d["kind"] == "mismatched"
    }
    assert mism == {120: ["v"], 480: ["amount"]}
    assert snapshot(target_engine, case.table) == before
    assert service_rows(target_engine, case.table) == {
        "watermarks": 0,
        "reconcile_runs": 0,
        "discrepancies": 0,
        "extra_rows_archive": 0,
    }


def test_run_repairs_reports_extras_then_deletes_them_when_asked(
    source_engine: sa.Engine, target_engine: sa.Engine, case: Case
) -> None:
    applied(target_engine, case, datetime.now(UTC) + timedelta(hours=1))
    plant(source_engine, target_engine, case)
    code, out = cli(
        "reconcile", "--table", case.table, "--once", "--json", "--config", str(case.config)
    )
    assert code == 0, out
    data = json.loads(out)["tables"][0]
    statuses = [w["status"] for w in data["windows"]]
    assert "unresolved" not in statuses and "open_extras" in statuses
    target_now = snapshot(target_engine, case.table)
    assert [r for r in target_now if r[0] != 9001] == snapshot(source_engine, case.table)
    assert any(r[0] == 9001 for r in target_now)  # extra row only reported
    with target_engine.connect() as conn:
        disc = {
            (r.kind, r.key, r.action, r.review_state)
            for r in conn.execute(
                sa.text(
                    "SELECT kind, key, action, review_state FROM cdcr.discrepancies "
                    "WHERE table_name = :t"
                ),
                {"t": case.table},
            )
        }
        mark = conn.execute(
            sa.text("SELECT reconciled_through FROM cdcr.watermarks WHERE table_name = :t"),
            {"t": case.table},
        ).scalar()
    assert disc == {
        ("missing", "[5]", "upserted", "resolved"),
        ("missing", "[250]", "upserted", "resolved"),
        ("mismatched", "[120]", "upserted", "resolved"),
        ("mismatched", "[480]", "upserted", "resolved"),
        ("extra", "[9001]", "reported", "open"),
    }
    # Past the data, the empty stretch up to the closed boundary is one window.
    assert mark is not None and mark >= T0 + timedelta(minutes=30)

    # The repair position loses to any later real change and beats every older event.
    ttable = reflect_table(target_engine, *case.table.split("."))
    assert ttable is not None
    with target_engine.begin() as conn:
        older = write_batch(
            conn, ttable, [RowWrite((120,), {"id": 120, "v": "old event"}, BASE_POS + 99_999, 0)]
        )
        newer = write_batch(
            conn, ttable, [RowWrite((5,), {"id": 5, "v": "later change"}, (1001 << 64) | 1, 0)]
        )
    assert (older.applied, newer.applied) == (0, 1)

    # Extra rows go only with --delete-extra, archived first. Reconcile that range again.
    code, out = cli(
        "reconcile",
        "--table",
        case.table,
        "--once",
        "--delete-extra",
        "--json",
        "--from",
        "2026-01-01T00:10:00Z",
        "--to",
        "2026-01-01T00:15:00Z",
        "--config",
        str(case.config),
    )
    assert code == 0, out
    assert json.loads(out)["tables"][0]["windows"][0]["status"] == "repaired"
    with target_engine.connect() as conn:
        gone = conn.execute(sa.text(f"SELECT count(*) FROM {case.table} WHERE id = 9001")).scalar()
        archived = conn.execute(
            sa.text(
                "SELECT row->>'v' FROM cdcr.extra_rows_archive WHERE table_name = :t AND key = :k"
            ),
            {"t": case.table, "k": key_text([9001])},
        ).scalar()
    assert gone == 0 and archived == "ghost"

    code, out = cli("status", "--json")
    assert code == 0, out
    st = json.loads(out)
    assert any(m["table"] == case.table for m in st["watermarks"])


def test_window_not_closed_is_not_reconciled(
    source_engine: sa.Engine, target_engine: sa.Engine, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The partition applied events up to 00:07 and has more to apply: with 30 s grace, only the
    # window ending 00:05 is closed, whatever the clock says.
    monkeypatch.setenv("CDCR_RECONCILE__CONFIRM_WAIT_S", "0.5")
    applied(target_engine, case, T0 + timedelta(minutes=7), next_offset=10)
    plant(source_engine, target_engine, case)
    asked: list[list[tuple[str, int]]] = []

    def log_ends(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        asked.append(tps)
        return {tp: 50 for tp in tps}

    reports = command.reconcile(
        Settings.model_validate(yaml.safe_load(case.config.read_text())),
        tables=[case.table],
        now_getter=lambda: T0 + timedelta(hours=5),
        log_ends=log_ends,
    )
    assert asked and all(a == [(case.topic, 0)] for a in asked)
    [report] = reports
    assert [w.window.end for w in report.windows] == [T0 + timedelta(minutes=5)]
    assert report.reconciled_through == T0 + timedelta(minutes=5)
    # Key 5 differs, but the group has not applied past the source read (it is behind and not at
    # its log end), so the difference may be in flight: deferred, not reported, not repaired.
    assert {d.key for w in report.windows for d in w.differences} == set()
    assert report.windows[0].deferred == (((5,), "not_caught_up"),)
    with target_engine.connect() as conn:
        corrupt = conn.execute(sa.text(f"SELECT v FROM {case.table} WHERE id = 120")).scalar()
        still_missing = conn.execute(sa.text(f"SELECT count(*) FROM {case.table} WHERE id = 5"))
        assert still_missing.scalar() == 0
        deferred = conn.execute(
            sa.text("SELECT key, reason FROM cdcr.deferred_keys WHERE table_name = :t"),
            {"t": case.table},
        ).all()
    assert corrupt == "corrupt"  # window 1 is open: untouched
    assert deferred == [("[5]", "not_caught_up")]

    # Idle at its log end: the partition no longer holds closure back, and the deferred key is
    # re-checked, confirmed and repaired.
    reports = command.reconcile(
        Settings.model_validate(yaml.safe_load(case.config.read_text())),
        tables=[case.table],
        now_getter=lambda: T0 + timedelta(hours=5),
        log_ends=lambda tps: {tp: 10 for tp in tps},
    )
    assert reports[0].reconciled_through == T0 + timedelta(hours=4, minutes=55)
    found = {d.key for w in reports[0].windows for d in w.differences}
    assert (5,) in found
    with target_engine.connect() as conn:
        assert (
            conn.execute(sa.text(f"SELECT count(*) FROM {case.table} WHERE id = 5")).scalar() == 1
        )
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM cdcr.deferred_keys WHERE table_name = :t"),
                {"t": case.table},
            ).scalar()
            == 0
        )


def test_two_reconcilers_never_skip_nor_go_back(
    source_engine: sa.Engine, target_engine: sa.Engine, case: Case
) -> None:
    applied(target_engine, case, datetime.now(UTC) + timedelta(hours=1))
    plant(source_engine, target_engine, case)
    settings = Settings.model_validate(yaml.safe_load(case.config.read_text()))
    seen: list[datetime | None] = []
    stop = threading.Event()

    def watch() -> None:
        with target_engine.connect() as conn:
            while not stop.is_set():
                seen.append(
                    conn.execute(
                        sa.text(
                            "SELECT reconciled_through FROM cdcr.watermarks WHERE table_name = :t"
                        ),
                        {"t": case.table},
                    ).scalar()
                )
                conn.rollback()
                time.sleep(0.002)

    errors: list[BaseException] = []

    def reconciler() -> None:
        try:
            command.reconcile(settings, tables=[case.table], log_ends=lambda tps: {})
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=reconciler) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    watcher.join()
    assert not errors
    values = [v for v in seen if v is not None]
    assert values == sorted(values)  # never backwards
    grid = {T0 + timedelta(minutes=5 * i) for i in range(1, 7)}
    assert all(v in grid or v > T0 + timedelta(minutes=30) for v in values)
    with target_engine.connect() as conn:
        ends = {
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT window_end FROM cdcr.reconcile_runs WHERE table_name = :t "
                    "AND status IN ('clean', 'repaired', 'open_extras')"
                ),
                {"t": case.table},
            )
        }
        final = conn.execute(
            sa.text("SELECT reconciled_through FROM cdcr.watermarks WHERE table_name = :t"),
            {"t": case.table},
        ).scalar()
    assert grid <= ends  # every window verified by someone: none skipped
    assert final is not None and final > T0 + timedelta(minutes=30)
    assert final == max(values)
    assert [r for r in snapshot(target_engine, case.table) if r[0] != 9001] == snapshot(
        source_engine, case.table
    )


def test_a_key_deferred_past_the_bound_becomes_a_discrepancy(
    source_engine: sa.Engine, target_engine: sa.Engine, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The group stays behind the source read (not at its log end, event time in the past), so
    # key 5's difference can never be confirmed by catch-up: it is deferred, re-checked on the
    # next pass even though no new window closed, and once deferred longer than the bound (0 s
    # here) it is reported and repaired as a real discrepancy.
    monkeypatch.setenv("CDCR_RECONCILE__CONFIRM_WAIT_S", "0.3")
    monkeypatch.setenv("CDCR_RECONCILE__DEFERRED_BOUND_S", "0")
    applied(target_engine, case, T0 + timedelta(minutes=7), next_offset=10)
    run(target_engine, f"DELETE FROM {case.table} WHERE id = 5")
    settings = Settings.model_validate(yaml.safe_load(case.config.read_text()))
    behind = lambda tps: {tp: 50 for tp in tps}  # noqa: E731
    [first] = command.reconcile(
        settings, tables=[case.table], log_ends=behind, now_getter=lambda: T0 + timedelta(hours=5)
    )
    assert [w.differences for w in first.windows] == [()]
    assert first.windows[0].deferred == (((5,), "not_caught_up"),)
    [second] = command.reconcile(
        settings, tables=[case.table], log_ends=behind, now_getter=lambda: T0 + timedelta(hours=5)
    )
    [recheck] = second.windows  # no new window: the deferred key alone
    assert recheck.checks[0] == {"check": "recheck_deferred", "keys": 1}
    assert [(d.kind.value, d.key) for d in recheck.differences] == [("missing", (5,))]
    assert recheck.counts["promoted"] == 1 and recheck.status == "repaired"
    assert second.reconciled_through == T0 + timedelta(minutes=5)  # not moved by a re-check
    with target_engine.connect() as conn:
        assert (
            conn.execute(sa.text(f"SELECT count(*) FROM {case.table} WHERE id = 5")).scalar() == 1
        )
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM cdcr.deferred_keys WHERE table_name = :t"),
                {"t": case.table},
            ).scalar()
            == 0
        )
