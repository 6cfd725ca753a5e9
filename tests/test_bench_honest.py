"""bench/honest.py: the quiet-machine gate, median and spread over repeated runs, the busy loop.
No services needed (the bench itself is not a test; these are its rules)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench.honest import BusyLoop, Gate, repeat, spread


def loads(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> list[float]:
    seq = iter(values)
    last = [values[-1]]

    def getloadavg() -> tuple[float, float, float]:
        last[0] = next(seq, last[0])
        return (last[0], 0.0, 0.0)

    monkeypatch.setattr(os, "getloadavg", getloadavg)  # the module honest.py reads it from
    monkeypatch.setattr(time, "sleep", lambda s: None)
    return values


def test_spread_is_median_min_max() -> None:
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([]) == {"median": None, "min": None, "max": None, "n": 0}


def test_gate_waits_for_the_load_to_fall(monkeypatch: pytest.MonkeyPatch) -> None:
    loads(monkeypatch, [2.0, 1.2, 0.8, 0.4])
    g = Gate(wait_s=60).wait("x")
    assert g["loadavg_1m"] == 0.4
    assert g["noisy"] is False


def test_gate_marks_noisy_after_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    loads(monkeypatch, [0.9])
    g = Gate(wait_s=0).wait("x")
    assert g["noisy"] is True
    assert g["loadavg_1m"] == 0.9


def test_allow_noisy_does_not_wait_but_still_marks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = loads(monkeypatch, [3.0, 0.1])
    g = Gate(wait_s=600, allow_noisy=True).wait("x")
    assert g["noisy"] is True and g["loadavg_1m"] == calls[0]
    loads(monkeypatch, [0.3])
    assert Gate(allow_noisy=True).wait("y", extra_load=1.0)["noisy"] is False


def test_repeat_summarises_completed_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    loads(monkeypatch, [0.1])
    rates = [100, 300, None, 200]

    def once(i: int) -> dict[str, Any]:
        r: dict[str, Any] = {"check": {"correct": True}, "cpu_s": float(i)}
        if rates[i] is None:
            r["error"] = "failed"
        else:
            r["events_per_s"] = rates[i]
        return r

    rep = repeat("c", 4, Gate(), once)
    assert rep["summary"]["events_per_s"] == {"median": 200, "min": 100, "max": 300, "n": 3}
    assert rep["failed_runs"] == 1
    assert rep["median_run"]["events_per_s"] == 200
    assert [r["run"] for r in rep["runs"]] == [1, 2, 3, 4]
    assert rep["noisy"] is False and rep["correct"] is True


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_loop_burns_cpu_and_is_stopped_by_pid() -> None:
    with BusyLoop() as bl:
        assert bl.proc is not None
        t0 = time.monotonic()
        while _cpu_s(bl.proc.pid) < 0.1 and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert _cpu_s(bl.proc.pid) >= 0.1  # it spins (even on a shared, busy machine)
    assert bl.proc.poll() is not None  # stopped and reaped on exit


def _reconcile_result() -> dict[str, Any]:
    def side(secs: list[float]) -> dict[str, Any]:
        return {
            "seconds": sorted(secs)[1],
            "spread": spread(secs),
            "exact": True,
            "runs": [{"seconds": s, "load1": 0.2 + i / 10} for i, s in enumerate(secs)],
        }

    case = {
        "reladiff": side([10.0, 11.0, 12.0]),
        "cdcr": side([2.0, 2.5, 3.0]),
        "cdcr_over_reladiff": 0.227,
        "ratio_spread": {"median": 0.23, "min": 0.2, "max": 0.25},
        "cdcr_over_scan_ceiling": 1.25,
    }
    return {
        "rows": 20_000,
        "repeats": 3,
        "build_s": 1.0,
        "gate": {"loadavg_1m": 0.3, "noisy": False},
        "reladiff_command": "reladiff postgresql://u:***@h:1/bench_rc_src public.bench_rc "
        "postgresql://u:***@h:1/bench_rc public.bench_rc -k id",
        "cdcr_command": "python -m bench.reconcile_cmp verify SRC TGT public.bench_rc",
        "ceiling": {
            "cdcr_hash": {
                "one_side": {"median": 1.5, "min": 1.4, "max": 1.6},
                "both_sides": {"median": 2.0, "min": 1.9, "max": 2.1},
            },
            "hashtext_row_text": {
                "one_side": {"median": 1.0, "min": 0.9, "max": 1.1},
                "both_sides": {"median": 1.2, "min": 1.1, "max": 1.3},
            },
        },
        "in_sync": case,
        "diff100": case,
    }


def test_report_reconcile_shows_spread_load_and_scan_ceiling() -> None:
    from bench.report import reconcile_section

    lines: list[str] = []
    reconcile_section(lines.append, _reconcile_result())
    text = "\n".join(lines)
    assert "`bench_rc_src.public.bench_rc` vs `bench_rc.public.bench_rc`" in text
    assert "source.public.bench_rc" not in text
    in_sync = next(ln for ln in lines if ln.startswith("| in sync |"))
    assert "11.00 (10.00–12.00)" in in_sync  # reladiff median (min–max)
    assert "2.50 (2.00–3.00)" in in_sync  # cdcr
    assert "0.23 (runs 0.20–0.25)" in in_sync  # ratio with its per-run spread
    assert "1.25×" in in_sync  # over the scan ceiling
    assert "0.20, 0.30, 0.40; 0.20, 0.30, 0.40" in in_sync  # each run's load
    assert "| 1.50 (1.40–1.60) | 2.00 (1.90–2.10) |" in text  # the ceiling table
    assert "1.25× the scan ceiling (2.00 s)" in text


def test_report_timing_table_per_run() -> None:
    from bench.report import timing_table

    rep = {
        "runs": [
            {"run": 1, "span_s": 10.0, "output": {"timing": {"kafka_wait": 5.0, "decode": 1.0}}},
            {"run": 2, "span_s": 8.0, "output": {"timing": {"kafka_wait": 2.0, "decode": 0.5}}},
        ]
    }
    lines: list[str] = []
    timing_table(lines.append, "`cdcr run`", rep)
    text = "\n".join(lines)
    assert (
        "| `kafka_wait` | fetching from Kafka, or waiting for records | 5.00 (50%) | 2.00 (25%) |"
        in text
    )
    assert "| `decode` |" in text
    assert "`db_write`" not in text  # stages no run spent time in are left out
    lines.clear()
    timing_table(lines.append, "x", {"runs": [{"run": 1, "output": {}}]})
    assert lines == []  # no timing block (older cdcr): no table


def test_report_critical_path_names_the_busier_thread_and_what_the_aims_need() -> None:
    from bench.report import critical_path

    def run(n: int, span: float, write: float) -> dict[str, Any]:
        t = {"kafka_wait": 1.0, "decode": 2.0, "plan": 1.0, "writer_wait": 1.5}
        t |= {"db_connect": 0.5, "db_write": write, "redis_record": 0.5}
        return {"run": n, "span_s": span, "output": {"timing": t}}

    # runs 1 and 3 bracket run 2: the median span is run 2's (8.0 s), writer 7.0 s, loop 4.0 s
    rep = {
        "runs": [run(1, 9.0, 7.0), run(2, 8.0, 6.0), run(3, 7.0, 5.0)],
        "median_run": {"cpu_s": 4.0, "consumed": 200_000},
    }
    lines: list[str] = []
    critical_path(lines.append, rep, 2, 50_000, 30_000.0)
    text = "\n".join(lines)
    assert "run 2, the median span 8.00 s" in text
    assert "loop thread is busy 4.00 s (50% of the span" in text
    assert "writer thread is busy 7.00 s (88%), 6.00 s of it" in text
    assert "shorten the span by at most 3.00 s" in text
    # 200,000 records at 50k/s = 4.00 s: writer 7.00/4.00 = 1.8× faster, 2 cores × 4 s = 8 core-s
    assert "the 200,000 records in 4.00 s" in text
    assert "(1.8× and 1.0× faster)" in text
    assert "2 × 4.00 = 8.0 core-seconds" in text
    assert "uses 4.0 s (20 µs/record)" in text
    assert "3× the better sink (30,000 events/s)" in text
    lines.clear()
    critical_path(lines.append, {"runs": [{"run": 1, "output": {}}]}, 2, 50_000, None)
    assert lines == []  # no timing block: nothing to read
