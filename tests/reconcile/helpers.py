"""Table pairs for reconcile tests: the same table in source and target, the target with the
apply engine's ``_cdc_pos``/``_cdc_ts`` columns, each test with its own names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from cdc_reconciler.cli import app

CDC_DDL = ", _cdc_pos numeric(40,0) NOT NULL DEFAULT 0, _cdc_ts timestamptz NOT NULL DEFAULT now()"


def create_pair(
    source: sa.Engine,
    target: sa.Engine,
    name: str,
    source_cols: str,
    target_cols: str | None = None,
    *,
    schema: str = "public",
) -> str:
    """Create ``schema.name`` on both sides (target_cols default: source_cols) and return the
    qualified name."""
    with source.begin() as c:
        c.execute(sa.text(f'CREATE TABLE "{schema}"."{name}" ({source_cols})'))
    with target.begin() as c:
        c.execute(
            sa.text(f'CREATE TABLE "{schema}"."{name}" ({target_cols or source_cols}{CDC_DDL})')
        )
    return f"{schema}.{name}"


def drop_pair(source: sa.Engine, target: sa.Engine, qualified: str) -> None:
    for e in (source, target):
        with e.begin() as c:
            c.execute(sa.text(f"DROP TABLE IF EXISTS {qualified}"))


def run(engine: sa.Engine, sql: str, **params: object) -> None:
    with engine.begin() as c:
        c.execute(sa.text(sql), params)


# --- the windowed reconcile case (fixture ``case`` in conftest.py) -------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BASE_POS = 1000 << 64  # positions the "apply engine" wrote: lastCommitLsn 1000


@dataclass
class Case:
    table: str  # source "<schema>.<table>"
    group: str
    prefix: str
    config: Path

    @property
    def topic(self) -> str:
        return f"{self.prefix}.{self.table}"


def applied(target: sa.Engine, c: Case, last_event_time: datetime, next_offset: int = 10) -> None:
    with target.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO cdcr.applied_offsets (consumer_group, topic, partition, next_offset, "
                "last_event_time) VALUES (:g, :t, 0, :o, :l) ON CONFLICT (consumer_group, topic, "
                "partition) DO UPDATE SET next_offset = :o, last_event_time = :l"
            ),
            {"g": c.group, "t": c.topic, "o": next_offset, "l": last_event_time},
        )


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output + result.stderr
