"""Re-verifying history (``cdcr reconcile --reverify``, the background budget) and the gaps
with priorities of ``cdcr status``, against real PostgreSQL (the ``case`` fixture: 600 rows,
one every 3 s from 2026-01-01 00:00Z, six 5-minute windows)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdc_reconciler.config import Settings
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.reconcile import command, history
from cdc_reconciler.reconcile import status as reconcile_status
from cdc_reconciler.reconcile.metrics import ReconcileMetrics
from cdc_reconciler.reconcile.segments import Window

from .helpers import T0, Case, applied, cli, run

pytestmark = pytest.mark.services

M = timedelta(minutes=1)


def settings_of(c: Case) -> Settings:
    return Settings.model_validate(yaml.safe_load(c.config.read_text()))


def idle(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    return {tp: 10 for tp in tps}  # every partition at its log end: nothing in flight


def table_rows(engine: sa.Engine, table: str) -> list[tuple[Any, ...]]:
    with engine.connect() as c:
        return [
            tuple(r)
            for r in c.execute(
                sa.text(f"SELECT id, v, amount, updated_at FROM {table} ORDER BY id")
            )
        ]


def mark_row(engine: sa.Engine, table: str) -> tuple[Any, ...]:
    with engine.connect() as c:
        return tuple(
            c.execute(
                sa.text(
                    "SELECT reconciled_through, state, updated_at FROM cdcr.watermarks "
                    "WHERE table_name = :t"
                ),
                {"t": table},
            ).one()
        )


def runs(engine: sa.Engine, table: str) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [
            dict(r)
            for r in c.execute(
                sa.text(
                    "SELECT window_start, window_end, status, counts FROM cdcr.reconcile_runs "
                    # One pass's runs share `started` (the injected clock): order ties by
                    # window, or two identical lists may compare unequal (a flaky CI failure).
                    "WHERE table_name = :t "
                    "ORDER BY started, window_start NULLS FIRST, window_end, status"
                ),
                {"t": table},
            ).mappings()
        ]


def verified_once(target: sa.Engine, c: Case, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Reconcile everything closed at 01:00 (idle partitions: closed through 00:59:30)."""
    monkeypatch.setenv("CDCR_RECONCILE__REVERIFY_HORIZON_S", str(3 * 3600))
    applied(target, c, T0 + 30 * M)
    s = settings_of(c)
    [rep] = command.reconcile(s, tables=[c.table], now_getter=lambda: T0 + 60 * M, log_ends=idle)
    assert rep.reconciled_through == T0 + 55 * M and rep.found_in_history == 0
    return s


def damage(target: sa.Engine, c: Case) -> None:
    run(target, f"UPDATE {c.table} SET v = 'corrupt' WHERE id = 120")  # changed 00:05:57
    run(target, f"DELETE FROM {c.table} WHERE id = 250")  # changed 00:12:27


