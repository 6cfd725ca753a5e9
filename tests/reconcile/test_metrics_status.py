"""Reconcile metrics (parsed with prometheus-client's text parser) and the gaps of
``cdcr status``, against real PostgreSQL."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdc_reconciler.config import Settings
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.reconcile import command
from cdc_reconciler.reconcile import status as reconcile_status
from cdc_reconciler.reconcile.metrics import ReconcileMetrics, serve

from .helpers import T0, Case, applied, cli, run


def samples(metrics: ReconcileMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def settings_of(c: Case) -> Settings:
    return Settings.model_validate(yaml.safe_load(c.config.read_text()))


def lagging_then_idle() -> Callable[[list[tuple[str, int]]], dict[tuple[str, int], int]]:
    """Log ends for a group that is behind when closure is computed (the first lookup: end 99,
    the group at 10) and has reached its log end by the time candidates are confirmed (end 10):
    the differences found are then confirmed, not deferred as in flight."""
    calls: list[object] = []

    def ends(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        calls.append(tps)
        return {tp: 99 if len(calls) == 1 else 10 for tp in tps}

    return ends


def plant(source: sa.Engine, target: sa.Engine, c: Case) -> None:
    t = c.table
    run(target, f"DELETE FROM {t} WHERE id IN (5, 250)")
    run(target, f"UPDATE {t} SET v = 'corrupt' WHERE id = 120")
    run(
        target,
        f"INSERT INTO {t} (id, v, amount, updated_at) VALUES "
        "(9001, 'ghost', 1, '2026-01-01 00:12Z')",
    )


def test_metrics_after_one_pass(
    source_engine: sa.Engine, target_engine: sa.Engine, case: Case
) -> None:
    # Events applied up to 00:22 and more to come: closed through 00:21:30, grid 00:20.
    applied(target_engine, case, T0 + timedelta(minutes=22))
    plant(source_engine, target_engine, case)
    m = ReconcileMetrics()
    now = T0 + timedelta(hours=1)
    [report] = command.reconcile(
        settings_of(case),
        tables=[case.table],
        now_getter=lambda: now,
        log_ends=lagging_then_idle(),
        metrics=m,
    )
    assert report.reconciled_through == T0 + timedelta(minutes=20)
    got = samples(m)
    t = (("table", case.table),)

    def kind(k: str) -> tuple[tuple[str, str], ...]:
        return (("kind", k), ("table", case.table))

    assert got[("cdcr_reconcile_discrepancies_found_total", kind("missing"))] == 2
    assert got[("cdcr_reconcile_discrepancies_found_total", kind("mismatched"))] == 1
    assert got[("cdcr_reconcile_discrepancies_found_total", kind("extra"))] == 1
    assert got[("cdcr_reconcile_repaired_total", t)] == 3
    assert got[("cdcr_reconcile_discrepancies_open", t)] == 1  # the extra row, for review
    assert got[("cdcr_reconcile_review_open", kind("extra"))] == 1
    assert got[("cdcr_reconcile_review_open", kind("missing"))] == 0
    assert got[("cdcr_reconcile_review_oldest_age_seconds", t)] >= 0
    assert got[("cdcr_reconcile_deferred_total", t)] == 0  # nothing was in flight
    assert got[("cdcr_reconcile_windows_behind", t)] == 0
    assert (
        got[("cdcr_reconcile_last_verified_timestamp_seconds", t)]
        == (T0 + timedelta(minutes=20)).timestamp()
    )

    # Later the consumer moves on to 00:47: five more windows are closed and behind.
    applied(target_engine, case, T0 + timedelta(minutes=47))
    status = reconcile_status.status(
        settings_of(case), now_getter=lambda: now, log_ends=lambda tps: {tp: 99 for tp in tps}
    )
    [gap] = [g for g in status["gaps"] if g["table"] == case.table]
    assert gap["windows_behind"] == 5 and status["kafka"] == {"log_ends": "ok", "error": None}
    assert [w["end"] for w in gap["windows"]] == [
        (T0 + timedelta(minutes=m)).isoformat() for m in (45, 40, 35, 30, 25)
    ]

    # A dry pass counts what it finds but repairs nothing; the gauges follow the watermark.
    run(target_engine, f"UPDATE {case.table} SET v = 'again' WHERE id = 530")  # window 00:25
    command.reconcile(
        settings_of(case),
        tables=[case.table],
        now_getter=lambda: now,
        log_ends=lagging_then_idle(),
        metrics=m,
        dry_run=True,
    )
    got = samples(m)
    assert got[("cdcr_reconcile_discrepancies_found_total", kind("mismatched"))] == 2
    assert got[("cdcr_reconcile_repaired_total", t)] == 3
    assert got[("cdcr_reconcile_windows_behind", t)] == 5


def test_metrics_endpoint(case: Case) -> None:
    m = ReconcileMetrics()
    m.windows_behind.labels(case.table).set(4)
    server = serve(m, "127.0.0.1", 0, lambda: (False, "db down"))
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:  # noqa: S310
            text = r.read().decode()
        assert f'cdcr_reconcile_windows_behind{{table="{case.table}"}} 4.0' in text
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)  # noqa: S310
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and exc.read() == b"db down"
    finally:
        server.shutdown()
        server.server_close()


def test_status_gaps_newest_first_and_kafka_unavailable(
    target_engine: sa.Engine, case: Case
) -> None:
    applied(target_engine, case, T0 + timedelta(minutes=17), next_offset=10)
    with target_engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO cdcr.watermarks (table_name, reconciled_through) VALUES (:t, :w)"),
            {"t": case.table, "w": T0 + timedelta(minutes=5)},
        )
    now = T0 + timedelta(hours=1)
    asked: list[list[tuple[str, int]]] = []

    def behind(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        asked.append(tps)
        return {tp: 50 for tp in tps}

    st = reconcile_status.status(settings_of(case), now_getter=lambda: now, log_ends=behind)
    assert asked == [[(case.topic, 0)]]
    [gap] = [g for g in st["gaps"] if g["table"] == case.table]
    # Applied through 00:17 with 30 s grace: closed through 00:15; watermark 00:05.
    assert gap["closed_through"] == (T0 + timedelta(minutes=15)).isoformat()
    assert gap["windows_behind"] == 2 and gap["behind_s"] == 600
    assert gap["windows"] == [
        {
            "start": (T0 + timedelta(minutes=10)).isoformat(),
            "end": (T0 + timedelta(minutes=15)).isoformat(),
        },
        {
            "start": (T0 + timedelta(minutes=5)).isoformat(),
            "end": (T0 + timedelta(minutes=10)).isoformat(),
        },
    ]

    # Idle at its log end: closure follows the clock.
    st = reconcile_status.status(
        settings_of(case), now_getter=lambda: now, log_ends=lambda tps: {tp: 10 for tp in tps}
    )
    [gap] = [g for g in st["gaps"] if g["table"] == case.table]
    assert gap["windows_behind"] == 10  # 00:05 .. 00:55

    # Kafka unreachable: said so, asked once, and closure is the conservative one.
    calls: list[int] = []

    def down(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        calls.append(1)
        raise CdcrError("log-end offsets: no answer within 7s (is the broker reachable?)")

    st = reconcile_status.status(settings_of(case), now_getter=lambda: now, log_ends=down)
    assert st["kafka"]["log_ends"] == "unavailable" and "no answer" in st["kafka"]["error"]
    assert len(calls) == 1
    [gap] = [g for g in st["gaps"] if g["table"] == case.table]
    assert gap["windows_behind"] == 2
    # The same report, typed: the probe's outcome is an enum, the gaps are dataclasses.
    assert isinstance(st, reconcile_status.StatusReport)
    assert st.kafka.log_ends is reconcile_status.LogEndsState.UNAVAILABLE and st.kafka_unavailable
    [typed] = [g for g in st.gaps if g.table == case.table]
    assert isinstance(typed, reconcile_status.Gap) and typed.windows_behind == 2
    assert st.as_dict()["gaps"] == [g.as_dict() for g in st.gaps]
    assert set(st.as_dict()) == {
        "now", "kafka", "watermarks", "gaps", "verification", "priorities",
        "priorities_total", "applied_offsets", "recent_runs", "integrity", "dead_letters",
        "blocked", "review", "open_discrepancies",
    }  # fmt: skip


def test_status_cli_json(target_engine: sa.Engine, case: Case) -> None:
    # Event time ahead of the clock: no partition lags, so Kafka is not asked at all.
    applied(target_engine, case, datetime.now(UTC) + timedelta(hours=1))
    code, out = cli("status", "--json", "--config", str(case.config))
    assert code == 0, out
    st = json.loads(out)
    assert st["kafka"] == {"log_ends": "not_needed", "error": None}
    [gap] = [g for g in st["gaps"] if g["table"] == case.table]  # configured, never reconciled
    assert gap["reconciled_through"] is None and gap["windows_behind"] is None
    assert gap["windows"][0]["start"] is None
    code, out = cli("status", "--wide", "--config", str(case.config))
    assert code == 0 and "gaps: windows behind" in out
    code, out = cli("status", "--config", str(case.config))  # the compact summary
    lines = out.splitlines()
    assert lines[lines.index(case.table) + 1].startswith("  verified through never · ")
