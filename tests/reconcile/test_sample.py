"""``cdcr reconcile --sample``: the interval math (pure), and sampling against real PostgreSQL
with planted differences (a census gives the exact rate; subsets give intervals that cover it)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from cdc_reconciler.reconcile.checksum import TablePair, describe_pair
from cdc_reconciler.reconcile.sample import Z95, sample_table, wilson_interval

from .helpers import cli, create_pair, drop_pair, run

# --- the interval (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (5, 10, 0.2366, 0.7634),  # textbook values (e.g. statsmodels proportion_confint wilson)
        (0, 10, 0.0, 0.2775),  # upper bound z²/(n+z²) at k = 0
        (10, 10, 0.7225, 1.0),
        (1, 100, 0.0018, 0.0545),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got_lo, got_hi = wilson_interval(k, n)
    assert got_lo == pytest.approx(lo, abs=1e-4)
    assert got_hi == pytest.approx(hi, abs=1e-4)


def test_wilson_properties() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    for n in (1, 7, 50, 1000):
        for k in range(0, n + 1, max(1, n // 7)):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            mlo, mhi = wilson_interval(n - k, n)  # symmetric in k <-> n - k
            assert mlo == pytest.approx(1 - hi) and mhi == pytest.approx(1 - lo)
    # Wider for more confidence, narrower for more trials.
    assert wilson_interval(5, 50, z=2.576)[1] > wilson_interval(5, 50)[1]
    assert wilson_interval(50, 500)[1] < wilson_interval(5, 50)[1]
    # The closed form at k = 0.
    assert wilson_interval(0, 20)[1] == pytest.approx(Z95**2 / (20 + Z95**2))


def test_wilson_finite_population() -> None:
    assert wilson_interval(3, 10, population=10) == (0.3, 0.3)  # a census: the exact rate
    huge = wilson_interval(3, 10, population=10**12)
    assert huge == pytest.approx(wilson_interval(3, 10))
    half = wilson_interval(30, 100, population=200)
    plain = wilson_interval(30, 100)
    assert plain[0] < half[0] < 0.3 < half[1] < plain[1]
    # z² scaled by (N - n) / (N - 1) equals the plain interval at that z.
    assert half == pytest.approx(wilson_interval(30, 100, z=Z95 * math.sqrt(100 / 199)))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(3, 10, population=9)


# --- real PostgreSQL ----------------------------------------------------------------------

N_ROWS = 2000
MISSING = range(1, 2000, 100)  # 20 keys deleted in the target
MISMATCHED = [k for k in range(7, 2000, 33) if k not in MISSING]  # 60 corrupted in the target
EXTRA = range(5001, 5021)  # 20 keys only in the target
POPULATION = N_ROWS + len(EXTRA)
DIFFERENT = len(MISSING) + len(MISMATCHED) + len(EXTRA)


@dataclass
class Planted:
    table: str
    config: Path
    pair: TablePair


@pytest.fixture()
def planted(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Planted]:
    table = create_pair(
        source_engine,
        target_engine,
        unique_name("s"),
        "id int PRIMARY KEY, v text, amount numeric(12,2)",
    )
    fill = (
        f"INSERT INTO {table} (id, v, amount) SELECT g, 'v' || g, g * 0.5 "
        f"FROM generate_series(1, {N_ROWS}) g"
    )
    run(source_engine, fill)
    run(target_engine, fill)
    assert not set(MISSING) & set(MISMATCHED)
    run(target_engine, f"DELETE FROM {table} WHERE id = ANY(:k)", k=list(MISSING))
    run(target_engine, f"UPDATE {table} SET v = 'corrupt' WHERE id = ANY(:k)", k=list(MISMATCHED))
    run(
        target_engine,
        f"INSERT INTO {table} (id, v, amount) SELECT g, 'ghost', 1 "
        f"FROM unnest(CAST(:k AS int[])) g",
        k=list(EXTRA),
    )
    config = tmp_path / "cdcr.yaml"
    config.write_text(yaml.safe_dump({"tables": {table: {}}}))
    with source_engine.connect() as s, target_engine.connect() as t:
        pair = describe_pair(s, t, table)
    yield Planted(table, config, pair)
    drop_pair(source_engine, target_engine, table)
    with target_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM cdcr.reconcile_runs WHERE table_name = :t"), {"t": table})


def test_census_gives_the_exact_rate(
    source_engine: sa.Engine, target_engine: sa.Engine, planted: Planted
) -> None:
    r = sample_table(source_engine, target_engine, planted.pair, 10 * N_ROWS, seed=1)
    assert r.method == "census" and r.sampled == r.population == POPULATION
    assert r.rate == DIFFERENT / POPULATION
    assert r.interval == (DIFFERENT / POPULATION, DIFFERENT / POPULATION)
    assert r.counts == {"missing": len(MISSING), "extra": len(EXTRA), "mismatched": len(MISMATCHED)}
    assert {d.key[0] for d in r.differences} == {*MISSING, *MISMATCHED, *EXTRA}
    assert {d.columns for d in r.differences if d.kind.value == "mismatched"} == {("v",)}


def test_subsets_cover_the_truth(
    source_engine: sa.Engine, target_engine: sa.Engine, planted: Planted
) -> None:
    truth = DIFFERENT / POPULATION
    covered, rates, extras = 0, [], 0
    for seed in range(1, 21):
        r = sample_table(source_engine, target_engine, planted.pair, 300, seed=seed)
        assert r.method == "bernoulli" and r.sampled == 300
        assert r.population == pytest.approx(POPULATION, rel=0.1)
        lo, hi = r.interval
        covered += lo <= truth <= hi
        assert r.rate is not None
        rates.append(r.rate)
        extras += r.counts["extra"]
        # Every key reported really differs, with the right kind.
        for d in r.differences:
            k = d.key[0]
            assert (d.kind.value, k in MISSING, k in MISMATCHED, k in EXTRA) in {
                ("missing", True, False, False),
                ("mismatched", False, True, False),
                ("extra", False, False, True),
            }
    # A 95 % interval: 20 fixed seeds, deterministic draws; expect about 19 covered.
    assert covered >= 17, covered
    assert sum(rates) / len(rates) == pytest.approx(truth, rel=0.25)
    assert extras > 0  # rows only in the target are sampled too
    # Repeatable: the same seed draws the same keys.
    a = sample_table(source_engine, target_engine, planted.pair, 300, seed=7)
    b = sample_table(source_engine, target_engine, planted.pair, 300, seed=7)
    assert a.differences == b.differences


def test_cli_sample_writes_one_audit_row_unless_dry_run(
    target_engine: sa.Engine, planted: Planted
) -> None:
    def runs() -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
        with target_engine.connect() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT status, counts, checks FROM cdcr.reconcile_runs WHERE table_name = :t"
                ),
                {"t": planted.table},
            ).all()
        return [(r[0], r[1], r[2]) for r in found]

    code, out = cli(
        "reconcile",
        "--sample",
        "100000",
        "--table",
        planted.table,
        "--dry-run",
        "--json",
        "--config",
        str(planted.config),
    )
    assert code == 1, out  # differences found
    data = json.loads(out)
    assert data["dry_run"] is True and data["sample"] is True
    [t] = data["tables"]
    assert (t["method"], t["sampled"], t["mismatches"]) == ("census", POPULATION, DIFFERENT)
    assert t["interval"] == [DIFFERENT / POPULATION] * 2 and t["run_id"] is None
    assert runs() == []

    code, out = cli(
        "reconcile",
        "--sample",
        "200",
        "--seed",
        "3",
        "--table",
        planted.table,
        "--json",
        "--config",
        str(planted.config),
    )
    assert code == 1, out
    [t] = json.loads(out)["tables"]
    assert t["sampled"] == 200 and t["seed"] == 3 and t["run_id"]
    [(status, counts, checks)] = runs()
    assert status == "sampled"
    assert counts["sampled"] == 200 and counts["mismatches"] == t["mismatches"]
    assert counts["interval"] == t["interval"]
    assert checks[0]["check"] == "sample"
    assert len(checks[0]["differences"]) == t["mismatches"]

    code, out = cli(
        "reconcile",
        "--sample",
        "10",
        "--delete-extra",
        "--table",
        planted.table,
        "--config",
        str(planted.config),
    )
    assert code == 1 and "does not apply" in out


def test_in_sync_table_samples_clean(
    source_engine: sa.Engine, target_engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    table = create_pair(
        source_engine,
        target_engine,
        unique_name("s"),
        "id text PRIMARY KEY, doc json, t timestamptz",
    )
    try:
        fill = (
            f"INSERT INTO {table} SELECT 'k' || g, json_build_object('a', g, 'b', 'x'), "
            "timestamptz '2026-01-01Z' + g * interval '1 s' FROM generate_series(1, 500) g"
        )
        run(source_engine, fill)
        run(
            target_engine,
            fill.replace(
                "json_build_object('a', g, 'b', 'x')", "json_build_object('b', 'x', 'a', g)"
            ),
        )
        with source_engine.connect() as s, target_engine.connect() as t:
            pair = describe_pair(s, t, table)
        r = sample_table(source_engine, target_engine, pair, 50, seed=11)
        assert (r.sampled, r.mismatches, r.rate) == (50, 0, 0.0)
        lo, hi = r.interval
        assert lo == 0.0 and 0 < hi < 0.08
    finally:
        drop_pair(source_engine, target_engine, table)
