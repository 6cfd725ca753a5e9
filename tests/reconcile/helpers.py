"""Table pairs for reconcile tests: the same table in source and target, the target with the
apply engine's ``_cdc_pos``/``_cdc_ts`` columns, each test with its own names."""

from __future__ import annotations

import sqlalchemy as sa

CDC_DDL = ", _cdc_pos numeric(40,0) NOT NULL DEFAULT 0, _cdc_ts timestamptz NOT NULL DEFAULT now()"


def create_pair(source: sa.Engine, target: sa.Engine, name: str, source_cols: str,
                target_cols: str | None = None, *, schema: str = "public") -> str:
    """Create ``schema.name`` on both sides (target_cols default: source_cols) and return the
    qualified name."""
    with source.begin() as c:
        c.execute(sa.text(f'CREATE TABLE "{schema}"."{name}" ({source_cols})'))
    with target.begin() as c:
        c.execute(sa.text(f'CREATE TABLE "{schema}"."{name}" ({target_cols or source_cols}'
                          f'{CDC_DDL})'))
    return f"{schema}.{name}"


def drop_pair(source: sa.Engine, target: sa.Engine, qualified: str) -> None:
    for e in (source, target):
        with e.begin() as c:
            c.execute(sa.text(f"DROP TABLE IF EXISTS {qualified}"))


def run(engine: sa.Engine, sql: str, **params: object) -> None:
    with engine.begin() as c:
        c.execute(sa.text(sql), params)
