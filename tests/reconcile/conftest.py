"""Fixtures of the reconcile tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tests.helpers import forget_table

from .helpers import BASE_POS, Case, create_pair, drop_pair, run


@pytest.fixture()
def case(
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Case]:
    name = unique_name("r")
    table = create_pair(
        source_engine,
        target_engine,
        name,
        "id int PRIMARY KEY, v text, amount numeric, updated_at timestamptz",
    )
    # 30 minutes of changes, one row every 3 seconds: six 5-minute windows of 100 rows.
    fill = (
        f"INSERT INTO {table} (id, v, amount, updated_at) SELECT g, 'v' || g, g * 0.25, "
        "timestamptz '2026-01-01 00:00Z' + (g - 1) * interval '3 seconds' "
        "FROM generate_series(1, 600) g"
    )
    run(source_engine, fill)
    run(target_engine, fill)
    run(target_engine, f"UPDATE {table} SET _cdc_pos = {BASE_POS} + id")
    c = Case(table, f"g_{name}", f"p{name}", tmp_path / "cdcr.yaml")
    c.config.write_text(yaml.safe_dump({"tables": {table: {"change_time_column": "updated_at"}}}))
    monkeypatch.setenv("CDCR_KAFKA__GROUP_ID", c.group)
    monkeypatch.setenv("CDCR_KAFKA__TOPIC_PREFIX", c.prefix)
    monkeypatch.setenv("CDCR_RECONCILE__WINDOW_S", "300")
    monkeypatch.setenv("CDCR_RECONCILE__GRACE_S", "30")
    yield c
    drop_pair(source_engine, target_engine, table)
    forget_table(target_engine, table, c.group)
