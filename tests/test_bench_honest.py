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