def samples(m: ReconcileMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(m.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_reverify_finds_damage_after_verification_without_moving_the_watermark(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    case: Case,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = verified_once(target_engine, case, monkeypatch)
    damage(target_engine, case)
    damaged = table_rows(target_engine, case.table)
    mark = mark_row(target_engine, case.table)
    before_runs = runs(target_engine, case.table)
    later = T0 + 2 * 60 * M

    # --dry-run: found and reported, nothing written at all.
    [dry] = command.reconcile(
        s, tables=[case.table], now_getter=lambda: later, log_ends=idle, reverify=True, dry_run=True
    )
    assert dry.reverify and dry.found_in_history == 2
    assert {(d.kind.value, d.key) for w in dry.windows for d in w.differences} == {
        ("mismatched", (120,)),
        ("missing", (250,)),
    }
    assert table_rows(target_engine, case.table) == damaged
    assert runs(target_engine, case.table) == before_runs
    assert mark_row(target_engine, case.table) == mark

    # --since bounds the walk: the last 100 minutes of 02:00 start at 00:20, after the damage.
    [bounded] = command.reconcile(
        s,
        tables=[case.table],
        now_getter=lambda: later,
        log_ends=idle,
        reverify=True,
        since=timedelta(minutes=100),
    )
    assert bounded.windows and bounded.found_in_history == 0
    assert min(w.window.start for w in bounded.windows) == T0 + 20 * M  # type: ignore[type-var]
    assert table_rows(target_engine, case.table) == damaged
    # status: the windows before 00:20 were verified last by the first pass, at 01:00.
    st = reconcile_status.status(s, now_getter=lambda: later, log_ends=idle)
    [v] = [x for x in st["verification"] if x["table"] == case.table]
    assert v["oldest_verified_at"] == (T0 + 60 * M).isoformat()
    assert v["oldest_verified_age_s"] == 3600 and v["window"]["start"] == T0.isoformat()
    assert v["windows"] == 11  # 00:00 .. 00:55, nothing before the first change

    # The real pass: found in history, repaired through the same path, watermark untouched.
    m = ReconcileMetrics()
    [rep] = command.reconcile(
        s, tables=[case.table], now_getter=lambda: later, log_ends=idle, reverify=True, metrics=m
    )
    assert rep.found_in_history == 2
    assert {w.status for w in rep.windows} <= {"clean", "repaired"}
    assert any(w.status == "repaired" for w in rep.windows)
    assert table_rows(target_engine, case.table) == table_rows(source_engine, case.table)
    assert mark_row(target_engine, case.table) == mark  # reconciled_through, state, updated_at
    new = runs(target_engine, case.table)[len(before_runs) :]
    assert new and all(r["counts"]["reverify"] is True for r in new)
    assert sum(r["counts"]["found_in_history"] for r in new) == 2 + 0  # + the bounded pass
    with target_engine.connect() as c:
        acts: dict[str, str] = dict(
            c.execute(
                sa.text("SELECT key, action FROM cdcr.discrepancies WHERE table_name = :t"),
                {"t": case.table},
            ).all()
        )
    assert acts == {"[120]": "upserted", "[250]": "upserted"}
    got = samples(m)

    def kind(k: str) -> tuple[tuple[str, str], ...]:
        return (("kind", k), ("table", case.table))

    assert got[("cdcr_reconcile_found_in_history_total", kind("missing"))] == 1
    assert got[("cdcr_reconcile_found_in_history_total", kind("mismatched"))] == 1
    # Counted separately: the new-window counters saw nothing.
    assert got[("cdcr_reconcile_discrepancies_found_total", kind("missing"))] == 0
    assert got[("cdcr_reconcile_discrepancies_found_total", kind("mismatched"))] == 0

    # status: every window of history (00:00 .. 00:55) was verified again at 02:00.
    st = reconcile_status.status(s, now_getter=lambda: later, log_ends=idle)
    [v] = [x for x in st["verification"] if x["table"] == case.table]
    assert v["oldest_verified_at"] == later.isoformat() and v["oldest_verified_age_s"] == 0
    assert v["windows"] == 11 and v["due"] == 0


def test_sample_reverifies_n_random_windows(
    target_engine: sa.Engine, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = verified_once(target_engine, case, monkeypatch)
    before = len(runs(target_engine, case.table))
    later = T0 + 2 * 60 * M
    [rep] = command.reconcile(
        s,
        tables=[case.table],
        now_getter=lambda: later,
        log_ends=idle,
        reverify=True,
        sample_windows=2,
        seed=7,
    )
    covered = 0
    for w in rep.windows:
        assert w.window.start is not None  # re-verified windows are bounded
        covered += len(history.grid_windows(w.window.start, w.window.end, 5 * M))
    assert covered == 2 and len(runs(target_engine, case.table)) == before + len(rep.windows)
    again = command.reconcile(
        s,
        tables=[case.table],
        now_getter=lambda: later,
        log_ends=idle,
        reverify=True,
        sample_windows=2,
        seed=7,
        dry_run=True,
    )
    assert [w.window for w in again[0].windows] == [w.window for w in rep.windows]  # repeatable


def test_background_budget_rechecks_oldest_verified_first(
    target_engine: sa.Engine, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDCR_RECONCILE__REVERIFY_EVERY_S", "3600")
    monkeypatch.setenv("CDCR_RECONCILE__REVERIFY_WINDOWS_PER_PASS", "3")
    s = verified_once(target_engine, case, monkeypatch)
    mark = mark_row(target_engine, case.table)
    # Two hours later every window is due; a continuous pass re-checks three, then stops.
    stops = iter([True])
    reports = command.reconcile(
        s,
        tables=[case.table],
        now_getter=lambda: T0 + 3 * 60 * M,
        log_ends=idle,
        once=False,
        should_stop=lambda: next(stops),
    )
    hist = [r for r in reports if r.reverify]
    assert len(hist) == 1
    windows = [w.window for w in hist[0].windows]
    covered = 0
    for w in windows:
        assert w.start is not None
        covered += len(history.grid_windows(w.start, w.end, 5 * M))

    # The three windows verified longest ago (at 01:00), oldest first; the watermark moved only
    # by the incremental pass over the newly closed quiet stretch, 00:55 -> 02:55.
    assert covered == 3 and windows == [Window(T0, T0 + 15 * M)]
    assert mark[0] == T0 + 55 * M
    assert mark_row(target_engine, case.table)[0] == T0 + 175 * M
    # The next pass takes the windows verified longest ago, not the ones it just checked.
    stops = iter([True])
    reports = command.reconcile(
        s,
        tables=[case.table],
        now_getter=lambda: T0 + 3 * 60 * M + M,
        log_ends=idle,
        once=False,
        should_stop=lambda: next(stops),
    )
    second = [w.window for r in reports if r.reverify for w in r.windows]
    assert second and not {(w.start, w.end) for w in second} & {(w.start, w.end) for w in windows}


def test_status_orders_failed_and_unverified_windows_by_priority(
    target_engine: sa.Engine, case: Case
) -> None:
    applied(target_engine, case, T0 + 22 * M)  # lagging (end 99): closed through 00:21:30
    with target_engine.begin() as c:
        c.execute(
            sa.text("INSERT INTO cdcr.watermarks (table_name, reconciled_through) VALUES (:t, :w)"),
            {"t": case.table, "w": T0 + 5 * M},
        )
        c.execute(
            sa.text(
                "INSERT INTO cdcr.reconcile_runs (run_id, table_name, window_start, window_end, "
                "started, finished, status, counts) VALUES (gen_random_uuid(), :t, :s, :e, :s, :e, "
                "'unresolved', CAST(:c AS jsonb))"
            ),
            {
                "t": case.table,
                "s": T0 + 5 * M,
                "e": T0 + 10 * M,
                "c": json.dumps({"missing": 2, "mismatched": 1}),
            },
        )
    now = T0 + 60 * M
    st = reconcile_status.status(
        settings_of(case), now_getter=lambda: now, log_ends=lambda tps: {tp: 99 for tp in tps}
    )
    mine = [p for p in st["priorities"] if p["table"] == case.table]
    # The unresolved window first, then the unverified ones, older first (100 rows each).
    assert [(p["status"], p["window_start"]) for p in mine] == [
        ("unresolved", (T0 + 5 * M).isoformat()),
        ("unverified", (T0 + 10 * M).isoformat()),
        ("unverified", (T0 + 15 * M).isoformat()),
    ]
    assert [p["rows_changed"] for p in mine] == [100, 100, 100]
    assert mine[0]["differences"] == 3
    assert mine[0]["priority"] > mine[1]["priority"] > mine[2]["priority"]
    assert mine[0]["next"].startswith(
        f"cdcr review list --table {case.table}; then cdcr "
        f"reconcile --table {case.table} --once --from "
    )
    assert mine[1]["next"] == f"cdcr reconcile --table {case.table} --once"

    # Once a later run verifies the failed window, it leaves the list.
    with target_engine.begin() as c:
        c.execute(
            sa.text(
                "INSERT INTO cdcr.reconcile_runs (run_id, table_name, window_start, window_end, "
                "started, finished, status) VALUES (gen_random_uuid(), :t, :s, :e, :f, :f, 'repaired')"
            ),
            {"t": case.table, "s": T0 + 5 * M, "e": T0 + 10 * M, "f": T0 + 11 * M},
        )
    st = reconcile_status.status(
        settings_of(case), now_getter=lambda: now, log_ends=lambda tps: {tp: 99 for tp in tps}
    )
    assert [p["status"] for p in st["priorities"] if p["table"] == case.table] == [
        "unverified",
        "unverified",
        "unverified",
    ]


def test_cli_reverify_and_status_for_a_user(
    target_engine: sa.Engine, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified_once(target_engine, case, monkeypatch)
    mark = mark_row(target_engine, case.table)
    cfg = ("--config", str(case.config))
    code, out = cli(
        "reconcile", "--reverify", "--since", "1000d", "--table", case.table, "--json", *cfg
    )
    assert code == 0, out
    data = json.loads(out)
    assert data["reverify"] is True and data["found_in_history"] == 0
    [t] = data["tables"]
    assert t["reverify"] and t["windows"] and {w["status"] for w in t["windows"]} == {"clean"}
    assert mark_row(target_engine, case.table) == mark
    code, out = cli("reconcile", "--reverify", "--since", "1000d", "--table", case.table, *cfg)
    assert code == 0 and "0 difference(s) found in history; watermark stays" in out, out

    for args, said in (
        (("--since", "7d"), "--since and --full apply to --reverify only"),
        (("--reverify", "--full", "--sample", "2"), "alternatives"),
        (("--reverify", "--since", "soon"), "not a duration"),
        (("--reverify", "--since", "1d", "--from", "2026-01-01T00:00:00Z"), "alternatives"),
    ):
        code, out = cli("reconcile", "--table", case.table, *args, *cfg)
        assert code == 1 and "FAILED: " in out and said in out, out
        assert "Traceback" not in out

    monkeypatch.setenv("CDCR_RECONCILE__REVERIFY_HORIZON_S", str(400 * 86400))
    code, out = cli("status", *cfg)
    assert code == 0, out
    lines = out.splitlines()
    at = lines.index(case.table)
    assert lines[at + 1].startswith("  verified through 2026-01-01 00:55:00Z")
    assert lines[at + 2].startswith("  oldest verification ") and " ago (window from " in out
    # A window of history that stayed unresolved (started after every verification of it).
    with target_engine.begin() as c:
        c.execute(
            sa.text(
                "INSERT INTO cdcr.reconcile_runs (run_id, table_name, window_start, window_end, "
                "started, finished, status, counts) VALUES (gen_random_uuid(), :t, :s, :e, "
                "clock_timestamp(), clock_timestamp(), 'unresolved', '{\"missing\": 1}')"
            ),
            {"t": case.table, "s": T0 + 5 * M, "e": T0 + 10 * M},
        )
    code, out = cli("status", "--json", *cfg)
    st = json.loads(out)
    assert {"verification", "priorities", "priorities_total"} <= st.keys()
    [p] = [x for x in st["priorities"] if x["table"] == case.table]
    assert p["status"] == "unresolved" and p["differences"] == 1 and p["rows_changed"] == 100
    assert p["next"] == (
        f"cdcr review list --table {case.table}; then cdcr reconcile --table "
        f"{case.table} --reverify --from {(T0 + 5 * M).isoformat()} "
        f"--to {(T0 + 10 * M).isoformat()}"
    )
    code, out = cli("status", "--wide", *cfg)
    assert code == 0 and "to verify next" in out, out
    code, out = cli("status", *cfg)
    assert code == 0 and "to verify next (1 window," in out and "unresolved" in out, out


def test_durations_and_window_choice() -> None:
    assert history.parse_duration("1d12h") == timedelta(hours=36)
    assert history.parse_duration("90s") == timedelta(seconds=90)
    for bad in ("", "7", "d", "1x", "0m", "-3h"):
        with pytest.raises(CdcrError):
            history.parse_duration(bad)
    w = [Window(T0 + i * 5 * M, T0 + (i + 1) * 5 * M) for i in range(4)]
    at = [T0 + 3 * 60 * M, None, T0 + 60 * M, T0 + 2 * 60 * M]
    past = [history.Verified(x, t) for x, t in zip(w, at, strict=True)]
    # Never recorded first, then oldest verification; adjacent picks merge into one window.
    assert history.choose(past, budget=2) == [Window(w[1].start, w[2].end)]
    assert history.choose(past, due_before=T0 + 90 * M) == [Window(w[1].start, w[2].end)]
    assert history.choose(past) == [Window(w[0].start, w[3].end)]
    assert history.merge(w, max_span=3) == [Window(w[0].start, w[2].end), w[3]]
    assert history.priority("unresolved", 3600, 100) > history.priority("unverified", 3600, 100)
    assert history.priority("unverified", 7200, 10) > history.priority("unverified", 3600, 10)
    assert history.priority("unverified", 3600, 1000) > history.priority("unverified", 3600, 10)


def test_reverify_defers_a_change_in_flight_instead_of_reporting_it(
    target_engine: sa.Engine,
    source_engine: sa.Engine,
    case: Case,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = verified_once(target_engine, case, monkeypatch)
    monkeypatch.setenv("CDCR_RECONCILE__CONFIRM_WAIT_S", "0")
    s = settings_of(case)
    # A source change the consumer has not applied yet (its partition is behind its log end),
    # inside a verified window (the change-time column kept, as a created_at column would be).
    run(source_engine, f"UPDATE {case.table} SET v = 'new' WHERE id = 130")
    target_before = table_rows(target_engine, case.table)
    [rep] = command.reconcile(
        s,
        tables=[case.table],
        now_getter=lambda: T0 + 2 * 60 * M,
        log_ends=lambda tps: {tp: 99 for tp in tps},
        reverify=True,
    )
    assert rep.found_in_history == 0
    assert [(k, why) for w in rep.windows for k, why in w.deferred] == [((130,), "not_caught_up")]
    assert table_rows(target_engine, case.table) == target_before
    with target_engine.connect() as c:
        assert (
            c.execute(
                sa.text("SELECT count(*) FROM cdcr.discrepancies WHERE table_name = :t"),
                {"t": case.table},
            ).scalar()
            == 0
        )


def test_reverify_a_table_without_change_time_compares_it_whole(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    case: Case,
) -> None:
    # The same table, configured without its change-time column: one window, the whole table.
    case.config.write_text(yaml.safe_dump({"tables": {case.table: {}}}))
    applied(target_engine, case, T0 + 30 * M)
    s = settings_of(case)
    [rep] = command.reconcile(s, tables=[case.table], now_getter=lambda: T0 + 60 * M, log_ends=idle)
    assert rep.reconciled_through == T0 + 55 * M
    mark = mark_row(target_engine, case.table)
    run(target_engine, f"DELETE FROM {case.table} WHERE id = 599")
    [rep] = command.reconcile(
        s,
        tables=[case.table],
        now_getter=lambda: T0 + 2 * 60 * M,
        log_ends=idle,
        reverify=True,
        since=timedelta(minutes=5),
    )
    assert [(w.window.start, w.window.end) for w in rep.windows] == [(None, T0 + 55 * M)]
    assert rep.found_in_history == 1 and rep.windows[0].status == "repaired"
    assert table_rows(target_engine, case.table) == table_rows(source_engine, case.table)
    assert mark_row(target_engine, case.table) == mark
